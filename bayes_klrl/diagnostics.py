r"""The ArviZ boundary: every method's draws as one ArviZ container, a diagnostics table, NetCDF.

The container is ArviZ's own: an ``arviz.InferenceData`` under ArviZ 0.x, an ``xarray.DataTree`` under ArviZ 1.x
(both built, read and written through :mod:`bayes_klrl._arviz`, so the files are the same under either line).

Each method's draws become an InferenceData of the same shape:

- ``posterior``: ``tokens`` (``chain, draw, position``, integers in ``0..V-1``) and the scalar summaries
  ``reward`` :math:`r(x)`, ``log_prior`` :math:`\log\pi_0(x)`, ``reward_over_beta`` :math:`r(x)/\beta` (the
  log-likelihood of the program; not named ``log_likelihood``, which ArviZ reserves for its own group) and,
  where a proposal or policy drew them, ``log_q`` :math:`\log q(x)`;
- ``sample_stats`` (MCMC): per draw ``accept_prob`` and ``moved``;
- importance sampling and policies: ``posterior`` holds the draws resampled in proportion to their weights
  (equally weighted, as ArviZ reads that group), ``log_likelihood`` their :math:`r/\beta`, and the group
  ``proposal`` the weighted draws as :math:`q` made them with ``log_weight`` and ``psis_log_weight``;
- ``attrs``: ``method``, ``task``, ``beta``, ``vocab_size``, ``length``, and ``weighted`` (``0`` for a group
  ArviZ may read as equally weighted draws; ``1`` only on the ``proposal`` group).

Only MCMC draws are correlated draws of :math:`\pi^*` in several chains; :func:`diagnostics_table` gives their
R-hat, bulk and tail ESS and MCSE. :func:`save_netcdf` writes atomically, so a reader never sees half a file.

Example::

    >>> result = run_mcmc(task, "gibbs", num_chains=4, num_samples=500)
    >>> idata = mcmc_inference_data(task, result)
    >>> bool(diagnostics_table(idata).loc["reward", "r_hat"] < 1.01)
    True
    >>> save_netcdf(idata, "runs/markov/mcmc.nc")
    PosixPath('runs/markov/mcmc.nc')
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import _arviz
from .infer.importance import ImportanceResult
from .infer.mcmc import MCMCResult
from .storage import atomic_write
from .task import Task

if TYPE_CHECKING:  # arviz loads matplotlib and pandas: imported only where InferenceData is built or read
    import arviz as az

__all__ = [
    "RHAT_MAX",
    "SCALAR_SUMMARIES",
    "diagnostics_table",
    "importance_inference_data",
    "load_netcdf",
    "mcmc_inference_data",
    "save_netcdf",
    "smc_inference_data",
    "reading_notes",
    "scalar_diagnostics",
]

#: R-hat above this says the chains have not mixed (the usual threshold, Vehtari et al. 2021)
RHAT_MAX = 1.01

#: the scalar variables of the posterior group whose diagnostics :func:`diagnostics_table` reports
SCALAR_SUMMARIES = ("reward", "log_prior", "reward_over_beta", "log_q")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _attrs(task: Task, method: str, weighted: bool, **extra) -> dict:
    attrs = {
        "method": method,
        "task": task.name,
        "beta": float(task.beta),
        "vocab_size": int(task.vocab_size),
        "length": int(task.length),
        "weighted": int(weighted),
    }
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs


def _dataset(variables: dict, length: int, attrs: dict):
    """One group: each array ``(chain, draw)`` or ``(chain, draw, position)`` named by its key, with integer
    coordinates, as ArviZ lays groups out."""
    import xarray as xr

    data_vars = {name: (("chain", "draw", "position")[: a.ndim], a) for name, a in variables.items()}
    first = next(iter(variables.values()))
    coords = {"chain": np.arange(first.shape[0]), "draw": np.arange(first.shape[1])}
    if any(a.ndim == 3 for a in variables.values()):
        coords["position"] = np.arange(length)
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))


def _from_dict(
    posterior: dict, sample_stats: dict | None, attrs: dict, log_likelihood: str = "reward_over_beta", **extra_groups: dict
) -> az.InferenceData:
    length = attrs["length"]
    groups = {"posterior": _dataset(posterior, length, attrs)}
    if sample_stats:
        groups["sample_stats"] = _dataset(sample_stats, length, attrs)
    # log p(y=1 | x) = r(x)/β, the program's log-likelihood (az.loo reads this group)
    groups["log_likelihood"] = _dataset({log_likelihood: posterior["reward_over_beta"]}, length, attrs)
    for name, variables in extra_groups.items():
        groups[name] = _dataset(variables, length, attrs)
    return _arviz.from_groups(groups)


def mcmc_inference_data(task: Task, result: MCMCResult) -> az.InferenceData:
    """MCMC draws ``(chains, draws, T)`` of :func:`~bayes_klrl.infer.mcmc.run_mcmc` as InferenceData.

    ``sample_stats`` holds ``accept_prob`` (1 for Gibbs) and ``moved`` (fraction of the step's updates that
    changed the sequence).
    """
    if result.draws.shape[-1] != task.length:
        raise ValueError(f"the draws have length {result.draws.shape[-1]}; the task has length {task.length}")
    posterior = {
        "tokens": _np(result.draws).astype(np.int64),
        "reward": _np(result.rewards),
        "log_prior": _np(result.log_prior),
        "reward_over_beta": _np(result.log_likelihood),
    }
    if result.log_q is not None:
        posterior["log_q"] = _np(result.log_q)
    stats = {"accept_prob": _np(result.accept_prob), "moved": _np(result.moved)}
    return _from_dict(posterior, stats, _attrs(task, "mcmc", False, kernel=result.kernel, num_warmup=result.num_warmup))


def importance_inference_data(task: Task, result: ImportanceResult, method: str = "is") -> az.InferenceData:
    r"""Importance sampling as InferenceData whose ``posterior`` group ArviZ may read as equally weighted draws.

    - ``posterior`` (one chain): the draws *resampled* in proportion to their weights
      :math:`w = \pi_0 e^{r/\beta}/q` (sampling-importance-resampling), so ``az.summary`` estimates posterior
      means; repeated draws make ArviZ's ESS optimistic, so read the importance ESS in ``attrs["ess"]``;
    - ``log_likelihood``: ``reward_over_beta`` :math:`= r/\beta` of those draws (the log-likelihood of the program);
    - ``proposal`` (a group of this package): the draws as the proposal :math:`q` made them, with
      ``log_weight`` and the PSIS-smoothed, normalized ``psis_log_weight``: weighted draws, never in ``posterior``.

    Used for the ``is`` method (proposal: the prior) and for a trained policy (``method`` its name), whose
    draws and weights give its Pareto :math:`\hat k`.
    """
    if result.sequences.shape[-1] != task.length:
        raise ValueError(f"the draws have length {result.sequences.shape[-1]}; the task has length {task.length}")
    samples, idx = result.samples, result.resample_index.cpu()
    drawn = samples[idx]  # (N,) equally weighted draws of the posterior estimate
    posterior = {
        "tokens": _np(drawn.tokens)[None].astype(np.int64),
        "reward": _np(drawn.reward)[None],
        "log_prior": _np(drawn.log_prior)[None],
        "reward_over_beta": _np(drawn.log_likelihood)[None],
        "log_q": _np(drawn.log_q)[None],
    }
    attrs = _attrs(
        task,
        method,
        False,
        khat=result.khat,
        max_weight_ratio=result.max_weight_ratio,
        log_z=result.log_z,
        importance_ess=result.ess,
    )
    proposal = {
        "tokens": _np(samples.tokens)[None].astype(np.int64),
        "reward": _np(samples.reward)[None],
        "log_prior": _np(samples.log_prior)[None],
        "reward_over_beta": _np(samples.log_likelihood)[None],
        "log_q": _np(samples.log_q)[None],
        "log_weight": _np(result.log_weights)[None],
        "psis_log_weight": _np(result.smoothed_log_weights)[None],
    }
    idata = _from_dict(posterior, None, attrs, proposal=proposal)
    idata["proposal"].attrs["weighted"] = 1
    return idata


def smc_inference_data(task: Task, result, *, seed: int = 0) -> tuple[az.InferenceData, torch.Tensor]:
    r"""SMC particles as InferenceData, one chain per run, and the resampled tokens ``(K N, T)``.

    - ``posterior``: each run's final particles *resampled* (multinomially, with ``seed``) in proportion to
      their weights, so ArviZ may read them as equally weighted draws of :math:`\pi^*`;
    - ``log_likelihood``: ``reward_over_beta`` :math:`= r/\beta` of those draws;
    - ``particles`` (a group of this package, ``weighted = 1``): the final particles as SMC left them, with
      their ``log_weight``; ``attrs`` hold each run's ``log_z``.
    """
    k, n, length = result.tokens.shape
    generator = torch.Generator().manual_seed(seed)
    finite = torch.isfinite(torch.logsumexp(result.log_weights, -1))  # (K,) runs with some mass
    probs = torch.where(finite[:, None], torch.softmax(result.log_weights, -1), torch.full((k, n), 1.0 / n))
    index = torch.multinomial(probs.double(), n, replacement=True, generator=generator)  # (K, N)
    tokens = result.tokens.gather(1, index[..., None].expand(k, n, length))  # (K, N, T)
    reward = result.reward.gather(1, index)
    log_prior = result.log_prior.gather(1, index)
    posterior = {
        "tokens": _np(tokens).astype(np.int64),
        "reward": _np(reward),
        "log_prior": _np(log_prior),
        "reward_over_beta": _np(reward / task.beta),
    }
    attrs = _attrs(task, "smc", False, log_z_runs=_np(result.log_z).tolist(), conditional=int(result.conditional))
    particles = {
        "tokens": _np(result.tokens).astype(np.int64),
        "reward": _np(result.reward),
        "log_prior": _np(result.log_prior),
        "log_weight": _np(result.log_weights),
    }
    idata = _from_dict(posterior, None, attrs, log_likelihood="reward_over_beta", particles=particles)
    idata["particles"].attrs["weighted"] = 1
    return idata, tokens.reshape(k * n, length)


def diagnostics_table(idata: az.InferenceData, var_names=SCALAR_SUMMARIES):
    """R-hat, bulk and tail ESS and MCSE of the scalar summaries: a :class:`pandas.DataFrame` indexed by
    variable, columns ``mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat`` (``az.summary(kind="diagnostics")``).

    Constant variables (a reward that never changes) give NaN diagnostics rather than an error.
    """
    present = [v for v in var_names if v in idata.posterior.data_vars]
    if not present:
        raise ValueError(f"none of {', '.join(var_names)} is in the posterior group")
    return _arviz.summary(idata, present, kind="diagnostics")


def scalar_diagnostics(idata: az.InferenceData, var: str = "reward") -> dict:
    """``{"rhat", "ess_bulk", "ess_tail", "mcse_mean"}`` of one scalar variable, as plain floats (NaN → None)."""
    row = diagnostics_table(idata, (var,)).loc[var]

    def value(key: str):
        x = float(row[key])
        return x if np.isfinite(x) else None

    return {
        "rhat": value("r_hat"),
        "ess_bulk": value("ess_bulk"),
        "ess_tail": value("ess_tail"),
        "mcse_mean": value("mcse_mean"),
    }


def save_netcdf(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to ``path`` atomically (a temporary file in the same folder, then a rename), in the layout
    that ``az.from_netcdf`` of ArviZ 0.x and 1.x both read."""
    return atomic_write(path, lambda tmp: _arviz.to_netcdf(idata, tmp))


