r"""Run several inference methods on one task and score them side by side (the ``compare`` command).

Every method row carries the same fields; figures that need the exact posterior are exact where the task
is enumerable and ``None`` otherwise:

- ``elbo``: :math:`\mathbb{E}_q[\log\pi_0 + r/\beta - \log q]` (exact, or a Monte Carlo estimate);
- ``kl_q_to_posterior`` :math:`= \log Z - \mathrm{ELBO}`, ``kl_posterior_to_q``, ``tv_to_posterior``;
- ``expected_reward`` :math:`\mathbb{E}_q[r]`, ``kl_to_prior`` :math:`\mathrm{KL}(q\|\pi_0)`;
- ``reward_evaluations`` and ``wall_seconds`` (training only);
- ``log_z``, ``log_z_se``, ``ess``, ``khat``: importance sampling with the method's policy as proposal
  (``eval_samples`` draws), or for the ``is`` row with the prior as proposal on the trained methods' reward
  budget. A policy's PSIS :math:`\hat k` below 0.5 says it is a good proposal for π*, above 0.7 not usable;
  ``khat_label`` is that reading, ``good`` also when ``max_weight_ratio`` (largest weight / mean weight) ≤ 3;
- ``rhat``, ``ess_bulk`` (of the reward), ``acceptance_rate``: the ``mcmc`` row, whose ``expected_reward``
  is the mean reward of the draws and ``tv_to_posterior`` their empirical distribution's distance to π*.

Each method that draws sequences (``is``, ``mcmc`` and the trained policies, whose importance draws give
their :math:`\hat k`) also leaves its draws as ArviZ InferenceData in ``DIR/<method>.nc``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .diagnostics import importance_inference_data, mcmc_inference_data, save_netcdf, scalar_diagnostics
from .rl import DPGTrainer
from .exact import ExactPosterior, exact_posterior, policy_metrics
from .infer.importance import ImportanceResult, importance_sample
from .infer.mcmc import KERNELS, run_mcmc, total_variation
from .infer.svi import SVITrainer
from .lm import AutoregressiveLM
from .rl import PPOTrainer, ReinforceTrainer
from .storage import write_csv, write_json
from .task import DEFAULT_MAX_ENUMERATION, Task
from .training import FitResult, fit

__all__ = ["METHODS", "CompareConfig", "Comparison", "run_compare", "format_table"]

METHODS = ("exact", "svi", "rl", "ppo", "dpg", "is", "mcmc")
TRAINED = ("svi", "rl", "ppo", "dpg")
ROW_FIELDS = (
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
)

#: per-method diagnostics shown after the shared fields when some row has them
DIAGNOSTIC_FIELDS = ("khat", "khat_label", "max_weight_ratio", "ess", "rhat", "ess_bulk")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of a comparison; the field comments are the CLI's help."""

    methods: tuple[str, ...] = ("exact", "svi", "rl")  # methods to run, in order
    steps: int = 1500  # optimizer steps of each trained method
    num_sequences: int = 1024  # sequences (and reward evaluations) per step, the same for every method
    lr: float = 0.02  # Adam learning rate of every trained method
    seed: int = 0  # seeds every method's run alike
    policy: str = "auto"  # policy class: auto, tabular or copy
    estimator: str = "loo"  # SVI gradient estimator: loo, trace or tracegraph
    kl_estimator: str = "k1"  # PPO per-token KL estimator: k1 or k3
    kl_target: float | None = None  # PPO adaptive-KL target (nats); None keeps beta fixed
    log_every: int = 50  # steps between logged points of the learning curves
    eval_samples: int = 1024  # Monte Carlo samples for the final figures when the task is not enumerable
    max_enumeration: int = DEFAULT_MAX_ENUMERATION  # largest V^T enumerated exactly
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end and on Ctrl-C)
    resume: bool = False  # continue trained methods from their checkpoints in the output folder
    mcmc_kernel: str = "auto"  # gibbs, imh or auto: gibbs for V <= 256 with the prior as proposal, else imh
    mcmc_proposal: str = "prior"  # IMH proposal: the prior, or a trained method listed before mcmc (svi, rl, …)
    chains: int = 8  # MCMC chains, run as one batch
    draws: int = 1000  # MCMC draws kept per chain
    warmup: int = 200  # MCMC warm-up steps per chain, discarded

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError("no methods given")
        if self.steps < 0 or self.num_sequences < 2 or self.eval_samples < 2:
            raise ValueError("steps must be >= 0, num_sequences and eval_samples >= 2")
        if self.mcmc_kernel not in ("auto", *KERNELS):
            raise ValueError(f"unknown MCMC kernel {self.mcmc_kernel!r}; choose auto, {', '.join(KERNELS)}")
        if self.mcmc_proposal != "prior":
            if self.mcmc_proposal not in TRAINED:
                raise ValueError(
                    f"unknown MCMC proposal {self.mcmc_proposal!r}; choose prior or a trained method "
                    f"({', '.join(TRAINED)})"
                )
            if self.mcmc_kernel == "gibbs":
                raise ValueError("the Gibbs kernel uses exact full conditionals; --mcmc-proposal needs imh")
            order = list(self.methods)
            if "mcmc" in order and (
                self.mcmc_proposal not in order or order.index(self.mcmc_proposal) > order.index("mcmc")
            ):
                raise ValueError(
                    f"--mcmc-proposal {self.mcmc_proposal} needs method {self.mcmc_proposal!r} before mcmc in --methods"
                )
        if self.chains < 1 or self.draws < 4 or self.warmup < 0:
            raise ValueError("chains must be >= 1, draws >= 4 and warmup >= 0")


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`run_compare`: the JSON document, the trained policies and their histories."""

    metrics: dict
    fits: dict[str, FitResult] = field(default_factory=dict)
    posterior: ExactPosterior | None = None


def _importance_fields(task: Task, result: ImportanceResult, as_policy: bool) -> dict:
    """Row fields from importance sampling; with ``as_policy``, the proposal's own Monte Carlo figures too."""
    fields = {
        "log_z": result.log_z,
        "log_z_se": result.log_z_se,
        "ess": result.ess,
        "khat": result.khat,
        "khat_label": result.khat_label,
        "max_weight_ratio": result.max_weight_ratio,
    }
    if as_policy:  # E_q[log w] = ELBO(q); E_q[r]; KL(q‖π0) = E_q[r/β − log w]
        finite = torch.isfinite(result.log_weights)
        fields.update(
            elbo=result.elbo,
            expected_reward=float(result.rewards.mean()),
            kl_to_prior=float((result.rewards[finite] / task.beta - result.log_weights[finite]).mean())
            if bool(finite.all())
            else None,
        )
    return fields


