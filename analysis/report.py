r"""The analysis report: experiments that put the package's claims into figures, each saved with its data.

Every experiment is a function ``run_<name>(config, out)`` that trains and measures, then writes its data
(CSV, JSON, NetCDF) into the folder ``out``; a matching ``plot_<name>(out)`` in :mod:`bayes_klrl.plots` reads
only those files and draws the PNGs. The ``analysis/`` scripts are thin command lines over one experiment
each; ``bayes-klrl report [--quick] --out DIR`` runs them all into ``DIR/<name>/``.

- ``learning_curves``: SVI (Pyro, leave-one-out ELBO) against REINFORCE (KL in the reward) on the same task
  and seeds. Exact :math:`\mathrm{ELBO}(q)` and :math:`J(q)/\beta` at every logged step (the identity
  :math:`\mathrm{ELBO} = J/\beta = \log Z - \mathrm{KL}(q\|\pi^*)`), :math:`\mathrm{KL}(q\|\pi^*)` against
  reward evaluations and wall time, and the gradient variance of the SVI estimators.
- ``beta_sweep``: :math:`\mathbb{E}_{\pi^*}[r]`, :math:`\mathrm{KL}(\pi^*\|\pi_0)` and :math:`H(\pi^*)` from a
  large β to a tiny one, beside REINFORCE without the KL term, whose entropy collapses.
- ``forward_reverse``: SVI and RL (reverse KL, mode-seeking) beside DPG (forward KL, mass-covering) on a
  two-mode task (:func:`two_modes_task`), with a unigram policy that cannot represent π* and a tabular one
  that can.
- ``posterior``: the exact π* beside importance sampling, MCMC and the SVI and RL policies on the top
  sequences (decoded on the word task), and the PSIS :math:`\hat k` of the policies over training.
- ``mcmc``: ArviZ trace, rank and ESS plots of the MCMC kernels' draws (saved as NetCDF).

Each config has the full settings as defaults and a ``QUICK`` preset (all five in a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .diagnostics import mcmc_inference_data
from .dpg import DPGTrainer
from .exact import ExactPosterior, enumerate_sequences, exact_elbo, exact_objective, exact_posterior, policy_metrics
from .infer.importance import importance_sample
from .infer.mcmc import run_mcmc, total_variation
from .infer.svi import SVITrainer, gradient_variance
from .lm import AutoregressiveLM, CategoricalLM
from .rl import ReinforceTrainer
from .storage import write_csv, write_json
from .task import Task
from .training import fit

__all__ = [
    "EXPERIMENTS",
    "BetaSweepConfig",
    "Experiment",
    "ForwardReverseConfig",
    "KhatConfig",
    "LearningCurvesConfig",
    "MCMCConfig",
    "PosteriorConfig",
    "add_arguments",
    "add_config_arguments",
    "command",
    "config_from_args",
    "expected_distinct",
    "run_beta_sweep",
    "run_experiment",
    "run_forward_reverse",
    "run_khat",
    "run_learning_curves",
    "run_mcmc_diagnostics",
    "run_posterior",
    "script_main",
    "sequence_labels",
    "two_modes_task",
]


def _field(default, help: str):
    return field(default=default, metadata={"help": help})


def _check_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_at_least_two(config, *names: str) -> None:
    """Sizes that must be >= 2 (a leave-one-out baseline needs two sequences in the batch)."""
    if any(getattr(config, name) < 2 for name in names):
        raise ValueError(f"{' and '.join(names)} must be >= 2")


def _check_choices(config, name: str, choices: tuple[str, ...]) -> None:
    """A non-empty tuple of names from ``choices``."""
    value = getattr(config, name)
    if not value or any(v not in choices for v in value):
        raise ValueError(f"{name} must be from {', '.join(choices)}; got {value!r}")


class _Config:
    """Mixin: the quick preset."""

    QUICK: ClassVar[dict] = {}

    @classmethod
    def quick(cls, **changes):
        """The quick preset (a few seconds to a minute), with ``changes`` applied."""
        return cls(**{**cls.QUICK, **changes})


def _load(task_spec: str, beta: float | None = None) -> Task:
    from .modelfile import load_task

    task = load_task(task_spec)
    return task if beta is None else task.replace(beta=beta)


def expected_distinct(log_probs: torch.Tensor, num_samples: int) -> float:
    r"""Expected number of distinct sequences among ``num_samples`` i.i.d. draws of ``exp(log_probs)``:
    :math:`\sum_x 1 - (1 - p(x))^N`.

    Example::

        >>> expected_distinct(torch.log(torch.tensor([0.5, 0.5])), 2)   # 2 - 2 * 0.25
        1.5
    """
    p = log_probs.double().exp().clamp(max=1.0)
    return float((-torch.expm1(num_samples * torch.log1p(-p.clamp(max=1 - 1e-16)))).sum())


def sequence_labels(task: Task, sequences: torch.Tensor) -> list[str]:
    """Readable labels: the task's ``decode`` (word tasks) or the token ids joined by spaces."""
    if task.decode is not None:
        return list(task.decode(sequences.cpu()))
    return [" ".join(str(int(t)) for t in row) for row in sequences.cpu()]