def load_netcdf(path: str | os.PathLike) -> az.InferenceData:
    """Read a file written by :func:`save_netcdf` (``az.from_netcdf``), with a clear error if absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at {path}")
    return _arviz.from_netcdf(path)


def reading_notes(rows: list[dict]) -> list[str]:
    """One line of advice per comparison row whose diagnostics say its figures should not be trusted yet:
    MCMC chains with R-hat above :data:`RHAT_MAX`, or a policy whose k-hat reads ``unreliable`` as a proposal
    for the posterior.

    Example::

        >>> reading_notes([{"method": "mcmc", "rhat": 1.2, "kernel": "gibbs"}])[0][:29]
        'note: mcmc R-hat 1.200 > 1.01'
    """
    notes = []
    for row in rows:
        rhat = row.get("rhat")
        if rhat is not None and rhat > RHAT_MAX:
            other = "imh" if row.get("kernel") == "gibbs" else "gibbs"
            notes.append(
                f"note: {row['method']} R-hat {rhat:.3f} > {RHAT_MAX}: the chains disagree, so its figures are not "
                f"reliable yet; run longer (--draws, --warmup) or try --mcmc-kernel {other}"
            )
        mass = row.get("infeasible_mass")
        if mass is not None and row.get("kl_q_to_posterior") == math.inf:
            notes.append(
                f"note: {row['method']} puts {mass:.3g} of its mass on sequences the hard constraint forbids, so its "
                "KL(q||pi*) is inf and its ELBO -inf (as for any policy with full support); read "
                f"kl_feasible_to_posterior = {row['kl_feasible_to_posterior']:.4g}, kl_posterior_to_q and tv_to_posterior"
            )
        if row["method"] == "smc" and row.get("log_z_upper") is None and "log_z_lower" in row:
            reason = str(row.get("exact_draws", "")).removeprefix("none: ")
            notes.append(f"note: smc gives the lower bound on log Z only: {reason}")
        if row.get("khat_label") == "unreliable" and row["method"] != "is":
            notes.append(
                f"note: {row['method']} k-hat unreliable ({row.get('khat_reason') or 'k-hat above 0.7'}): the "
                "policy is not yet a reliable importance proposal for the posterior (train longer, or read its KL "
                "where it is exact)"
            )
    return notes