def _policy_row(
    task: Task, result: FitResult, posterior: ExactPosterior | None, config: CompareConfig, out: Path | None
) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row["method"] = result.method
    imp = importance_sample(
        task, result.policy, num_samples=config.eval_samples, chunk_size=config.num_sequences, seed=config.seed
    )
    if out is not None:
        save_netcdf(importance_inference_data(task, imp, result.method), out / f"{result.method}.nc")
    row.update(_importance_fields(task, imp, as_policy=posterior is None))
    if posterior is not None:
        m = policy_metrics(task, result.policy, posterior)
        row.update(
            elbo=m.elbo,
            kl_q_to_posterior=m.kl_q_to_posterior,
            kl_posterior_to_q=m.kl_posterior_to_q,
            tv_to_posterior=m.tv_to_posterior,
            expected_reward=m.expected_reward,
            kl_to_prior=m.kl_to_prior,
        )
    row.update(reward_evaluations=result.reward_evaluations, wall_seconds=result.wall_seconds)
    return row


def _is_row(task: Task, config: CompareConfig, posterior: ExactPosterior | None, out: Path | None) -> dict:
    """Importance sampling with the prior as proposal, on the reward budget of one trained method."""
    num_samples = max(config.steps * config.num_sequences, config.eval_samples)
    t0 = time.perf_counter()
    imp = importance_sample(
        task, None, num_samples=num_samples, chunk_size=max(config.num_sequences, 4096), seed=config.seed
    )
    row = dict.fromkeys(ROW_FIELDS)
    row.update(method="is", proposal="prior", reward_evaluations=num_samples, wall_seconds=time.perf_counter() - t0)
    row.update(_importance_fields(task, imp, as_policy=False))
    row["expected_reward"] = imp.expected_reward
    if posterior is not None:
        row["tv_to_posterior"] = total_variation(imp.resampled, posterior.log_probs, task.vocab_size)
    if out is not None:
        save_netcdf(importance_inference_data(task, imp, "is"), out / "is.nc")
    return row


#: the largest vocabulary for which ``mcmc_kernel="auto"`` picks Gibbs (V reward evaluations per site)
GIBBS_MAX_VOCAB = 256


def _mcmc_row(
    task: Task, config: CompareConfig, posterior: ExactPosterior | None, out: Path | None, fits: dict
) -> dict:
    """MCMC draws of π*: ``config.chains`` vectorized chains, R-hat and bulk ESS of the reward."""
    kernel = config.mcmc_kernel
    proposal = None if config.mcmc_proposal == "prior" else fits[config.mcmc_proposal].policy
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
    evaluations = steps * task.length * task.vocab_size if kernel == "gibbs" else steps
    row = dict.fromkeys(ROW_FIELDS)
    row.update(
        method="mcmc",
        kernel=kernel,
        proposal=config.mcmc_proposal if kernel == "imh" else None,
        expected_reward=result.expected_reward,
        rhat=diag["rhat"],
        ess_bulk=diag["ess_bulk"],
        acceptance_rate=float(result.acceptance_rate.mean()),
        reward_evaluations=evaluations,
        wall_seconds=wall,
    )
    if posterior is not None:
        row["tv_to_posterior"] = total_variation(result.draws, posterior.log_probs, task.vocab_size)
    if out is not None:
        save_netcdf(idata, out / "mcmc.nc")
    return row