def _trainer(method: str, task: Task, policy: AutoregressiveLM, num_sequences: int, lr: float):
    """``svi``, ``rl`` (REINFORCE, KL in the reward), ``rl_no_kl`` (without the KL term), ``dpg`` (Z from a running
    estimate) or ``dpg_batch`` (weights self-normalized per batch)."""
    if method == "svi":
        return SVITrainer(task, policy, num_sequences, lr=lr)
    if method in ("rl", "rl_no_kl"):
        return ReinforceTrainer(task, policy, num_sequences, lr=lr, kl_penalty=method == "rl")
    if method in ("dpg", "dpg_batch"):
        normalize = "batch" if method == "dpg_batch" else "running"
        return DPGTrainer(task, policy, num_sequences, lr=lr, normalize=normalize)
    raise ValueError(f"unknown method {method!r}")


def _fit(method: str, task: Task, template: AutoregressiveLM, config, seed: int, *, progress: bool, evaluate=None):
    """Train a copy of ``template`` with ``method`` for ``config.steps`` steps of ``config.num_sequences``
    sequences from ``seed``, logging ``evaluate`` every ``config.log_every`` steps (only at the ends when the
    config has no ``log_every``)."""
    trainer = _trainer(method, task, copy.deepcopy(template), config.num_sequences, config.lr)
    log_every = getattr(config, "log_every", config.steps)
    return fit(trainer, steps=config.steps, seed=seed, log_every=log_every, evaluate=evaluate, progress=progress)


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def _write_summary(out: Path, config, task: Task | None = None, about: dict | None = None, **fields) -> dict:
    """Write and return ``summary.json``: the task's name and β (with a ``task``), ``about`` it, the config, then
    ``fields``."""
    summary = {} if task is None else {"task": task.name, "beta": task.beta}
    summary.update(about or {})
    summary.update(config=dataclasses.asdict(config), **fields)
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# learning curves: SVI and RL on the same seeds


@dataclass(frozen=True)
class LearningCurvesConfig(_Config):
    """SVI against REINFORCE on one task and the same seeds, scored exactly at every logged step."""

    task: str = _field("markov", "shipped task name or model file (must be enumerable)")
    seeds: int = _field(5, "runs per method, seeds 0..seeds-1")
    steps: int = _field(1500, "optimizer steps per run")
    num_sequences: int = _field(1024, "sequences (reward evaluations) per step")
    lr: float = _field(0.02, "Adam learning rate of both methods")
    log_every: int = _field(25, "steps between exact evaluations")
    variance_sequences: int = _field(256, "sequences per batch when measuring gradient variance")
    variance_batches: int = _field(100, "independent batches per gradient-variance measurement")
    estimators: tuple[str, ...] = _field(("loo", "trace", "tracegraph"), "SVI estimators whose variance is measured")

    QUICK: ClassVar[dict] = {
        "steps": 200,
        "num_sequences": 256,
        "lr": 0.05,
        "log_every": 20,
        "variance_sequences": 64,
        "variance_batches": 20,
    }

    def __post_init__(self):
        _check_positive(self, "seeds", "steps", "num_sequences", "lr", "log_every", "variance_batches")
        _check_at_least_two(self, "variance_sequences")


def run_learning_curves(config: LearningCurvesConfig, out: str | Path, *, progress: bool = False) -> dict:
    r"""Fit SVI and RL for each seed; write ``history.csv``, ``gradient_variance.csv`` and ``summary.json``.

    Logged at every ``log_every`` steps per run: ``exact_elbo`` (:func:`~bayes_klrl.exact.exact_elbo`),
    ``objective_over_beta`` (:func:`~bayes_klrl.exact.exact_objective` / β, computed separately),
    ``kl_q_to_posterior``, ``kl_posterior_to_q``, ``expected_reward``, ``entropy``, with ``reward_evaluations``
    and ``wall_seconds`` (training time only). Gradient variance: :func:`~bayes_klrl.infer.svi.gradient_variance`
    of each estimator at the start (q = π0) and at the end (the seed's trained SVI policy).
    """
    out = Path(out)
    task = _load(config.task)
    posterior = exact_posterior(task)
    template = task.make_policy("auto")  # built once, copied per run

    def evaluate(policy: AutoregressiveLM) -> dict:
        with torch.no_grad():
            elbo = float(exact_elbo(task, policy))
            objective = float(exact_objective(task, policy))
        m = policy_metrics(task, policy, posterior)
        return {
            "exact_elbo": elbo,
            "objective_over_beta": objective / task.beta,
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_posterior_to_q": m.kl_posterior_to_q,
            "expected_reward": m.expected_reward,
            "entropy": m.entropy,
        }

    keep = ("step", "reward_evaluations", "wall_seconds", "exact_elbo", "objective_over_beta")
    keep += ("kl_q_to_posterior", "kl_posterior_to_q", "expected_reward", "entropy")
    rows, variance_rows, trained = [], [], {}
    for seed in range(config.seeds):
        for method in ("svi", "rl"):
            result = _fit(method, task, template, config, seed, evaluate=evaluate, progress=progress)
            rows += [{"method": method, "seed": seed, **{k: h[k] for k in keep}} for h in result.history]
            trained[method, seed] = result.policy
        for point, policy in (("start", copy.deepcopy(template)), ("end", trained["svi", seed])):
            for estimator in config.estimators:
                t0 = time.perf_counter()
                stats = gradient_variance(
                    task,
                    policy,
                    estimator,
                    num_sequences=config.variance_sequences,
                    num_batches=config.variance_batches,
                    seed=seed,
                )
                variance_rows.append(
                    {
                        "estimator": estimator,
                        "point": point,
                        "seed": seed,
                        "total_variance": stats.total_variance,
                        "num_sequences": stats.num_sequences,
                        "num_batches": stats.num_batches,
                        "seconds": time.perf_counter() - t0,
                    }
                )
    write_csv(out / "history.csv", rows)
    write_csv(out / "gradient_variance.csv", variance_rows)
    gaps = [abs(r["exact_elbo"] - r["objective_over_beta"]) for r in rows]
    final = {}
    for method in ("svi", "rl"):
        last = [r for r in rows if r["method"] == method and r["step"] == config.steps]
        kls = np.array([r["kl_q_to_posterior"] for r in last])
        walls = np.array([r["wall_seconds"] for r in last])
        final[method] = {
            "kl_q_to_posterior_mean": float(kls.mean()),
            "kl_q_to_posterior_min": float(kls.min()),
            "kl_q_to_posterior_max": float(kls.max()),
            "wall_seconds_mean": float(walls.mean()),
        }
    return _write_summary(
        out,
        config,
        task,
        {"log_z": posterior.log_z, "num_sequences_enumerated": task.num_sequences},
        max_abs_elbo_minus_objective_over_beta=max(gaps),
        final=final,
    )


