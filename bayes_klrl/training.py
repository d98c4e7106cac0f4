r"""The training loop shared by SVI and the RL trainers: seeding, logging, progress, checkpoints.

A :class:`Trainer` owns a policy and an optimizer and knows how to take one step. The optimizer is the same
machinery for every trainer, SVI included (:class:`OptimizerSettings`): Adam or AdamW, weight decay, a
learning-rate schedule (constant, linear decay or cosine, after an optional linear warm-up) and gradient-norm
clipping, so SVI and RL take the same steps under the same settings. :func:`fit` runs a trainer for
``steps`` steps from an explicit ``seed``, logs every ``log_every`` steps (optionally calling
``evaluate(policy)`` for exact or Monte Carlo metrics, outside the timed region), and writes a checkpoint
(policy, optimizer and RNG state) every ``checkpoint_every`` steps and on Ctrl-C. ``resume=True``
continues from the checkpoint to the same final parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import random
import signal
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .lm import AutoregressiveLM
from .storage import save_torch
from .task import Task

__all__ = [
    "CHECKPOINT_NAME",
    "FitResult",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "OptimizerSettings",
    "Trainer",
    "fit",
    "load_trainable_state",
    "trainable_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "linear", "cosine")


def _check_number(value, name: str, *, low: float, strict: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class OptimizerSettings:
    r"""How a trainer turns gradients into steps: the same for every trainer (SVI, RL, PPO, DPG, the recipes).

    The learning rate of step :math:`s = 0, 1, \ldots` of a run of :math:`H` steps is :math:`\eta\,\lambda(s)`, with
    :math:`\lambda(s) = s/W` during a warm-up of :math:`W` steps and after it

    - ``constant``: :math:`\lambda = 1`;
    - ``linear``: :math:`\lambda(s) = (H - s)/(H - W)`, to zero at the end of the run;
    - ``cosine``: :math:`\lambda(s) = \tfrac12\big(1 + \cos(\pi\,(s - W)/(H - W))\big)`

    (the conventions of Hugging Face's schedulers, so runs compare step for step with TRL).

    :param float lr: the peak learning rate :math:`\eta`.
    :param str optimizer: ``"adam"`` (weight decay added to the gradient, L2) or ``"adamw"`` (decoupled weight
        decay, Loshchilov & Hutter 2019).
    :param float weight_decay: the decay coefficient (0: none).
    :param str lr_schedule: ``"constant"``, ``"linear"`` or ``"cosine"``.
    :param int warmup_steps: :math:`W`, steps of linear warm-up from 0.

    Steps are optimizer steps: one per trainer step, unless a trainer reuses a batch for several updates (PPO's
    and the recipes' epochs x minibatches).
    :param max_grad_norm: clip the gradient's global L2 norm to this value before each step (``None``: no
        clipping).
    :param schedule_steps: :math:`H`; ``None`` takes the run's ``steps`` (:func:`fit` sets it).

    Example::

        >>> settings = OptimizerSettings(lr=1e-3, lr_schedule="linear", warmup_steps=10)
        >>> [round(settings.lr_factor(s, total_steps=110), 2) for s in (0, 5, 10, 60, 109)]
        [0.0, 0.5, 1.0, 0.5, 0.01]
    """

    lr: float = 0.02
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    schedule_steps: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "lr", _check_number(self.lr, "lr", low=0, strict=True))
        object.__setattr__(self, "weight_decay", _check_number(self.weight_decay, "weight_decay", low=0, strict=False))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.max_grad_norm is not None:
            object.__setattr__(
                self, "max_grad_norm", _check_number(self.max_grad_norm, "max_grad_norm", low=0, strict=True)
            )
        if self.schedule_steps is not None and (
            isinstance(self.schedule_steps, bool) or not isinstance(self.schedule_steps, int) or self.schedule_steps < 1
        ):
            raise ValueError(f"schedule_steps must be an integer >= 1, got {self.schedule_steps!r}")

    @property
    def needs_horizon(self) -> bool:
        """Whether the schedule depends on the run's length (a decay)."""
        return self.lr_schedule != "constant"

    def horizon(self, total_steps: int | None) -> int | None:
        """The steps a decaying schedule decays over (``schedule_steps``, else ``total_steps``); ``None`` for the
        constant schedule. A ValueError when a decay has no length or none left after the warm-up."""
        if not self.needs_horizon:
            return None
        horizon = self.schedule_steps or total_steps
        if horizon is None:
            raise ValueError(f"the {self.lr_schedule} schedule needs the run's length (schedule_steps)")
        if horizon <= self.warmup_steps:
            raise ValueError(
                f"a {self.lr_schedule} schedule over {horizon} steps leaves none after {self.warmup_steps} warm-up"
            )
        return horizon

    def lr_factor(self, step: int, total_steps: int | None = None) -> float:
        r""":math:`\lambda(s)`, the multiplier of ``lr`` at 0-based ``step`` of a run of ``total_steps`` steps."""
        warmup = self.warmup_steps
        if step < warmup:
            return step / warmup
        if self.lr_schedule == "constant":
            return 1.0
        horizon = self.horizon(total_steps)
        progress = min(1.0, (step - warmup) / (horizon - warmup))
        if self.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def make_optimizer(self, parameters) -> torch.optim.Optimizer:
        """The torch optimizer over ``parameters`` at the peak learning rate."""
        cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return cls(list(parameters), lr=self.lr, weight_decay=self.weight_decay)

    def as_dict(self) -> dict:
        """The settings that define a run (for checkpoints and rows); ``schedule_steps`` only when it is set."""
        out = dataclasses.asdict(self)
        if out["schedule_steps"] is None:
            del out["schedule_steps"]
        return out


@dataclass(frozen=True)
class FitResult:
    """What a training run produced.

    :ivar method: the trainer's name (``"svi"``, ``"rl"``, ``"ppo"`` …).
    :ivar policy: the trained policy.
    :ivar history: one dict per logged step (``step``, ``reward_evaluations``, ``wall_seconds`` and the
        trainer's own statistics, plus whatever ``evaluate`` returned).
    :ivar reward_evaluations: number of calls of the reward on single sequences.
    :ivar wall_seconds: training time, evaluation excluded.
    """

    method: str
    policy: AutoregressiveLM
    history: tuple[dict, ...]
    steps: int
    reward_evaluations: int
    wall_seconds: float


class Trainer(ABC):
    r"""One optimizer over one policy; :meth:`step` draws ``num_sequences`` sequences and updates once.

    Subclasses implement :meth:`step` only and call :meth:`update` with each loss. The base checks the common
    arguments, owns the optimizer, its learning-rate schedule and gradient clipping (:class:`OptimizerSettings`,
    the same for every trainer, SVI included) and saves and restores everything a resume needs with
    :meth:`state_dict` / :meth:`load_state_dict`; a trainer with state of its own (PPO's adaptive β, DPG's
    running :math:`\hat Z`) extends those two.

    :param task: the task (prior, reward, β, length).
    :param policy: the trainable policy, e.g. ``task.make_policy()``.
    :param int num_sequences: sequences sampled (and rewards evaluated) per step.
    :param float lr: the (peak) learning rate.
    :param optimizer_options: the other fields of :class:`OptimizerSettings` (``optimizer``, ``weight_decay``,
        ``lr_schedule``, ``warmup_steps``, ``max_grad_norm``, ``schedule_steps``).
    """

    method: str = "trainer"

    def __init__(
        self, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float = 0.02, **optimizer_options
    ):
        unknown = sorted(set(optimizer_options) - {f.name for f in dataclasses.fields(OptimizerSettings)})
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected option(s) {', '.join(unknown)}")
        self.optim = OptimizerSettings(lr=lr, **optimizer_options)
        if int(num_sequences) < 2:
            raise ValueError(f"num_sequences must be >= 2 (the leave-one-out baseline needs two), got {num_sequences}")
        if policy.vocab_size != task.vocab_size:
            raise ValueError(f"policy vocabulary {policy.vocab_size} differs from the task's {task.vocab_size}")
        self.task = task
        self.policy = policy
        self.num_sequences = int(num_sequences)
        self.lr = self.optim.lr
        self.parameters = [p for p in self.policy.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the policy has no trainable parameters (every requires_grad is False)")
        self.rank, self.world_size = world()
        if self.num_sequences % self.world_size:
            raise ValueError(
                f"num_sequences {self.num_sequences} does not split over {self.world_size} data-parallel ranks"
            )
        self.identical_sampling = False  # data-parallel: True makes every rank draw the whole batch (tests)
        if self.world_size > 1:  # every rank starts from rank 0's weights
            with torch.no_grad():
                for p in self.parameters:
                    torch.distributed.broadcast(p, src=0)
        self.optimizer = self.make_optimizer()
        self.steps_taken = 0  # optimizer steps so far: the schedule's clock
        self.total_steps: int | None = None  # the run's length, for a decaying schedule (set by fit)
        self.last_grad_norm: float | None = None

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer (hook): :meth:`OptimizerSettings.make_optimizer` over the trainable parameters."""
        return self.optim.make_optimizer(self.parameters)

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per :meth:`step` (more than one when a batch is reused: PPO's epochs x minibatches).
        The schedule's clock counts optimizer steps, as Hugging Face's schedulers do."""
        return 1

    def set_total_steps(self, steps: int) -> None:
        """Tell a decaying schedule how long the run is, in trainer steps (:func:`fit` does, before the first)."""
        self.total_steps = int(steps) * self.updates_per_step
        self.optim.horizon(self.total_steps)  # a decay with no steps left after the warm-up is refused before any

    @property
    def current_lr(self) -> float:
        """The learning rate the next optimizer step takes."""
        return self.optim.lr * self.optim.lr_factor(self.steps_taken, self.total_steps)

    # -- data parallelism (torch.distributed): identity on one process -----------------------------------------
    @property
    def local_num_sequences(self) -> int:
        """Sequences this rank draws per step: ``num_sequences / world_size``."""
        return self.num_sequences // self.world_size

    def sample_batch(self) -> torch.Tensor:
        """This rank's share ``(num_sequences / world_size, T)`` of the step's batch, from its own random stream
        (with ``identical_sampling``, every rank draws the whole batch from the same stream and keeps its rows,
        so a data-parallel run repeats a one-process run exactly)."""
        length = self.task.length
        if self.world_size == 1:
            return self.policy.sample(self.num_sequences, length)
        if self.identical_sampling:
            return self.shard(self.policy.sample(self.num_sequences, length))
        return self.policy.sample(self.local_num_sequences, length)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """The whole batch's ``values`` from every rank's share (rank order, along dim 0); what a statistic over
        the batch needs (leave-one-out means, group statistics)."""
        if self.world_size == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def shard(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-batch tensor (the inverse of :meth:`gather`)."""
        if self.world_size == 1:
            return values
        n = values.shape[0] // self.world_size
        return values[self.rank * n : (self.rank + 1) * n]

    def per_rank(self, value) -> list:
        """``[value]`` on one process; under data parallelism every rank's ``value`` in rank order (a collective:
        every rank calls it), e.g. state each rank holds apart that rank 0's checkpoint must carry."""
        if self.world_size == 1:
            return [value]
        every = [None] * self.world_size
        torch.distributed.all_gather_object(every, value)
        return every

    def kept_state(self, kept) -> list:
        """Kept replay entries (tuples of tensors) as a checkpoint value: on CPU, one list per rank
        (:meth:`per_rank`, a collective)."""
        return self.per_rank([[t.cpu() for t in entry] for entry in kept])

    def restore_kept(self, saved, kept) -> None:
        """Refill the deque ``kept`` with this rank's entries of a :meth:`kept_state` value (``None``: none), on the
        policy's device; a value from another number of ranks is refused."""
        per_rank = saved or [[]] * self.world_size
        if len(per_rank) != self.world_size:
            raise ValueError(f"its replay batches are from {len(per_rank)} rank(s), this run has {self.world_size}")
        kept.clear()
        kept.extend(tuple(t.to(self.policy.device) for t in entry) for entry in per_rank[self.rank])

    def reduce_stats(self, stats: dict) -> dict:
        """Float statistics averaged over the ranks (each is a mean over its equal share), so every rank logs
        and stops alike."""
        if self.world_size == 1:
            return stats
        keys = [k for k, v in stats.items() if isinstance(v, float)]
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(values)
        return {**stats, **dict(zip(keys, (values / self.world_size).tolist()))}

    def update(self, loss: torch.Tensor | None = None) -> None:
        """One optimizer step on ``loss`` (gradients zeroed first); ``None``: on the gradients already in
        ``.grad`` (SVI's ELBO computes them itself). Applies the schedule's learning rate and clips the
        gradient norm when ``max_grad_norm`` is set (the norm before clipping is kept in ``last_grad_norm``)."""
        if loss is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if self.world_size > 1:  # each rank's loss is a mean over its share: average the gradients
            for p in self.parameters:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world_size
        if self.optim.max_grad_norm is not None:
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.optim.max_grad_norm))
        lr = self.current_lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.steps_taken += 1

    @abstractmethod
    def step(self) -> dict[str, float]:
        """One update; returns scalar statistics of the batch."""

    def state_dict(self) -> dict:
        """Everything a resume needs: the policy's trainable weights, the optimizer's state and the schedule's
        clock (extend it with a trainer's own state). :func:`fit` calls it on every data-parallel rank, so an
        extension may gather state the ranks hold apart; rank 0 writes the result."""
        return {
            "policy": trainable_state(self.policy),
            "optimizer": self.optimizer.state_dict(),
            "steps_taken": self.steps_taken,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a checkpoint that does not fit the policy is refused with a ValueError, and
        so is a decaying schedule resumed over a different run length (its learning rates would change)."""
        saved_total = state.get("total_steps")
        if self.optim.needs_horizon and self.optim.schedule_steps is None and saved_total != self.total_steps:
            raise ValueError(
                f"its {self.optim.lr_schedule} schedule decays over {saved_total} steps, this run has "
                f"{self.total_steps}; resume with --steps {saved_total}"
            )
        load_trainable_state(self.policy, state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_taken = int(state.get("steps_taken", 0))

    def reward_evaluations_per_step(self) -> int:
        return self.num_sequences


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the torch.distributed process group, ``(0, 1)`` when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``...): backend nccl with CUDA, else gloo. Nothing happens without ``WORLD_SIZE`` > 1.
    Returns ``(rank, world_size)``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return world()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of data-parallel rank ``rank`` of a run seeded ``seed`` (rank 0 keeps ``seed``)."""
    if rank == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _takes_two_arguments(function) -> bool:
    """Whether ``function`` can be called with two positional arguments (``evaluate(policy, step)``)."""
    import inspect

    try:
        inspect.signature(function).bind(None, None)
    except (TypeError, ValueError):  # one argument, or no signature (a builtin): call it the documented way
        return False
    return True


def seed_everything(seed: int) -> None:
    """Seed the global RNGs torch (and so Pyro) and ``random`` draw from."""
    random.seed(seed)
    torch.manual_seed(seed)


def trainable_state(policy: AutoregressiveLM) -> dict[str, torch.Tensor]:
    """The policy's trainable parameters only (a LoRA adapter, not the frozen base weights it shares)."""
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}