def _trainer(method: str, task: Task, config: CompareConfig):
    policy = task.make_policy(config.policy)
    if method == "svi":
        return SVITrainer(task, policy, config.num_sequences, lr=config.lr, estimator=config.estimator)
    if method == "rl":
        return ReinforceTrainer(task, policy, config.num_sequences, lr=config.lr)
    if method == "dpg":  # forward KL(π*‖q) with importance weights: the mass-covering counterpart
        return DPGTrainer(task, policy, config.num_sequences, lr=config.lr)
    if method == "ppo":
        return PPOTrainer(
            task,
            policy,
            config.num_sequences,
            lr=config.lr,
            kl_estimator=config.kl_estimator,
            kl_target=config.kl_target,
        )
    raise ValueError(f"method {method!r} is not a trained method")


def run_compare(
    task: Task, config: CompareConfig, out: str | Path | None = None, *, progress: bool = False
) -> Comparison:
    """Run ``config.methods`` on ``task``; with ``out``, write ``metrics.json``, ``metrics.csv``,
    ``history_<method>.csv``, per-method checkpoints and ``<method>.nc`` (ArviZ) into that folder.

    Example::

        >>> comparison = run_compare(load_task("markov"), CompareConfig(methods=("exact", "svi"), steps=200))
        >>> [row["method"] for row in comparison.metrics["methods"]]
        ['exact', 'svi']
    """
    out = Path(out) if out is not None else None
    enumerable = task.is_enumerable(config.max_enumeration)
    if "exact" in config.methods and not enumerable:
        raise ValueError(
            f"method 'exact' needs V^T <= {config.max_enumeration:,} but task '{task.name}' has {task.num_sequences:,} "
            "sequences; drop 'exact' from --methods"
        )
    posterior, exact_seconds = None, None
    if enumerable:
        t0 = time.perf_counter()
        posterior = exact_posterior(task, max_sequences=config.max_enumeration)
        exact_seconds = time.perf_counter() - t0

    def evaluate(policy: AutoregressiveLM) -> dict:  # exact learning curves; sampled tasks log batch estimates
        m = policy_metrics(task, policy, posterior)
        return {"exact_elbo": m.elbo, "kl_q_to_posterior": m.kl_q_to_posterior, "expected_reward": m.expected_reward}

    rows, fits = [], {}
    for method in config.methods:
        if method == "exact":
            row = dict.fromkeys(ROW_FIELDS)
            row.update(
                method="exact",
                elbo=posterior.log_z,
                log_z=posterior.log_z,
                kl_q_to_posterior=0.0,
                kl_posterior_to_q=0.0,
                tv_to_posterior=0.0,
                expected_reward=posterior.expected_reward,
                kl_to_prior=posterior.kl_to_prior,
                reward_evaluations=task.num_sequences,
                wall_seconds=exact_seconds,
            )
            rows.append(row)
            continue
        if method == "is":
            rows.append(_is_row(task, config, posterior, out))
            continue
        if method == "mcmc":
            rows.append(_mcmc_row(task, config, posterior, out, fits))
            continue
        trainer = _trainer(method, task, config)
        result = fit(
            trainer,
            steps=config.steps,
            seed=config.seed,
            log_every=config.log_every,
            evaluate=evaluate if posterior is not None else None,
            progress=progress,
            checkpoint_dir=out / method if out is not None else None,
            checkpoint_every=config.checkpoint_every,
            resume=config.resume and out is not None and (out / method / "checkpoint.pt").exists(),
            settings={
                "task": task.name,
                "beta": task.beta,
                "num_sequences": config.num_sequences,
                "lr": config.lr,
                "seed": config.seed,
                "policy": config.policy,
                **({"estimator": config.estimator} if method == "svi" else {}),
                **({"kl_estimator": config.kl_estimator, "kl_target": config.kl_target} if method == "ppo" else {}),
            },
        )
        fits[method] = result
        rows.append(_policy_row(task, result, posterior, config, out))
        if out is not None:
            write_csv(out / f"history_{method}.csv", result.history)
    metrics = {
        "task": task.name,
        "beta": task.beta,
        "vocab_size": task.vocab_size,
        "length": task.length,
        "seed": config.seed,
        "steps": config.steps,
        "num_sequences": config.num_sequences,
        "exact": (
            {"log_z": posterior.log_z, "expected_reward": posterior.expected_reward, "entropy": posterior.entropy}
            if posterior is not None
            else None
        ),
        "methods": rows,
    }
    if out is not None:
        write_json(out / "metrics.json", metrics)
        write_csv(out / "metrics.csv", rows)
    return Comparison(metrics=metrics, fits=fits, posterior=posterior)


def format_table(metrics: dict, columns: Sequence[str] | None = None) -> str:
    """The method rows as a fixed-width text table: the shared fields, then the diagnostics any row has."""
    rows = metrics["methods"]
    if columns is None:
        columns = list(ROW_FIELDS) + [c for c in DIAGNOSTIC_FIELDS if any(row.get(c) is not None for row in rows)]

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    lines = [header, "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
