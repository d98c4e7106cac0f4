r"""The record a method returns: its typed :class:`Row` of metrics.json, the :class:`MethodResult` around it,
and the :class:`RunContext` a method reads."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exact import ExactPosterior
from ..task import Task
from ..training import FitResult

__all__ = ["EXACT", "MONTE_CARLO", "MethodResult", "Row", "RunContext"]

EXACT, MONTE_CARLO = "exact", "monte carlo"


def _column(help: str):
    return field(default=None, metadata={"help": help})


@dataclass(frozen=True)
class Row:
    """One method's line of ``metrics.json`` / ``metrics.csv``. ``None`` (JSON ``null``) means "not applicable or
    not computed"; an infinite value is a result, written ``"inf"`` / ``"-inf"`` in JSON and ``inf`` in CSV (e.g.
    KL(q‖π*) of a policy with mass outside a hard constraint's support, whose ELBO is ``-inf``).

    The shared figures (``elbo`` … ``kl_to_prior``) are exact sums over all sequences when ``scored`` is
    ``"exact"`` and Monte Carlo estimates when it is ``"monte carlo"``; the importance-sampling and MCMC
    diagnostics are always Monte Carlo.
    """

    method: str = field(metadata={"help": "the method's registered name"})
    elbo: float | None = _column("E_q[log pi0 + r/beta - log q] = J(q)/beta (the exact row: log Z)")
    log_z: float | None = _column("log Z: exact, or the importance-sampling estimate log Z-hat")
    kl_q_to_posterior: float | None = _column("KL(q || pi*) = log Z - ELBO, the divergence SVI and RL minimize")
    kl_posterior_to_q: float | None = _column("KL(pi* || q), the mass-covering divergence DPG minimizes")
    tv_to_posterior: float | None = _column("total variation to pi* (samplers: of their draws' histogram)")
    expected_reward: float | None = _column("E_q[r] (samplers: the posterior mean reward they estimate)")
    kl_to_prior: float | None = _column("KL(q || pi0), the cost in the RL objective J = E[r] - beta KL")
    reward_evaluations: int | None = _column("rewards of single sequences the method evaluated")
    wall_seconds: float | None = _column("wall time of the method's work (training, or sampling)")
    scored: str | None = _column("'exact' (enumeration) or 'monte carlo': how elbo .. kl_to_prior were obtained")
    log_z_se: float | None = _column("standard error of log Z-hat (delta method)")
    ess: float | None = _column("normalized importance ESS (sum w)^2 / (N sum w^2), in (0, 1]")
    khat: float | None = _column(
        "PSIS Pareto k-hat of the importance weights (< 0.5 good, > 0.7 unreliable); null when it is not finite "
        "(khat_reason says which way)"
    )
    khat_label: str | None = _column(
        "k-hat's reading: good, usable or unreliable; unreliable also when k-hat is not finite, the ESS is below "
        "0.05 or one weight holds over half the total; good also if max_weight_ratio <= 3"
    )
    khat_reason: str | None = _column("why khat_label reads as it does (the figure that decided it)")
    importance_failed: str | None = _column(
        "why this row's importance-sampling columns (log_z, log_z_se, ess, khat ...) are empty: the scoring failed "
        "(the exact figures, when the task is enumerable, are still there)"
    )
    max_weight_ratio: float | None = _column("largest importance weight over the mean weight")
    rhat: float | None = _column("MCMC R-hat of the reward across chains (> 1.01: not mixed)")
    ess_bulk: float | None = _column("MCMC bulk effective sample size of the reward")
    acceptance_rate: float | None = _column("MCMC mean acceptance (Gibbs: the rate at which a site changes)")
    infeasible_mass: float | None = _column("hard constraints: the mass q puts on sequences with reward -inf")
    kl_feasible_to_posterior: float | None = _column(
        "hard constraints: KL(q_F || pi*), q conditioned on the feasible set"
    )
    expected_reward_feasible: float | None = _column("hard constraints: E_q[r | feasible]")
    log_z_lower: float | None = _column(
        "smc: mean log Z-hat of the SMC runs, a lower bound on log Z in expectation (log_z: the runs' Z-hat pooled)"
    )
    log_z_lower_se: float | None = _column("smc: standard error of log_z_lower over the runs")
    log_z_upper: float | None = _column(
        "smc: mean log Z-hat of the conditional SMC runs (one particle an exact posterior draw), an upper bound on "
        "log Z in expectation; null when the task has no exact draws (too large to enumerate, no reward_max)"
    )
    log_z_upper_se: float | None = _column("smc: standard error of log_z_upper over the runs")
    resampling_steps: float | None = _column("smc: resampling steps per run, mean over the runs")
    kl_q_to_posterior_lower: float | None = _column(
        "with smc in the run: log_z_lower - ELBO-hat(q), moved 2 standard errors down (clipped at 0): a lower end on "
        "KL(q || pi*)"
    )
    kl_q_to_posterior_upper: float | None = _column(
        "with smc in the run: log_z_upper - ELBO-hat(q), moved 2 standard errors up: an upper end on KL(q || pi*) "
        "(null: no exact posterior draws, so no upper bound on log Z)"
    )
    kl_posterior_to_q_lower: float | None = _column(
        "with smc and exact draws: EUBO-hat(q) - log_z_upper, moved 2 standard errors down (clipped at 0)"
    )
    kl_posterior_to_q_upper: float | None = _column(
        "with smc and exact draws: EUBO-hat(q) - log_z_lower, moved 2 standard errors up"
    )
    settings: Mapping[str, Any] = field(
        default_factory=dict, metadata={"help": "the method's own options (kernel, proposal, estimator, recipe)"}
    )

    #: columns every row shows, in order; the others appear when some row has them
    SHARED = (
        "method",
        "elbo",
        "log_z",
        "kl_q_to_posterior",
        "kl_posterior_to_q",
        "tv_to_posterior",
        "expected_reward",
        "kl_to_prior",
        "reward_evaluations",
        "wall_seconds",
        "scored",
    )

    #: the columns of importance sampling with the method's policy (or the prior) as proposal
    IMPORTANCE = ("log_z_se", "ess", "khat", "khat_label", "khat_reason", "max_weight_ratio")

    def to_dict(self) -> dict:
        """The flat record written to metrics.json: the shared columns, the diagnostics that are set, then the
        method's settings."""
        out = {}
        # the importance columns come together: an empty one is written null (its reason beside it)
        importance = any(getattr(self, name) is not None for name in (*self.IMPORTANCE, "importance_failed"))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "settings":
                continue
            if f.name in self.SHARED or value is not None or (importance and f.name in self.IMPORTANCE):
                out[f.name] = value
        out.update(self.settings)
        return out

    @classmethod
    def columns(cls) -> dict[str, str]:
        """Every column's meaning, for the metrics.json header and the docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name != "settings"}


_ROW_COLUMNS = frozenset(f.name for f in dataclasses.fields(Row))


@dataclass(frozen=True)
class MethodResult:
    """What one method produced; nothing is written to disk.

    :ivar row: its line of the comparison.
    :ivar inference_data: its draws as :class:`arviz.InferenceData` (saved as ``<method>.nc``), or ``None``.
    :ivar fit: the training record of a trained method (policy, learning curve), or ``None``.
    :ivar draws: a trained policy's own draws, scored (:class:`~bayes_klrl.samples.ScoredSamples` with ``log_q``),
        from which its ELBO is estimated for a KL bracket, or ``None``.
    :ivar bounds: the ``smc`` method's :class:`~bayes_klrl.infer.bounds.LogZBounds`, which bracket every trained
        policy's distance to the posterior, or ``None``.
    """

    row: Row
    inference_data: Any = None
    fit: FitResult | None = None
    draws: Any = None
    bounds: Any = None


@dataclass(frozen=True)
class RunContext:
    """What a method may read: the task, the comparison's settings, the exact posterior (``None`` when the task
    is too large to enumerate), the policies trained earlier in the run, and where checkpoints go."""

    task: Task
    config: Any
    posterior: ExactPosterior | None = None
    exact_seconds: float | None = None
    fits: Mapping[str, FitResult] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    progress: bool = False


def _importance_columns(result) -> dict:
    return {
        "log_z": result.log_z,
        "log_z_se": result.log_z_se,
        "ess": result.ess,
        "khat": result.khat if math.isfinite(result.khat) else None,  # an infinite k-hat is explained in the reason
        "khat_label": result.khat_label,
        "khat_reason": result.khat_reason,
        "max_weight_ratio": result.max_weight_ratio,
    }
