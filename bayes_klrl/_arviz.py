r"""The one place that calls ArviZ, for both of its lines: 0.x (``InferenceData``) and 1.x (``DataTree``).

ArviZ 1.x split the package into arviz-base, arviz-stats and arviz-plots and changed the containers and several
functions. Everything the package needs goes through the functions below, which give the same answer on either line:

- :func:`psislw`: Pareto-smoothed importance sampling of log-weights and the Pareto :math:`\hat k` (0.x
  ``az.psislw(log_w)``; 1.x ``arviz_stats.base.array_stats.psislw(-log_w)``, whose argument is the negated
  log-weights, as its LOO callers pass the log-likelihood);
- :func:`summary`, :func:`rhat`, :func:`ess`: R-hat, bulk/tail ESS and MCSE (``az.summary``, ``az.rhat``, ``az.ess``;
  1.x's array functions for the last two);
- :func:`loo`: PSIS-LOO of a ``log_likelihood`` variable as one small record;
- :func:`from_groups`, :func:`group_names`: a container of named groups (each an :class:`xarray.Dataset`);
- :func:`to_netcdf`, :func:`from_netcdf`: the file. It is written group by group with xarray's ``h5netcdf`` engine,
  the layout both lines read (``az.from_netcdf``: ``InferenceData`` on 0.x, ``xarray.open_datatree`` on 1.x), so a
  file written under one line opens under the other.

ArviZ is imported inside each function: it loads matplotlib and pandas, which importing the package must not.

Example::

    >>> log_w = np.random.default_rng(0).normal(size=4000)
    >>> smoothed, khat = psislw(log_w)
    >>> khat < 0.5, round(float(np.exp(smoothed).sum()), 9)
    (True, 1.0)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

__all__ = [
    "LooResult",
    "arviz_major",
    "ess",
    "from_groups",
    "from_netcdf",
    "group_names",
    "loo",
    "psislw",
    "rhat",
    "summary",
    "to_netcdf",
]

#: the groups ArviZ 0.x's scheme defines; any other name (``proposal``) draws a warning there, which says nothing here
_SCHEME_WARNING = r".*group is not defined in the InferenceData scheme"


def arviz_major() -> int:
    """The installed ArviZ's major version (0 or 1), read from the package metadata without importing ArviZ."""
    return int(metadata.version("arviz").split(".")[0])


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    r"""Pareto-smoothed importance sampling of finite ``log_weights`` ``(N,)``: ``(smoothed, khat)``.

    ``smoothed`` float64 ``(N,)`` holds the log-weights with their largest values replaced by the fitted generalized
    Pareto quantiles, normalized so that :math:`\sum_i e^{\text{smoothed}_i} = 1`; ``khat`` is the fitted shape. When
    no tail can be fitted (fewer than five values in it, or all of them equal), ``khat`` is :math:`+\infty` and the
    weights are only normalized.
    """
    log_w = np.array(log_weights, dtype=np.float64)  # a copy: ArviZ 0.x works in place
    if log_w.ndim != 1:
        raise ValueError(f"log_weights must have shape (N,), got {log_w.shape}")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the GPD fit overflows on light tails
        if arviz_major() >= 1:
            from arviz_stats.base import array_stats

            try:
                smoothed, khat = array_stats.psislw(-log_w)  # 1.x smooths the negated argument
            except ValueError:  # "All tail values are the same", or a tail shorter than five draws
                return log_w - _logsumexp(log_w), math.inf
            if np.isnan(khat):
                # 1.x's tail is the top M draws, ties with the cutoff included, and a tail made mostly of ties
                # (weights taking a few values) makes its fit divide by zero. 0.x's tail is the draws strictly
                # above the cutoff: fit that one, unsmoothed (see _strict_tail_khat).
                return log_w - _logsumexp(log_w), _strict_tail_khat(log_w)
        else:
            import arviz as az

            smoothed, khat = az.psislw(log_w)
    return np.asarray(smoothed, dtype=np.float64), float(np.asarray(khat))


def _strict_tail_khat(log_w: np.ndarray) -> float:
    r""":math:`\hat k` of the weights strictly above the cutoff of the largest :math:`M = \lceil\min(N/5, 3\sqrt N)
    \rceil` (ArviZ 0.x's tail), fitted by the Zhang & Stephens (2009) empirical-Bayes estimate of the generalized
    Pareto shape with the weakly informative prior of Vehtari et al. (2024); :math:`+\infty` under five of them."""
    x = np.sort(log_w - log_w.max())
    n = x.size
    cutoff = x[-int(math.ceil(min(n / 5.0, 3 * math.sqrt(n)))) - 1]
    tail = np.exp(x[x > cutoff]) - math.exp(cutoff)  # exceedances, ascending
    if tail.size < 5:
        return math.inf
    m = 30 + int(math.sqrt(tail.size))
    b = 1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b /= 3 * tail[int(tail.size / 4 + 0.5) - 1]
    b += 1 / tail[-1]
    k = np.log1p(-b[:, None] * tail).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = tail.size * (np.log(-(b / k)) - k - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        weights = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    kept = weights >= 10 * np.finfo(float).eps  # negligible weights out, and NaN ones (k = 0 on a tail of one value)
    # none left (a tail of one repeated value): b = 0, so k = 0 before the prior pulls it towards 0.5, as in 0.x
    b_post = float((b[kept] * weights[kept]).sum() / weights[kept].sum()) if kept.any() else 0.0
    k_post = float(np.log1p(-b_post * tail).mean())
    return (tail.size * k_post + 10 * 0.5) / (tail.size + 10)


def _logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x))
    return top + math.log(float(np.exp(x - top).sum()))