def _load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`fit`, read without running code from the file (``weights_only``)."""
    try:
        with warnings.catch_warnings():  # a foreign file may trigger torch's own notes before it is refused
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty, not a torch file, or pickled objects beyond plain data
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it or use a new --out"
        ) from exc
    needed = ("method", "step", "trainer", "rng", "python_rng", "wall_seconds", "history")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise ValueError(f"checkpoint {path} is not a checkpoint of this version of bayes_klrl; use a new --out")
    return state


def _restore_python_rng(state) -> tuple:
    version, internal, gauss = state  # weights_only loading returns the tuple's inner tuple as a list
    return version, tuple(internal), gauss


def load_trainable_state(policy: AutoregressiveLM, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trainable_state` into ``policy``; a ValueError names what does not fit."""
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    try:
        result = policy.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # e.g. a size mismatch after a change of task length or vocabulary
        raise ValueError(str(exc).strip().splitlines()[-1].strip()) from exc
    missing = sorted(trainable - set(state))
    if result.unexpected_keys or missing:
        raise ValueError(f"unknown keys {result.unexpected_keys[:3]}, missing {missing[:3]}")


class _DeferredInterrupt:
    """While active (in the main thread), the first Ctrl-C only sets ``requested``: the step under way finishes and
    the caller checkpoints at the step boundary, so the random stream and the parameters in the checkpoint are
    exactly those an uninterrupted run has there. A second Ctrl-C interrupts at once, as usual."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is (
            signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def fit(
    trainer: Trainer,
    *,
    steps: int,
    seed: int,
    log_every: int = 50,
    evaluate: Callable[[AutoregressiveLM], dict] | None = None,
    stop: Callable[[dict], bool] | None = None,
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    settings: dict | None = None,
) -> FitResult:
    """Run ``trainer`` for ``steps`` steps (fewer if ``stop`` says so).

    Data parallel: when a torch.distributed process group is up (``torchrun``; :func:`init_distributed_from_env`),
    every rank runs ``fit`` with the same arguments; each draws its share of the batch from its own stream
    (:func:`rank_seed`), gradients are averaged over the ranks, statistics over the whole batch are gathered by
    the trainer, and only rank 0 writes the checkpoint (with every rank's random state, so resume stays exact).

    :param int seed: seeds the global RNGs before the first step.
    :param evaluate: ``policy -> dict`` (or ``(policy, step) -> dict``) of extra figures logged at step 0, every
        ``log_every`` steps and at the end; it runs outside the timed region and does not change the training's
        random stream.
    :param stop: ``row -> bool``, called with each logged row after step 0 (``step``, ``reward_evaluations``, the
        trainer's statistics and ``evaluate``'s figures); training ends at the first row for which it is true.
    :param checkpoint_dir: where ``checkpoint.pt`` goes; with ``checkpoint_every > 0`` it is written every
        that many steps, and always at the end and on Ctrl-C.
    :param bool resume: continue from ``checkpoint_dir/checkpoint.pt`` (its step, trainer state, RNG and history).
    :param settings: plain values that define the run (learning rate, batch size, β, …), stored in the
        checkpoint; resuming with different values is refused, so a run never mixes two configurations.
        ``steps`` may grow: a finished run can be extended; a checkpoint past ``steps`` is refused.

    Example::

        >>> result = fit(SVITrainer(task, task.make_policy(), num_sequences=256), steps=100, seed=0)
        >>> result.reward_evaluations
        25600
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise ValueError(f"checkpoint_dir {checkpoint_dir} is a file, not a folder")
    if int(log_every) < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if int(checkpoint_every) < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict] = []
    start_step, wall = 0, 0.0
    distributed = trainer.world_size > 1
    seed_everything(seed if trainer.identical_sampling else rank_seed(seed, trainer.rank))
    trainer.set_total_steps(steps)
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = _load_checkpoint(ckpt_path)
        if state["method"] != trainer.method:
            raise ValueError(f"checkpoint {ckpt_path} is from method {state['method']!r}, not {trainer.method!r}")
        saved = state.get("settings") or {}
        now = dict(settings or {})
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if changed:
            was = ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
            has = ", ".join(f"{k}={now.get(k)!r}" for k in changed)
            raise ValueError(
                f"checkpoint {ckpt_path} was written with {was}; this run has {has}: resume with the same "
                "settings, or write to a new output folder"
            )
        if state["step"] > steps:
            raise ValueError(
                f"checkpoint {ckpt_path} is at step {state['step']}, past this run's {steps} steps: "
                f"resume with --steps {state['step']} or more"
            )
        saved_ranks = len(state.get("rank_rngs") or [None])
        if saved_ranks != trainer.world_size:  # before the trainer's state, which may hold one part per rank
            raise ValueError(
                f"checkpoint {ckpt_path} was written by {saved_ranks} data-parallel rank(s), this run has "
                f"{trainer.world_size}: resume with as many"
            )
        try:
            trainer.load_state_dict(state["trainer"])
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ValueError(f"checkpoint {ckpt_path} does not fit this run: {str(exc).splitlines()[0]}") from exc
        rng = state["rng"] if not distributed else state["rank_rngs"][trainer.rank]
        torch.set_rng_state(rng)
        random.setstate(_restore_python_rng(state["python_rng"]))
        start_step, wall, history = state["step"], state["wall_seconds"], list(state["history"])

    wants_step = evaluate is not None and _takes_two_arguments(evaluate)

    def log(step: int, stats: dict) -> dict:
        row = {"step": step, "reward_evaluations": step * trainer.reward_evaluations_per_step(), "wall_seconds": wall}
        row.update(stats)
        if evaluate is not None:
            rng = torch.get_rng_state()  # evaluation must not change the training stream
            row.update(evaluate(trainer.policy, step) if wants_step else evaluate(trainer.policy))
            torch.set_rng_state(rng)
        history.append(row)
        return row

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        rank_rngs = None
        trainer_state = trainer.state_dict()  # on every rank: a trainer may gather its ranks' state
        if distributed:  # every rank's stream, so each resumes its own; rank 0 writes
            rank_rngs = [None] * trainer.world_size
            torch.distributed.all_gather_object(rank_rngs, torch.get_rng_state())
            if trainer.rank != 0:
                return
        save_torch(
            {
                "method": trainer.method,
                "settings": dict(settings or {}),
                "step": step,
                "trainer": trainer_state,
                "rng": torch.get_rng_state(),
                "rank_rngs": rank_rngs,
                "python_rng": random.getstate(),
                "wall_seconds": wall,
                "history": history,
            },
            ckpt_path,
        )

    if start_step == 0:
        log(0, {})
    step = start_step
    bar = tqdm(total=steps, initial=start_step, desc=trainer.method, disable=None if progress else True, leave=False)
    # (disable=None: bars only on a terminal, never as megabytes of carriage returns in a log file)
    interrupted = _DeferredInterrupt()
    try:
        with interrupted:
            while step < steps and not interrupted.requested:
                t0 = time.perf_counter()
                stats = trainer.reduce_stats(trainer.step())
                wall += time.perf_counter() - t0
                step += 1
                bar.update(1)
                if step % log_every == 0 or step == steps:
                    row = log(step, stats)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items() if isinstance(v, float)}, refresh=False)
                    if stop is not None and stop(row):
                        break
                if checkpoint_every and step % checkpoint_every == 0:
                    save(step)
        if interrupted.requested:  # Ctrl-C during a step: that step finished, so the checkpoint resumes exactly
            save(step)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        if not interrupted.requested:  # interrupted outside the deferral (a worker thread, a second Ctrl-C)
            save(step)
        raise
    finally:
        bar.close()
    save(step)
    return FitResult(
        method=trainer.method,
        policy=trainer.policy,
        history=tuple(history),
        steps=step,
        reward_evaluations=step * trainer.reward_evaluations_per_step(),
        wall_seconds=wall,
    )