# ---------------------------------------------------------------------------------------------------------------
# beta sweep and the collapse of RL without the KL term


@dataclass(frozen=True)
class BetaSweepConfig(_Config):
    """The posterior from a large β to a tiny one, and REINFORCE with and without the KL term at the task's β."""

    task: str = _field("markov", "shipped task name or model file (must be enumerable)")
    beta_max: float = _field(30.0, "largest β of the sweep")
    beta_min: float = _field(0.01, "smallest β of the sweep")
    num_betas: int = _field(25, "β values, log-spaced")
    seeds: int = _field(5, "runs per variant, seeds 0..seeds-1")
    steps: int = _field(1000, "REINFORCE steps per run")
    num_sequences: int = _field(256, "sequences (reward evaluations) per step")
    lr: float = _field(0.05, "Adam learning rate")
    log_every: int = _field(20, "steps between exact evaluations")
    distinct_samples: int = _field(256, "draws whose distinct sequences are counted")

    QUICK: ClassVar[dict] = {"num_betas": 15, "seeds": 3, "steps": 400, "log_every": 20}

    def __post_init__(self):
        _check_positive(self, "beta_max", "beta_min", "num_betas", "seeds", "steps", "lr", "log_every")
        _check_positive(self, "distinct_samples")
        if self.beta_min >= self.beta_max:
            raise ValueError(f"beta_min ({self.beta_min}) must be below beta_max ({self.beta_max})")
        _check_at_least_two(self, "num_sequences")


def _limit_posterior(posterior: ExactPosterior) -> dict:
    r"""The β → 0 limit: π0 conditioned on :math:`\arg\max r` (its entropy and size)."""
    r = posterior.rewards
    best = r == r.max()
    log_p = posterior.log_prior[best]
    log_p = log_p - torch.logsumexp(log_p, 0)
    return {
        "max_reward": float(r.max()),
        "argmax_size": int(best.sum()),
        "entropy": float(-(log_p.exp() * log_p).sum()),
    }