def rhat(values: np.ndarray) -> float:
    """Rank-normalized split R-hat (Vehtari et al. 2021) of one scalar's draws ``(chain, draw)``."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if arviz_major() >= 1:
            from arviz_stats.base import array_stats

            return float(array_stats.rhat(values, chain_axis=0, draw_axis=1))
        import arviz as az

        return float(az.rhat(values))


def ess(values: np.ndarray, method: str = "bulk") -> float:
    """Effective sample size (``method`` ``bulk`` or ``tail``) of one scalar's draws ``(chain, draw)``."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if arviz_major() >= 1:
            from arviz_stats.base import array_stats

            prob = (0.05, 0.95) if method == "tail" else None  # 0.x's default; 1.x's array function needs it
            return float(array_stats.ess(values, chain_axis=0, draw_axis=1, method=method, prob=prob))
        import arviz as az

        return float(az.ess(values, method=method))


def summary(data: Any, var_names: list[str], kind: str = "diagnostics"):
    """``az.summary(data, var_names=…, kind=…, round_to="none")``: a :class:`pandas.DataFrame` indexed by variable
    (``kind="diagnostics"``: columns ``mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat`` on both lines)."""
    import arviz as az

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant variables: NaN diagnostics
        return az.summary(data, var_names=list(var_names), kind=kind, round_to="none")


@dataclass(frozen=True)
class LooResult:
    """PSIS-LOO of one ``log_likelihood`` variable.

    :ivar elpd: the expected log pointwise predictive density, summed over observations
    :ivar se: its standard error
    :ivar p_loo: the effective number of parameters
    :ivar max_pareto_k: the largest Pareto :math:`\\hat k` over observations (above 0.7: unreliable)
    """

    elpd: float
    se: float
    p_loo: float
    max_pareto_k: float


def loo(data: Any, var_name: str) -> LooResult:
    """PSIS-LOO (``az.loo(data, pointwise=True, var_name=…)``) of the ``log_likelihood`` variable ``var_name``."""
    import arviz as az

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the k̂ warning: the record carries k̂ itself
        warnings.simplefilter("ignore", RuntimeWarning)
        result = az.loo(data, pointwise=True, var_name=var_name)
    if arviz_major() >= 1:
        elpd, se, p_loo, pareto_k = result.elpd, result.se, result.p, np.asarray(result.pareto_k, dtype=np.float64)
        if np.isnan(pareto_k).any():  # a tail made of ties (see psislw): fit the draws strictly above the cutoff
            log_lik = np.asarray(data["log_likelihood"][var_name].values, dtype=np.float64)
            log_lik = log_lik.reshape(log_lik.shape[0] * log_lik.shape[1], -1)  # (samples, observations)
            fitted = np.array([_strict_tail_khat(-log_lik[:, i]) for i in range(log_lik.shape[1])])
            pareto_k = np.where(np.isnan(pareto_k.reshape(-1)), fitted, pareto_k.reshape(-1))
    else:
        elpd, se, p_loo, pareto_k = result["elpd_loo"], result["se"], result["p_loo"], result["pareto_k"]
    return LooResult(float(elpd), float(se), float(p_loo), float(np.max(pareto_k)))


def from_groups(groups: dict) -> Any:
    """A container of the named groups ``{name: xarray.Dataset}``: ``InferenceData`` (0.x) or ``DataTree`` (1.x)."""
    if arviz_major() >= 1:
        import xarray as xr

        return xr.DataTree.from_dict(dict(groups))
    import arviz as az

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SCHEME_WARNING, category=UserWarning)
        return az.InferenceData(**groups)


def group_names(data: Any) -> list[str]:
    """The names of the container's groups (``posterior``, ``sample_stats`` …), on either line."""
    if hasattr(data, "children"):  # DataTree
        return list(data.children)
    return list(data.groups())


def _group(data: Any, name: str):
    node = data[name]
    return node.to_dataset() if hasattr(node, "to_dataset") and hasattr(node, "children") else node


def to_netcdf(data: Any, path: str | os.PathLike) -> None:
    """Write every group of ``data`` to ``path`` (``h5netcdf``, one NetCDF group each): a file both lines open."""
    for i, name in enumerate(group_names(data)):
        _group(data, name).to_netcdf(path, mode="w" if i == 0 else "a", group=name, engine="h5netcdf")


def from_netcdf(path: str | os.PathLike) -> Any:
    """``az.from_netcdf(path)``, read into memory: ``InferenceData`` (0.x) or ``DataTree`` (1.x)."""
    import arviz as az

    data = az.from_netcdf(path)
    if hasattr(data, "children"):  # DataTree: load, then let go of the file
        loaded = data.load()
        data.close()
        return loaded
    return data
