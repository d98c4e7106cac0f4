r"""The method registry: every inference method ``compare`` can run, one entry each, and the row it produces.

A method turns a task into a :class:`MethodResult` (a typed :class:`Row`, its draws as ArviZ InferenceData,
the training record) and writes nothing; :func:`bayes_klrl.compare.save_comparison` writes every file.
Methods come in three kinds:

- ``exact``: the posterior by enumeration (the reference row);
- ``trained``: a :class:`~bayes_klrl.training.Trainer` factory (SVI, the RL trainers and recipes, DPG); the
  policy it trains is scored against the posterior by :func:`score_policy`;
- ``sampler``: importance sampling and MCMC, drawing (weighted or correlated) samples of :math:`\pi^*`.

Adding a trainer: write it (e.g. ``bayes_klrl/rl/mine.py``) and :func:`register` a :class:`TrainedMethod` at
the end of this file; its name becomes a ``compare --methods`` choice and a figure label. Adding a sampler:
write it under ``bayes_klrl/infer/``, a :class:`Method` subclass here with a ``run``, and (if it draws) its
InferenceData builder in :mod:`bayes_klrl.diagnostics`.

Example::

    >>> trainer = make_trainer("rl", task, task.make_policy(), num_sequences=256, lr=0.02)
    >>> METHODS["rl"].label
    'REINFORCE (RLOO)'
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exact import ExactPosterior, policy_metrics
from .lm import AutoregressiveLM
from .task import Task
from .training import FitResult, fit

__all__ = [
    "METHODS",
    "Method",
    "MethodResult",
    "RunContext",
    "Row",
    "TrainedMethod",
    "make_trainer",
    "register",
    "score_policy",
    "trained_methods",
]

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
        "with smc in the run: log_z_lower - ELBO-hat(q), a lower end on KL(q || pi*) (Monte Carlo; clipped at 0)"
    )
    kl_q_to_posterior_upper: float | None = _column(
        "with smc in the run: log_z_upper - ELBO-hat(q), an upper end on KL(q || pi*) (null: no upper bound)"
    )
    kl_posterior_to_q_lower: float | None = _column(
        "with smc and exact draws: EUBO-hat(q) - log_z_upper, a lower end on KL(pi* || q) (clipped at 0)"
    )
    kl_posterior_to_q_upper: float | None = _column(
        "with smc and exact draws: EUBO-hat(q) - log_z_lower, an upper end on KL(pi* || q)"
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


class Method(ABC):
    """A registered method: a name, a label for tables and legends, one line of help, and :meth:`run`."""

    name: str
    label: str
    description: str
    kind: str = "sampler"
    #: the ``compare`` settings this method reads (recorded in its row; a trained method's checkpoint refuses others)
    options: tuple[str, ...] = ()

    @abstractmethod
    def run(self, context: RunContext) -> MethodResult:
        """Run on ``context.task``; return the row and draws, write nothing (checkpoints aside)."""

    def check(self, config: Any) -> None:  # noqa: B027 (a no-op hook, as in Pyro's MCMCKernel)
        """Refuse settings this method cannot run with (hook; called for every method before any runs)."""

    def check_task(self, task: Task, config: Any, enumerable: bool) -> None:  # noqa: B027 (a no-op hook)
        """Refuse a task this method cannot run on with these settings (hook; called for every method with the
        task loaded, before any runs)."""


#: the optimizer settings every trained method takes (:class:`~bayes_klrl.training.OptimizerSettings`)
OPTIMIZER_OPTIONS = ("optimizer", "weight_decay", "lr_schedule", "warmup_steps", "max_grad_norm")

#: every registered method, in registration order (the order of the command line's choices)
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (names are unique) and return it."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def trained_methods() -> tuple[str, ...]:
    """Names of the methods that train a policy."""
    return tuple(name for name, m in METHODS.items() if m.kind == "trained")


def make_trainer(method: str, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float, **options):
    """The trainer of ``method`` (a name from :func:`trained_methods`) on ``policy``.

    :param options: the method's own settings (``estimator`` for SVI, ``kl_estimator`` for PPO, …;
        :attr:`TrainedMethod.options` lists them) and the optimizer's (:data:`OPTIMIZER_OPTIONS`).
    """
    spec = METHODS.get(method)
    if spec is None or spec.kind != "trained":
        raise ValueError(f"unknown trained method {method!r}; choose from {', '.join(trained_methods())}")
    return spec.make_trainer(task, policy, num_sequences, lr=lr, **options)


# ---------------------------------------------------------------------------------------------------------------
# scoring a policy


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


def score_policy(
    task: Task,
    policy: AutoregressiveLM,
    posterior: ExactPosterior | None,
    *,
    num_samples: int,
    chunk_size: int,
    seed: int,
) -> tuple[dict, Any]:
    r"""A policy's row columns and its draws: exact divergences when ``posterior`` is given, and always
    importance sampling with the policy as the proposal for :math:`\pi^*` (:math:`\hat Z`, ESS, :math:`\hat k`).
    Without a posterior, ELBO, :math:`\mathbb{E}_q[r]` and :math:`\mathrm{KL}(q\|\pi_0) = \mathbb{E}_q[\log q - \log\pi_0]`
    are Monte Carlo averages over the same draws.

    :returns: ``(columns, importance_result)``; the result is ``None`` (and ``importance_failed`` says why)
        when every draw has weight 0.
    """
    from .infer.importance import NoSupportError, importance_sample

    try:
        imp = importance_sample(task, policy, num_samples=num_samples, chunk_size=chunk_size, seed=seed)
    except NoSupportError as exc:  # the exact figures still stand; the row says why its Monte Carlo ones are empty
        imp, columns = None, {"importance_failed": str(exc)}
    else:
        columns = _importance_columns(imp)
    if posterior is not None:
        exact = dataclasses.asdict(policy_metrics(task, policy, posterior))  # every figure the Row has a column for
        columns.update(scored=EXACT, **{k: v for k, v in exact.items() if k in _ROW_COLUMNS})
    elif imp is None:
        columns.update(scored=MONTE_CARLO)
    else:  # E_q[log w] = ELBO(q); E_q[r]; KL(q‖π0)
        draws = imp.samples
        columns.update(
            scored=MONTE_CARLO,
            elbo=imp.elbo,
            expected_reward=float(draws.reward.mean()),
            kl_to_prior=float((draws.log_q - draws.log_prior).mean()),  # KL(q‖π0) = E_q[log q − log π0]
        )
    return columns, imp


# ---------------------------------------------------------------------------------------------------------------
# trained methods


@dataclass(frozen=True)
class TrainedMethod(Method):
    """A method that trains a policy with a :class:`~bayes_klrl.training.Trainer`.

    :ivar name: the name used on the command line and in metrics.json.
    :ivar label: a short human name for tables and figure legends.
    :ivar description: one line for ``--help``.
    :ivar factory: ``factory(task, policy, num_sequences, *, lr, **options) -> Trainer``.
    :ivar options: names of the ``compare`` settings passed to ``factory`` as keywords (recorded in the
        method's row and checkpoint).
    :ivar fixed: keyword arguments always passed (what makes a preset, e.g. a recipe's options), recorded too.
    :ivar validate: ``validate(num_sequences, **settings)`` raising ValueError on options the trainer refuses.
    """

    name: str
    label: str
    description: str
    factory: Callable[..., Any]
    options: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "trained"

    validate: Callable[..., None] | None = None

    def make_trainer(self, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float, **options):
        unknown = sorted(set(options) - set(self.options) - set(OPTIMIZER_OPTIONS))
        if unknown:
            raise ValueError(f"method {self.name!r} takes no option(s) {', '.join(unknown)}")
        trainer = self.factory(task, policy, num_sequences, lr=lr, **{**self.fixed, **options})
        trainer.method = self.name  # checkpoints and progress bars carry the registered name
        return trainer

    def settings(self, config) -> dict:
        """The method's effective options: its fixed (preset) ones, overridden by those ``config`` sets (not None),
        and the optimizer's (:data:`OPTIMIZER_OPTIONS`, the same for every trained method)."""
        given = {k: getattr(config, k) for k in self.options if getattr(config, k, None) is not None}
        optimizer = {k: getattr(config, k) for k in OPTIMIZER_OPTIONS if hasattr(config, k)}
        return {**self.fixed, **given, **optimizer}

    def check(self, config) -> None:
        """Refuse options this method cannot run with, before any method runs (``validate`` hook)."""
        if self.validate is not None:
            own = {k: v for k, v in self.settings(config).items() if k not in OPTIMIZER_OPTIONS}
            self.validate(config.num_sequences, **own)

    def run(self, context: RunContext) -> MethodResult:
        task, config = context.task, context.config
        settings = self.settings(config)
        own = {k: v for k, v in settings.items() if k in self.options or k in OPTIMIZER_OPTIONS}  # (+ fixed ones)
        trainer = self.make_trainer(task, task.make_policy(config.policy), config.num_sequences, lr=config.lr, **own)
        posterior = context.posterior

        def evaluate(policy: AutoregressiveLM) -> dict:  # exact learning curves
            m = policy_metrics(task, policy, posterior)
            return {
                "exact_elbo": m.elbo,
                "kl_q_to_posterior": m.kl_q_to_posterior,
                "expected_reward": m.expected_reward,
            }

        checkpoint_dir = context.checkpoint_dir / self.name if context.checkpoint_dir is not None else None
        result = fit(
            trainer,
            steps=config.steps,
            seed=config.seed,
            log_every=config.log_every,
            evaluate=evaluate if posterior is not None else None,
            progress=context.progress,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=config.checkpoint_every,
            resume=config.resume and checkpoint_dir is not None and (checkpoint_dir / "checkpoint.pt").exists(),
            settings={
                "task": task.name,
                "beta": task.beta,
                "length": task.length,
                "vocab_size": task.vocab_size,
                "task_fingerprint": task.fingerprint(),
                "num_sequences": config.num_sequences,
                "lr": config.lr,
                "seed": config.seed,
                "policy": config.policy,
                **settings,
            },
        )
        columns, imp = score_policy(
            task,
            result.policy,
            posterior,
            num_samples=config.eval_samples,
            chunk_size=config.num_sequences,
            seed=config.seed,
        )
        from .diagnostics import importance_inference_data

        row = Row(
            method=self.name,
            reward_evaluations=result.reward_evaluations,
            wall_seconds=result.wall_seconds,
            settings=settings,
            **columns,
        )
        idata = importance_inference_data(task, imp, self.name) if imp is not None else None
        draws = imp.samples if imp is not None else None
        return MethodResult(row=row, inference_data=idata, fit=result, draws=draws)


# ---------------------------------------------------------------------------------------------------------------
# the exact posterior and the samplers


class ExactMethod(Method):
    name, label, kind = "exact", "exact π* (enumeration)", "exact"
    description = "the posterior by enumerating all V^T sequences (the reference row)"

    def run(self, context: RunContext) -> MethodResult:
        posterior, task = context.posterior, context.task
        if posterior is None:
            raise ValueError(
                f"method 'exact' needs an enumerable task; '{task.name}' has {task.num_sequences:,} sequences"
            )
        row = Row(
            method=self.name,
            scored=EXACT,
            elbo=posterior.log_z,
            log_z=posterior.log_z,
            kl_q_to_posterior=0.0,
            kl_posterior_to_q=0.0,
            tv_to_posterior=0.0,
            expected_reward=posterior.expected_reward,
            kl_to_prior=posterior.kl_to_prior,
            reward_evaluations=task.num_sequences,
            wall_seconds=context.exact_seconds,
        )
        return MethodResult(row=row)


class ImportanceMethod(Method):
    name, label = "is", "importance sampling, prior proposal"
    description = "self-normalized importance sampling, the prior as proposal, on a trained method's reward budget"

    def run(self, context: RunContext) -> MethodResult:
        from .diagnostics import importance_inference_data
        from .infer.importance import NoSupportError, importance_sample
        from .infer.mcmc import total_variation

        task, config, posterior = context.task, context.config, context.posterior
        num_samples = max(config.steps * config.num_sequences, config.eval_samples)
        t0 = time.perf_counter()
        try:
            imp = importance_sample(
                task, None, num_samples=num_samples, chunk_size=max(config.num_sequences, 4096), seed=config.seed
            )
        except NoSupportError as exc:  # the other rows are still written; this one says why it is empty
            row = Row(
                method=self.name,
                scored=MONTE_CARLO,
                reward_evaluations=num_samples,
                wall_seconds=time.perf_counter() - t0,
                settings={"proposal": "prior"},
                importance_failed=str(exc),
            )
            return MethodResult(row=row)
        wall = time.perf_counter() - t0
        row = Row(
            method=self.name,
            scored=MONTE_CARLO,
            expected_reward=imp.expected_reward,
            tv_to_posterior=(
                total_variation(imp.resampled, posterior.log_probs, task.vocab_size) if posterior is not None else None
            ),
            reward_evaluations=num_samples,
            wall_seconds=wall,
            settings={"proposal": "prior"},
            **_importance_columns(imp),
        )
        return MethodResult(row=row, inference_data=importance_inference_data(task, imp, self.name))


#: the largest vocabulary for which ``mcmc_kernel="auto"`` picks Gibbs (V reward evaluations per site)
GIBBS_MAX_VOCAB = 256


class MCMCMethod(Method):
    name, label = "mcmc", "MCMC"
    description = "vectorized MCMC chains (single-site Gibbs or independence MH) run by pyro.infer.MCMC"
    options = ("mcmc_kernel", "mcmc_proposal", "chains", "draws", "warmup")

    def check(self, config) -> None:
        proposal = config.mcmc_proposal
        if proposal == "prior":
            return
        if config.mcmc_kernel == "gibbs":
            raise ValueError("the Gibbs kernel uses exact full conditionals; --mcmc-proposal needs imh")
        order = list(config.methods)
        if proposal not in order or order.index(proposal) > order.index(self.name):
            raise ValueError(f"--mcmc-proposal {proposal} needs method {proposal!r} before mcmc in --methods")

    def run(self, context: RunContext) -> MethodResult:
        from .diagnostics import mcmc_inference_data, scalar_diagnostics
        from .infer.mcmc import run_mcmc, total_variation

        task, config, posterior = context.task, context.config, context.posterior
        kernel = config.mcmc_kernel
        proposal = None if config.mcmc_proposal == "prior" else context.fits[config.mcmc_proposal].policy
        if kernel == "auto":
            kernel = "gibbs" if task.vocab_size <= GIBBS_MAX_VOCAB and proposal is None else "imh"
        t0 = time.perf_counter()
        result = run_mcmc(
            task,
            kernel,
            num_chains=config.chains,
            num_samples=config.draws,
            warmup=config.warmup,
            proposal=proposal,
            init="uniform" if proposal is None else "prior",
            seed=config.seed,
        )
        wall = time.perf_counter() - t0
        idata = mcmc_inference_data(task, result)
        diag = scalar_diagnostics(idata, "reward")
        steps = config.chains * (config.draws + config.warmup)
        row = Row(
            method=self.name,
            scored=MONTE_CARLO,
            expected_reward=result.expected_reward,
            tv_to_posterior=(
                total_variation(result.draws, posterior.log_probs, task.vocab_size) if posterior is not None else None
            ),
            rhat=diag["rhat"],
            ess_bulk=diag["ess_bulk"],
            acceptance_rate=float(result.acceptance_rate.mean()),
            reward_evaluations=steps * task.length * task.vocab_size if kernel == "gibbs" else steps,
            wall_seconds=wall,
            settings={"kernel": kernel, "proposal": config.mcmc_proposal if kernel == "imh" else None},
        )
        return MethodResult(row=row, inference_data=idata)


class SMCMethod(Method):
    name, label = "smc", "SMC bounds on log Z"
    description = (
        "(twisted) sequential Monte Carlo: log Z bracketed by SMC (lower) and conditional SMC on exact posterior "
        "draws (upper); brackets every trained policy's KL to pi*"
    )
    options = (
        "particles", "smc_runs", "twist", "resample_threshold", "twist_steps", "twist_lr", "twist_policy",
        "max_rejection_draws",
    )  # fmt: skip

    def check(self, config) -> None:
        if config.twist != "policy":
            return
        order = list(config.methods)
        source = config.twist_policy
        if source not in order or order.index(source) > order.index(self.name):
            raise ValueError(f"--twist policy reads the policy of --twist-policy {source}: put {source} before smc")

    def check_task(self, task: Task, config, enumerable: bool) -> None:
        if config.twist == "exact" and not enumerable:
            raise ValueError(
                f"--twist exact needs the enumerated posterior; task '{task.name}' has {task.num_sequences:,} "
                "sequences: use --twist learned, policy or none"
            )

    def _twist(self, context: RunContext):
        from .infer.twists import PolicyTwist, TwistTrainer, ZeroTwist, exact_twist, learned_twist

        task, config = context.task, context.config
        if config.twist == "none":
            return ZeroTwist(task.vocab_size), 0
        if config.twist == "exact":
            return exact_twist(task, context.posterior), 0
        if config.twist == "policy":
            return PolicyTwist(context.fits[config.twist_policy].policy), 0
        twist = learned_twist(task, config.policy)
        checkpoint_dir = context.checkpoint_dir / "smc_twist" if context.checkpoint_dir is not None else None
        trainer = TwistTrainer(task, twist, config.num_sequences, lr=config.twist_lr)
        result = fit(
            trainer,
            steps=config.twist_steps,
            seed=config.seed,
            log_every=config.log_every,
            progress=context.progress,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=config.checkpoint_every,
            resume=config.resume and checkpoint_dir is not None and (checkpoint_dir / "checkpoint.pt").exists(),
            settings={
                "task": task.name,
                "beta": task.beta,
                "length": task.length,
                "vocab_size": task.vocab_size,
                "task_fingerprint": task.fingerprint(),
                "num_sequences": config.num_sequences,
                "lr": config.twist_lr,
                "seed": config.seed,
                "policy": config.policy,
            },
        )
        return twist, result.reward_evaluations

    def run(self, context: RunContext) -> MethodResult:
        from .diagnostics import smc_inference_data
        from .infer.bounds import NoExactDraws, exact_posterior_draws, log_z_bounds
        from .infer.mcmc import total_variation

        task, config, posterior = context.task, context.config, context.posterior
        t0 = time.perf_counter()
        twist, twist_evaluations = self._twist(context)
        try:
            draws = exact_posterior_draws(  # one per conditional run, and enough to estimate each policy's EUBO
                task,
                max(config.smc_runs, config.eval_samples),
                posterior=posterior,
                seed=config.seed,
                max_proposals=config.max_rejection_draws,
                chunk_size=max(2, min(4096, 2**25 // task.vocab_size)),
            )
            source = draws.source
        except NoExactDraws as exc:
            draws, source = None, f"none: {exc}"
        bounds = log_z_bounds(
            task,
            num_particles=config.particles,
            num_runs=config.smc_runs,
            twist=twist,
            draws=draws,
            resample_threshold=config.resample_threshold,
            seed=config.seed,
        )
        wall = time.perf_counter() - t0
        lower, upper = bounds.lower, bounds.upper
        idata, resampled = smc_inference_data(task, lower, seed=config.seed)
        row = Row(
            method=self.name,
            scored=MONTE_CARLO,
            log_z=lower.log_z_pooled,
            log_z_lower=bounds.log_z_lower,
            log_z_lower_se=lower.log_z_se,
            log_z_upper=bounds.log_z_upper,
            log_z_upper_se=None if upper is None else upper.log_z_se,
            ess=float(lower.ess.mean()),
            resampling_steps=float(lower.resampling_steps.double().mean()),
            expected_reward=_pooled_mean_reward(lower),
            tv_to_posterior=(
                total_variation(resampled, posterior.log_probs, task.vocab_size) if posterior is not None else None
            ),
            reward_evaluations=bounds.reward_evaluations + twist_evaluations,
            wall_seconds=wall,
            settings={
                "twist": config.twist,
                "particles": config.particles,
                "smc_runs": config.smc_runs,
                "resample_threshold": config.resample_threshold,
                "exact_draws": source,
                "rejection_acceptance": None if draws is None else draws.acceptance_rate,
            },
        )
        return MethodResult(row=row, inference_data=idata, bounds=bounds)


def _pooled_mean_reward(result) -> float:
    r""":math:`\hat{\mathbb{E}}_{\pi^*}[r]` from SMC runs: each run's self-normalized mean weighted by its
    :math:`\hat Z_k` (the runs pooled as one unbiased estimate of the unnormalized integral)."""
    import torch

    log_w = result.log_weights  # (K, N)
    reward = torch.where(torch.isfinite(result.reward), result.reward, torch.zeros_like(result.reward))
    within = torch.softmax(log_w, -1)  # (K, N)
    run = torch.softmax(result.log_z, 0)  # (K,)
    means = torch.nan_to_num((within * reward).sum(-1))  # (K,)
    return float((run * means).sum())


def bracket_rows(task: Task, results: Mapping[str, MethodResult]) -> dict[str, MethodResult]:
    """Every trained method's row with its KL bracket from the ``smc`` row's bounds on log Z (unchanged when no
    ``smc`` ran)."""
    from .infer.bounds import kl_bracket

    bounds = next((r.bounds for r in results.values() if r.bounds is not None), None)
    if bounds is None:
        return dict(results)
    out = {}
    for name, result in results.items():
        if result.fit is not None and result.draws is not None:
            bracket = kl_bracket(task, result.fit.policy, bounds, log_weights=result.draws.log_weight)
            row = dataclasses.replace(
                result.row,
                kl_q_to_posterior_lower=bracket.kl_q_lower,
                kl_q_to_posterior_upper=bracket.kl_q_upper,
                kl_posterior_to_q_lower=bracket.kl_p_lower,
                kl_posterior_to_q_upper=bracket.kl_p_upper,
            )
            result = dataclasses.replace(result, row=row)
        out[name] = result
    return out


# ---------------------------------------------------------------------------------------------------------------
# the registry


def _svi(task, policy, num_sequences, **kwargs):
    from .infer.svi import SVITrainer

    return SVITrainer(task, policy, num_sequences, **kwargs)


def _reinforce(task, policy, num_sequences, **kwargs):
    from .rl import ReinforceTrainer

    return ReinforceTrainer(task, policy, num_sequences, **kwargs)


def _check_svi(num_sequences: int, **options) -> None:
    from .infer.svi import check_options

    check_options(**options)


def _check_recipe(num_sequences: int, **options) -> None:
    from .rl.recipes import Recipe

    Recipe(**options).check_batch(num_sequences)


def _ppo(task, policy, num_sequences, **kwargs):
    from .rl import PPOTrainer

    return PPOTrainer(task, policy, num_sequences, **kwargs)


def _dpg(task, policy, num_sequences, **kwargs):
    from .rl import DPGTrainer

    return DPGTrainer(task, policy, num_sequences, **kwargs)


def _recipe_preset(name: str) -> dict:
    from .rl.recipes import PRESETS

    return PRESETS[name].as_dict()


#: the compare settings a recipe trainer reads (each overrides the preset's value when given)
RECIPE_OPTIONS = (
    "kl_in",
    "kl_estimator",
    "kl_ratio_correction",
    "advantage",
    "group_size",
    "normalization",
    "epochs",
    "minibatches",
    "clip",
    "kl_gradient",
    "replay",
)


def _recipe(name: str, label: str, description: str, **changes) -> TrainedMethod:
    return TrainedMethod(
        name,
        label,
        description,
        _reinforce,
        RECIPE_OPTIONS,
        fixed={**_recipe_preset(name if not changes else "rl"), **changes},
        validate=_check_recipe,
    )


register(ExactMethod())
register(
    TrainedMethod(
        "svi",
        "SVI (Pyro)",
        "stochastic variational inference, the policy as guide",
        _svi,
        ("estimator", "kl_gradient", "sites", "replay"),
        validate=_check_svi,
    )
)
register(_recipe("rl", "REINFORCE (RLOO)", "REINFORCE, k1 KL in the reward, leave-one-out baseline (RLOO)"))
register(
    TrainedMethod(
        "ppo",
        "PPO",
        "PPO-clip, per-token KL in the reward, optional adaptive KL controller",
        _ppo,
        ("kl_estimator", "kl_target", "epochs", "minibatches", "clip"),
    )
)
register(_recipe("grpo", "GRPO", "GRPO: group-standardized advantage, k3 KL in the loss"))
register(_recipe("grpo_corr", "GRPO + ratio correction", "GRPO with the in-loss k3 multiplied by q/q_old"))
register(_recipe("drgrpo", "Dr. GRPO", "Dr. GRPO: group-centred advantage, k3 KL in the loss, constant normalization"))
register(TrainedMethod("dpg", "DPG", "distributional policy gradient: forward KL(pi*||q)", _dpg))
register(
    _recipe(
        "rl_no_kl",
        "REINFORCE without KL",
        "plain reward maximization (no KL term): collapses onto argmax r",
        kl_in="none",
    )
)
register(
    TrainedMethod(
        "dpg_batch",
        "DPG (batch-normalized)",
        "DPG with weights self-normalized within each batch",
        _dpg,
        fixed={"normalize": "batch"},
    )
)
register(ImportanceMethod())
register(MCMCMethod())
register(SMCMethod())