def run_beta_sweep(config: BetaSweepConfig, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``sweep.csv`` (exact posterior figures per β), ``collapse.csv`` (REINFORCE with and without the
    KL term over training: exact entropy, :math:`\mathbb{E}_q[r]`, KL to π*, distinct sequences among
    ``distinct_samples`` draws) and ``summary.json``.
    """
    out = Path(out)
    task = _load(config.task)
    betas = np.geomspace(config.beta_max, config.beta_min, config.num_betas)
    sweep = []
    for beta in betas:
        post = exact_posterior(task.replace(beta=float(beta)))
        sweep.append(
            {
                "beta": float(beta),
                "expected_reward": post.expected_reward,
                "kl_to_prior": post.kl_to_prior,
                "entropy": post.entropy,
                "log_z": post.log_z,
                "top_probability": float(post.log_probs.max().exp()),
                "expected_distinct": expected_distinct(post.log_probs, config.distinct_samples),
            }
        )
    write_csv(out / "sweep.csv", sweep)

    posterior = exact_posterior(task)
    x_all = enumerate_sequences(task.vocab_size, task.length).to(task.prior.device)
    template = task.make_policy("auto")  # built once, copied per run

    def evaluate(policy: AutoregressiveLM) -> dict:
        m = policy_metrics(task, policy, posterior)
        with torch.no_grad():
            draws = policy.sample(config.distinct_samples, task.length)  # the RNG is restored by fit
            log_q = policy.log_prob(x_all)
        return {
            "entropy": m.entropy,
            "expected_reward": m.expected_reward,
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_to_prior": m.kl_to_prior,
            "distinct": int(torch.unique(draws, dim=0).shape[0]),
            "expected_distinct": expected_distinct(log_q, config.distinct_samples),
        }

    rows = []
    for seed in range(config.seeds):
        for variant in ("rl_no_kl", "rl"):
            result = _fit(variant, task, template, config, seed, evaluate=evaluate, progress=progress)
            for h in result.history:
                rows.append(
                    {
                        "variant": variant,
                        "seed": seed,
                        "step": h["step"],
                        "reward_evaluations": h["reward_evaluations"],
                        **{k: h[k] for k in ("entropy", "expected_reward", "kl_q_to_posterior", "kl_to_prior")},
                        "distinct": h["distinct"],
                        "expected_distinct": h["expected_distinct"],
                    }
                )
    write_csv(out / "collapse.csv", rows)
    prior_metrics = policy_metrics(task, task.prior, posterior)
    final = {}
    for variant in ("rl_no_kl", "rl"):
        last = [r for r in rows if r["variant"] == variant and r["step"] == config.steps]
        final[variant] = {
            "entropy_mean": _mean(last, "entropy"),
            "entropy_max": float(np.max([r["entropy"] for r in last])),
            "distinct_mean": _mean(last, "distinct"),
            "expected_reward_mean": _mean(last, "expected_reward"),
        }
    return _write_summary(
        out,
        config,
        task,
        posterior={
            "entropy": posterior.entropy,
            "expected_reward": posterior.expected_reward,
            "kl_to_prior": posterior.kl_to_prior,
            "expected_distinct": expected_distinct(posterior.log_probs, config.distinct_samples),
        },
        prior={"entropy": prior_metrics.entropy, "expected_reward": prior_metrics.expected_reward},
        beta_to_zero_limit=_limit_posterior(posterior),
        final=final,
    )


# ---------------------------------------------------------------------------------------------------------------
# reverse against forward KL on a task with two modes


def two_modes_task(beta: float = 0.35, vocab_size: int = 4, length: int = 6, tilt: float = 0.15) -> Task:
    r"""A small enumerable task whose posterior has two separated modes.

    Prior: i.i.d. tokens, :math:`\pi_0(x) = \prod_t \mathrm{softmax}(\ell)_{x_t}` with :math:`\ell = (\text{tilt},
    0, \dots, 0)`. Reward: :math:`r(x) = \max(\#\{t: x_t = 0\}, \#\{t: x_t = V-1\})`, high for sequences that
    stay with token 0 or with token V−1. With the defaults (V = 4, T = 6, 4,096 sequences, β = 0.35) the
    posterior puts 0.56 of its mass within one token of ``0 0 0 0 0 0`` (mode A), 0.25 within one token of
    ``3 3 3 3 3 3`` (mode B) and 0.19 elsewhere.

    Example::

        >>> task = two_modes_task()
        >>> exact_posterior(task).top_k(2)[0]
        tensor([[0, 0, 0, 0, 0, 0],
                [3, 3, 3, 3, 3, 3]])
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    last = vocab_size - 1

    def reward(x: torch.Tensor) -> torch.Tensor:
        return torch.maximum((x == 0).sum(-1), (x == last).sum(-1)).to(torch.get_default_dtype())

    logits = torch.zeros(vocab_size)
    logits[0] = tilt
    return Task(prior=CategoricalLM(logits), reward=reward, beta=beta, length=length, name="two_modes")


def mode_regions(task: Task, sequences: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean masks ``(N,)``: ``mode_a`` (at most one token differs from all-0), ``mode_b`` (from all-(V-1)),
    ``between`` (the rest)."""
    length, last = task.length, task.vocab_size - 1
    a = (sequences == 0).sum(-1) >= length - 1
    b = (sequences == last).sum(-1) >= length - 1
    return {"mode_a": a, "mode_b": b & ~a, "between": ~a & ~b}


@dataclass(frozen=True)
class ForwardReverseConfig(_Config):
    """SVI and RL (reverse KL) against DPG (forward KL) on :func:`two_modes_task`, two policy families."""

    beta: float = _field(0.35, "β of the two-mode task")
    length: int = _field(6, "sequence length of the two-mode task")
    policies: tuple[str, ...] = _field(
        ("unigram", "tabular"), "policy families: unigram (i.i.d. tokens, cannot represent π*) and/or tabular"
    )
    methods: tuple[str, ...] = _field(
        ("svi", "rl", "dpg", "dpg_batch"),
        "svi, rl, dpg (Z from a running estimate), dpg_batch (weights self-normalized per batch)",
    )
    seeds: int = _field(5, "runs per method and family, seeds 0..seeds-1")
    steps: int = _field(600, "optimizer steps per run")
    num_sequences: int = _field(256, "sequences (reward evaluations) per step")
    lr: float = _field(0.05, "Adam learning rate of every method")
    log_every: int = _field(20, "steps between exact evaluations")

    QUICK: ClassVar[dict] = {"seeds": 3, "steps": 300}

    def __post_init__(self):
        _check_positive(self, "beta", "length", "seeds", "steps", "lr", "log_every")
        _check_choices(self, "policies", ("unigram", "tabular"))
        _check_choices(self, "methods", ("svi", "rl", "dpg", "dpg_batch"))
        _check_at_least_two(self, "num_sequences")


def run_forward_reverse(config: ForwardReverseConfig, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``history.csv`` (exact KL(q‖π*) and KL(π*‖q) over training per method and policy family),
    ``regions.csv`` (final mass near mode A, near mode B and between, per run and for π*) and ``summary.json``."""
    out = Path(out)
    task = two_modes_task(beta=config.beta, length=config.length)
    posterior = exact_posterior(task)
    x_all = enumerate_sequences(task.vocab_size, task.length)
    regions = mode_regions(task, x_all)

    def masses(log_probs: torch.Tensor) -> dict:
        p = log_probs.double().exp()
        return {name: float(p[mask].sum()) for name, mask in regions.items()}

    def evaluate(policy: AutoregressiveLM) -> dict:
        m = policy_metrics(task, policy, posterior)
        return {
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_posterior_to_q": m.kl_posterior_to_q,
            "entropy": m.entropy,
        }

    rows, region_rows = [], [{"family": "-", "method": "posterior", "seed": -1, **masses(posterior.log_probs)}]
    for family in config.policies:
        template = task.prior.trainable_copy() if family == "unigram" else task.make_policy("tabular")
        for seed in range(config.seeds):
            for method in config.methods:
                result = _fit(method, task, template, config, seed, evaluate=evaluate, progress=progress)
                for h in result.history:
                    rows.append(
                        {
                            "family": family,
                            "method": method,
                            "seed": seed,
                            "step": h["step"],
                            "reward_evaluations": h["reward_evaluations"],
                            "kl_q_to_posterior": h["kl_q_to_posterior"],
                            "kl_posterior_to_q": h["kl_posterior_to_q"],
                            "entropy": h["entropy"],
                        }
                    )
                with torch.no_grad():
                    log_q = result.policy.log_prob(x_all)
                region_rows.append({"family": family, "method": method, "seed": seed, **masses(log_q)})
    write_csv(out / "history.csv", rows)
    write_csv(out / "regions.csv", region_rows)
    final = {}
    for family in config.policies:
        for method in config.methods:
            last = [r for r in rows if r["family"] == family and r["method"] == method and r["step"] == config.steps]
            reg = [r for r in region_rows if r["family"] == family and r["method"] == method]
            final[f"{family}/{method}"] = {
                "kl_q_to_posterior_mean": _mean(last, "kl_q_to_posterior"),
                "kl_posterior_to_q_mean": _mean(last, "kl_posterior_to_q"),
                **{f"{k}_mean": _mean(reg, k) for k in regions},
            }
    return _write_summary(
        out,
        config,
        task,
        {"vocab_size": task.vocab_size, "length": task.length},
        posterior={"entropy": posterior.entropy, "log_z": posterior.log_z, **masses(posterior.log_probs)},
        final=final,
    )


# ---------------------------------------------------------------------------------------------------------------
# the posterior, five ways


@dataclass(frozen=True)
class PosteriorConfig(_Config):
    """π* from enumeration, importance sampling, MCMC and the SVI and RL policies, on the top sequences."""

    task: str = _field("words_sentiment", "shipped task name or model file (must be enumerable)")
    beta: float | None = _field(None, "override the task's β")
    policy: str = _field("auto", "policy class: auto, tabular or copy")
    seed: int = _field(0, "seeds the training runs, the importance sampler and the chains")
    steps: int = _field(600, "optimizer steps of SVI and of RL")
    num_sequences: int = _field(256, "sequences (reward evaluations) per step")
    lr: float = _field(0.05, "Adam learning rate")
    is_samples: int = _field(100_000, "draws from the prior for importance sampling")
    mcmc_kernel: str = _field("imh", "MCMC kernel: imh (prior proposal) or gibbs")
    mcmc_chains: int = _field(4, "MCMC chains")
    mcmc_samples: int = _field(2500, "MCMC draws kept per chain")
    mcmc_warmup: int = _field(200, "MCMC warm-up steps per chain")
    top_k: int = _field(12, "sequences shown, the most probable under π*")

    QUICK: ClassVar[dict] = {"steps": 200, "is_samples": 20_000, "mcmc_samples": 500, "mcmc_warmup": 100}

    def __post_init__(self):
        _check_positive(self, "steps", "lr", "is_samples", "top_k", "mcmc_chains", "mcmc_samples")
        if self.mcmc_kernel not in ("imh", "gibbs"):
            raise ValueError(f"mcmc_kernel must be imh or gibbs, got {self.mcmc_kernel!r}")
        _check_at_least_two(self, "num_sequences", "is_samples")


def _frequencies(sequences: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Fraction of the rows of ``sequences`` ``(..., T)`` equal to each row of ``targets`` ``(K, T)``."""
    flat = sequences.reshape(-1, sequences.shape[-1]).cpu()
    return [float((flat == row).all(-1).double().mean()) for row in targets.cpu()]


def _tv_of_exact_draws(posterior: ExactPosterior, num_draws: int, seed: int) -> float:
    """Total variation to π* of the empirical distribution of ``num_draws`` exact draws of π*: the part of a
    sampler's empirical TV that is only the noise of having finitely many draws."""
    generator = torch.Generator().manual_seed(seed)
    probs = posterior.log_probs.exp()
    counts = torch.bincount(
        torch.multinomial(probs, num_draws, replacement=True, generator=generator), minlength=probs.numel()
    )
    return float(0.5 * (counts.double() / num_draws - probs).abs().sum())


def run_posterior(config: PosteriorConfig, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``top_sequences.csv``: the probability of each of the ``top_k`` most probable sequences of π*
    under π*, importance sampling (prior proposal, resampled), MCMC, and the trained SVI and RL policies
    (exact :math:`q(x)`); and ``summary.json`` with each one's total variation to π* over all sequences, and for
    the two samplers the total variation that as many exact draws of π* have (finite-sample noise alone)."""
    out = Path(out)
    task = _load(config.task, config.beta)
    posterior = exact_posterior(task)
    top, top_probs = posterior.top_k(config.top_k)
    labels = sequence_labels(task, top)
    template = task.make_policy(config.policy)  # a word-task table takes seconds to build: build it once
    timing, estimates, tv = {}, {"exact": top_probs.tolist()}, {"exact": 0.0}

    t0 = time.perf_counter()
    imp = importance_sample(task, None, num_samples=config.is_samples, chunk_size=8192, seed=config.seed)
    timing["is"] = time.perf_counter() - t0
    estimates["is"] = _frequencies(imp.resampled, top)
    tv["is"] = total_variation(imp.resampled, posterior.log_probs, task.vocab_size)
    tv_exact_draws = {"is": _tv_of_exact_draws(posterior, config.is_samples, config.seed)}
    t0 = time.perf_counter()
    chains = run_mcmc(
        task,
        config.mcmc_kernel,
        num_chains=config.mcmc_chains,
        num_samples=config.mcmc_samples,
        warmup=config.mcmc_warmup,
        seed=config.seed,
    )
    timing["mcmc"] = time.perf_counter() - t0
    estimates["mcmc"] = _frequencies(chains.draws, top)
    tv["mcmc"] = total_variation(chains.draws, posterior.log_probs, task.vocab_size)
    tv_exact_draws["mcmc"] = _tv_of_exact_draws(posterior, chains.num_chains * chains.num_draws, config.seed)
    for method in ("svi", "rl"):
        result = _fit(method, task, template, config, config.seed, progress=progress)
        timing[method] = result.wall_seconds
        with torch.no_grad():
            estimates[method] = result.policy.log_prob(top.to(task.prior.device)).double().exp().cpu().tolist()
        tv[method] = policy_metrics(task, result.policy, posterior).tv_to_posterior
    rows = []
    for method, probs in estimates.items():
        for rank, (label, p) in enumerate(zip(labels, probs)):
            rows.append({"method": method, "rank": rank, "sequence": label, "probability": p})
    write_csv(out / "top_sequences.csv", rows)
    return _write_summary(
        out,
        config,
        task,
        log_z=posterior.log_z,
        entropy=posterior.entropy,
        top_k_mass=float(top_probs.sum()),
        tv_to_posterior=tv,
        tv_of_as_many_exact_draws=tv_exact_draws,
        draws={
            "is": imp.num_samples,
            "is_ess": imp.ess,
            "mcmc": chains.num_chains * chains.num_draws,
            "mcmc_kernel": chains.kernel,
            "reward_evaluations_per_policy": config.steps * config.num_sequences,
        },
        seconds=timing,
    )


# ---------------------------------------------------------------------------------------------------------------
# k-hat of the policies over training


@dataclass(frozen=True)
class KhatConfig(_Config):
    """The PSIS k̂ of the SVI and RL policies as proposals for π*, logged over training on several tasks."""

    tasks: tuple[str, ...] = _field(("markov", "words_sentiment"), "shipped task names or model files (enumerable)")
    seeds: int = _field(3, "runs per method and task, seeds 0..seeds-1")
    steps: int = _field(600, "optimizer steps per run")
    num_sequences: int = _field(256, "sequences (reward evaluations) per step")
    lr: float = _field(0.05, "Adam learning rate")
    log_every: int = _field(25, "steps between k̂ evaluations")
    khat_samples: int = _field(4000, "draws from the policy per k̂ evaluation")

    QUICK: ClassVar[dict] = {"seeds": 2, "steps": 250, "khat_samples": 2000}

    def __post_init__(self):
        _check_positive(self, "seeds", "steps", "lr", "log_every", "khat_samples")
        if not self.tasks:
            raise ValueError("at least one task is needed")
        _check_at_least_two(self, "num_sequences")


def _khat_evaluator(task: Task, posterior: ExactPosterior, num_samples: int, seed: int):
    """``policy -> dict``: k̂, ESS and distinct draws of the policy as a proposal, and its exact divergences."""

    def evaluate(policy: AutoregressiveLM) -> dict:
        imp = importance_sample(task, policy, num_samples=num_samples, seed=seed)
        m = policy_metrics(task, policy, posterior)
        return {
            "khat": imp.khat,
            "ess": imp.ess,
            "distinct": int(torch.unique(imp.sequences, dim=0).shape[0]),
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_posterior_to_q": m.kl_posterior_to_q,
        }

    return evaluate


def run_khat(config: KhatConfig, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``khat.csv``: for every task, method, seed and logged step the Pareto :math:`\hat k`, the normalized
    ESS and the number of distinct sequences among ``khat_samples`` draws of the policy
    (:func:`~bayes_klrl.infer.importance.importance_sample`), with the exact :math:`\mathrm{KL}(q\|\pi^*)` and
    :math:`\mathrm{KL}(\pi^*\|q)`; and ``summary.json``."""
    out = Path(out)
    rows, tasks = [], {}
    for spec in config.tasks:
        task = _load(spec)
        posterior = exact_posterior(task)
        template = task.make_policy("auto")
        tasks[task.name] = {"beta": task.beta, "entropy": posterior.entropy, "num_sequences": task.num_sequences}
        for seed in range(config.seeds):
            evaluate = _khat_evaluator(task, posterior, config.khat_samples, seed=10_000 + seed)
            for method in ("svi", "rl"):
                result = _fit(method, task, template, config, seed, evaluate=evaluate, progress=progress)
                keep = ("step", "reward_evaluations", "khat", "ess", "distinct", "kl_q_to_posterior")
                keep += ("kl_posterior_to_q",)
                for h in result.history:
                    rows.append({"task": task.name, "method": method, "seed": seed, **{k: h[k] for k in keep}})
    write_csv(out / "khat.csv", rows)
    final = {}
    for name in tasks:
        for method in ("svi", "rl"):
            first = [r for r in rows if r["task"] == name and r["method"] == method and r["step"] == 0]
            last = [r for r in rows if r["task"] == name and r["method"] == method and r["step"] == config.steps]
            final[f"{name}/{method}"] = {
                "khat_start": [r["khat"] for r in first],
                "khat_end": [r["khat"] for r in last],
                "ess_end": [r["ess"] for r in last],
                "distinct_end": [r["distinct"] for r in last],
                "kl_q_to_posterior_end": [r["kl_q_to_posterior"] for r in last],
                "kl_posterior_to_q_end": [r["kl_posterior_to_q"] for r in last],
            }
    return _write_summary(out, config, tasks=tasks, final=final)


# ---------------------------------------------------------------------------------------------------------------
# MCMC diagnostics with ArviZ


@dataclass(frozen=True)
class MCMCConfig(_Config):
    """MCMC kernels on one task; their draws as ArviZ InferenceData (NetCDF) with R-hat and ESS."""

    task: str = _field("words_sentiment", "shipped task name or model file")
    beta: float | None = _field(None, "override the task's β")
    kernels: tuple[str, ...] = _field(("gibbs", "imh"), "MCMC kernels: gibbs and/or imh (prior proposal)")
    num_chains: int = _field(4, "chains per kernel")
    num_samples: int = _field(2000, "draws kept per chain")
    warmup: int = _field(200, "warm-up steps per chain")
    seed: int = _field(0, "seeds the kernels")

    QUICK: ClassVar[dict] = {"num_samples": 400, "warmup": 100}

    def __post_init__(self):
        _check_positive(self, "num_chains", "num_samples")
        _check_choices(self, "kernels", ("gibbs", "imh"))
        if self.num_chains < 2:
            raise ValueError("num_chains must be >= 2 (R-hat compares chains)")


#: scalar summaries of each draw whose R-hat and ESS are reported
MCMC_SUMMARIES = ("log_target", "log_prior", "reward")


def run_mcmc_diagnostics(config: MCMCConfig, out: str | Path, *, progress: bool = False) -> dict:
    r"""Run each kernel; write ``mcmc_<kernel>.nc`` (InferenceData with ``log_target`` :math:`= \log\pi_0 + r/\beta`
    added), ``diagnostics.csv`` (R-hat, bulk and tail ESS of ``log_target``, ``log_prior`` and ``reward``, the
    acceptance rate, the TV of the draws to π* when enumerable) and ``summary.json``."""
    import arviz as az

    out = Path(out)
    task = _load(config.task, config.beta)
    posterior = exact_posterior(task) if task.is_enumerable() else None
    rows = []
    for kernel in config.kernels:
        t0 = time.perf_counter()
        result = run_mcmc(
            task,
            kernel,
            num_chains=config.num_chains,
            num_samples=config.num_samples,
            warmup=config.warmup,
            seed=config.seed,
        )
        seconds = time.perf_counter() - t0
        idata = mcmc_inference_data(task, result)
        post = idata.posterior
        # the unnormalized log posterior log π0 + r/β of each draw (Stan's lp__): a continuous scalar summary
        idata.posterior["log_target"] = post["log_prior"] + post["reward_over_beta"]
        path = out / f"mcmc_{kernel}.nc"
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_netcdf(idata, path)
        with np.errstate(invalid="ignore", divide="ignore"):
            table = az.summary(idata, var_names=list(MCMC_SUMMARIES), kind="diagnostics", round_to="none")
        tv = None if posterior is None else total_variation(result.draws, posterior.log_probs, task.vocab_size)
        for var in MCMC_SUMMARIES:
            rows.append(
                {
                    "kernel": kernel,
                    "variable": var,
                    "r_hat": float(table.loc[var, "r_hat"]),
                    "ess_bulk": float(table.loc[var, "ess_bulk"]),
                    "ess_tail": float(table.loc[var, "ess_tail"]),
                    "draws": result.num_chains * result.num_draws,
                    "acceptance_rate": float(result.acceptance_rate.mean()),
                    "expected_reward": result.expected_reward,
                    "tv_to_posterior": tv,
                    "seconds": seconds,
                }
            )
    write_csv(out / "diagnostics.csv", rows)
    return _write_summary(
        out,
        config,
        task,
        exact_expected_reward=None if posterior is None else posterior.expected_reward,
        kernels=rows,
    )


def _save_netcdf(idata, path: Path) -> None:
    try:
        from .diagnostics import save_netcdf
    except ImportError:
        from .storage import atomic_write

        atomic_write(path, lambda tmp: idata.to_netcdf(tmp))
        return
    save_netcdf(idata, path)


# ---------------------------------------------------------------------------------------------------------------
# the registry and the command line


@dataclass(frozen=True)
class Experiment:
    """One analysis: its config class, the run writing its data, the plot reading it, and its script."""

    name: str
    config: type
    run: Callable[..., dict]
    plot: str  # name of the function in bayes_klrl.plots
    script: str  # the analysis/ script running it alone
    description: str


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "learning_curves",
            LearningCurvesConfig,
            run_learning_curves,
            "plot_learning_curves",
            "analysis/learning_curves.py",
            "SVI vs RL: ELBO = J/beta, KL against reward evaluations and wall time, gradient variance",
        ),
        Experiment(
            "beta_sweep",
            BetaSweepConfig,
            run_beta_sweep,
            "plot_beta_sweep",
            "analysis/beta_sweep.py",
            "the posterior from large to tiny beta; RL without the KL term collapses",
        ),
        Experiment(
            "forward_reverse",
            ForwardReverseConfig,
            run_forward_reverse,
            "plot_forward_reverse",
            "analysis/forward_reverse.py",
            "reverse KL (SVI, RL) against forward KL (DPG) on a two-mode task",
        ),
        Experiment(
            "posterior",
            PosteriorConfig,
            run_posterior,
            "plot_posterior",
            "analysis/posterior.py",
            "exact vs importance sampling vs MCMC vs SVI vs RL on the top sequences",
        ),
        Experiment(
            "khat",
            KhatConfig,
            run_khat,
            "plot_khat",
            "analysis/khat.py",
            "PSIS k-hat of the SVI and RL policies over training",
        ),
        Experiment(
            "mcmc",
            MCMCConfig,
            run_mcmc_diagnostics,
            "plot_mcmc",
            "analysis/mcmc_diagnostics.py",
            "ArviZ trace, rank and ESS plots of the MCMC kernels",
        ),
    )
}


def _parse_tuple(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--option`` per config field (help from the field's metadata), plus ``--quick``.

    Options left out keep the full default, or the quick preset's value with ``--quick``.
    """
    full = config_class()
    group = parser.add_argument_group(f"{config_class.__name__} (defaults: full run; --quick: the quick preset)")
    for f in dataclasses.fields(config_class):
        default = getattr(full, f.name)
        if isinstance(default, tuple):
            kind, shown = _parse_tuple, ",".join(default)
        elif isinstance(default, bool):
            raise TypeError("boolean config fields are not supported")
        elif isinstance(default, int):
            kind, shown = int, default
        elif isinstance(default, float) or default is None:
            kind, shown = _optional_float, default
        else:
            kind, shown = str, default
        quick = config_class.QUICK.get(f.name)
        extra = f"; quick: {quick}" if quick is not None else ""
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=kind,
            default=None,
            help=f"{f.metadata.get('help', '')} (default: {shown}{extra})",
        )


def config_from_args(config_class: type, args: argparse.Namespace, *, quick: bool | None = None):
    """The config: full defaults, or the quick preset with ``--quick``, then the options given."""
    quick = getattr(args, "quick", False) if quick is None else quick
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_class)
        if getattr(args, f.name, None) is not None
    }
    return config_class.quick(**given) if quick else config_class(**given)


def run_experiment(name: str, config, out: str | Path, *, progress: bool = False, plot_only: bool = False) -> dict:
    """Run experiment ``name`` into ``out``, then draw its figures from the saved data (``plot_only``: only draw).

    :returns: ``{"figures": [...], "data": [...], "seconds": ...}`` with paths relative to ``out``.

    Example::

        >>> run_experiment("beta_sweep", BetaSweepConfig.quick(seeds=1), "runs/report/beta_sweep")
    """
    import matplotlib

    matplotlib.use("Agg")
    from . import plots

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[name]
    out = Path(out)
    t0 = time.perf_counter()
    if not plot_only:
        experiment.run(config, out, progress=progress)
    figures = getattr(plots, experiment.plot)(out)
    seconds = time.perf_counter() - t0
    data = sorted(p.name for p in out.iterdir() if p.suffix in (".csv", ".json", ".nc"))
    return {"figures": [p.name for p in figures], "data": data, "seconds": seconds}


def script_main(name: str, doc: str, argv: list[str] | None = None) -> int:
    """The command line of an ``analysis/`` script running experiment ``name`` alone: ``--out`` (default
    ``runs/report/<name>``), ``--quick``, ``--plot-only``, ``--no-progress`` and one option per config field;
    the first paragraph of the script's docstring ``doc`` describes it. Prints the paths of the figures.

    Example (the whole of ``analysis/beta_sweep.py`` below its docstring)::

        def main(argv=None):
            return script_main("beta_sweep", __doc__, argv)
    """
    experiment = EXPERIMENTS[name]
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    default_out = Path("runs/report") / name
    parser.add_argument("--out", type=Path, default=default_out, help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(parser, experiment.config)
    args = parser.parse_args(argv)
    config = config_from_args(experiment.config, args)
    # train and measure, writing the data files (unless --plot-only); then draw from the saved data files only
    entry = run_experiment(name, config, args.out, progress=not args.no_progress, plot_only=args.plot_only)
    for figure in entry["figures"]:
        print(args.out / figure)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` command's options to its subparser."""
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="output folder (%(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="small settings: every figure in a few minutes on 2 CPU cores"
    )
    parser.add_argument(
        "--only",
        type=_parse_tuple,
        default=tuple(EXPERIMENTS),
        help=f"comma-separated experiments to run, from {','.join(EXPERIMENTS)} (default: all)",
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="only redraw the figures from the data already in DIR/<experiment>/"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def command(args: argparse.Namespace) -> int:
    """Run the selected experiments into ``DIR/<name>/`` and write ``DIR/report.json`` listing the figures."""
    unknown = [n for n in args.only if n not in EXPERIMENTS]
    if unknown or not args.only:
        raise ValueError(
            f"unknown experiment(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(EXPERIMENTS)}"
        )
    out = Path(args.out)
    index_path = out / "report.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    for name in args.only:
        experiment = EXPERIMENTS[name]
        config = experiment.config.quick() if args.quick else experiment.config()
        print(f"[{name}] {experiment.description}", flush=True)
        entry = run_experiment(
            name, config, out / name, progress=not args.no_progress, plot_only=getattr(args, "plot_only", False)
        )
        if getattr(args, "plot_only", False) and name in index:  # keep the record of the run that made the data
            index[name]["figures"] = entry["figures"]
            entry = index[name]
        quick = " --quick" if args.quick else ""
        entry["command"] = f"bayes-klrl report{quick} --only {name} --out {out}"
        entry["script"] = f"python {experiment.script}{quick} --out {out / name}"
        entry["quick"] = bool(args.quick)
        index[name] = entry
        write_json(index_path, index)
        for figure in entry["figures"]:
            print(f"  {out / name / figure}")
        print(f"  ({entry['seconds']:.1f} s)", flush=True)
    return 0
