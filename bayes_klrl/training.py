r"""The training loop shared by SVI and the RL trainers: seeding, logging, progress, checkpoints.

A :class:`Trainer` owns a policy and an optimizer and knows how to take one step; :func:`fit` runs it for
``steps`` steps from an explicit ``seed``, logs every ``log_every`` steps (optionally calling
``evaluate(policy)`` for exact or Monte Carlo metrics, outside the timed region), and writes a checkpoint
(policy, optimizer and RNG state) every ``checkpoint_every`` steps and on Ctrl-C. ``resume=True``
continues from the checkpoint to the same final parameters as an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .lm import AutoregressiveLM
from .storage import save_torch
from .task import Task

__all__ = ["Trainer", "FitResult", "fit", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


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
    """One optimizer over one policy; :meth:`step` draws ``num_sequences`` sequences and updates once."""

    method: str = "trainer"

    def __init__(self, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float | None = None):
        if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if int(num_sequences) < 2:
            raise ValueError(f"num_sequences must be >= 2 (the leave-one-out baseline needs two), got {num_sequences}")
        if policy.vocab_size != task.vocab_size:
            raise ValueError(f"policy vocabulary {policy.vocab_size} differs from the task's {task.vocab_size}")
        self.task = task
        self.policy = policy
        self.num_sequences = int(num_sequences)

    @abstractmethod
    def step(self) -> dict[str, float]:
        """One update; returns scalar statistics of the batch."""

    @abstractmethod
    def optimizer_state(self) -> dict: ...

    @abstractmethod
    def load_optimizer_state(self, state: dict) -> None: ...

    def reward_evaluations_per_step(self) -> int:
        return self.num_sequences


def seed_everything(seed: int) -> None:
    """Seed the global RNGs torch (and so Pyro) and ``random`` draw from."""
    random.seed(seed)
    torch.manual_seed(seed)


def trainable_state(policy: AutoregressiveLM) -> dict[str, torch.Tensor]:
    """The policy's trainable parameters only (a LoRA adapter, not the frozen base weights it shares)."""
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}


def fit(
    trainer: Trainer,
    *,
    steps: int,
    seed: int,
    log_every: int = 50,
    evaluate: Callable[[AutoregressiveLM], dict] | None = None,
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    settings: dict | None = None,
) -> FitResult:
    """Run ``trainer`` for ``steps`` steps.

    :param int seed: seeds the global RNGs before the first step.
    :param evaluate: ``policy -> dict`` of extra figures logged at step 0, every ``log_every`` steps and at the end.
    :param checkpoint_dir: where ``checkpoint.pt`` goes; with ``checkpoint_every > 0`` it is written every
        that many steps, and always at the end and on Ctrl-C.
    :param bool resume: continue from ``checkpoint_dir/checkpoint.pt`` (its step, optimizer, RNG and history).
    :param settings: plain values that define the run (learning rate, batch size, β, …), stored in the
        checkpoint; resuming with different values is refused, so a run never mixes two configurations.
        ``steps`` may differ: a finished run can be extended.

    Example::

        >>> result = fit(SVITrainer(task, task.make_policy(), num_sequences=256), steps=100, seed=0)
        >>> result.reward_evaluations
        25600
    """
    if int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if int(log_every) < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict] = []
    start_step, wall = 0, 0.0
    seed_everything(seed)
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, weights_only=False)
        if state["method"] != trainer.method:
            raise ValueError(f"checkpoint {ckpt_path} is from method {state['method']!r}, not {trainer.method!r}")
        saved = state.get("settings") or {}
        changed = sorted(k for k in set(saved) & set(settings or {}) if saved[k] != settings[k])
        if changed:
            was = ", ".join(f"{k}={saved[k]!r}" for k in changed)
            now = ", ".join(f"{k}={settings[k]!r}" for k in changed)
            raise ValueError(
                f"checkpoint {ckpt_path} was written with {was}; this run has {now}: resume with the same "
                "settings, or write to a new output folder"
            )
        unexpected = trainer.policy.load_state_dict(state["policy"], strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"checkpoint {ckpt_path} does not fit this policy (unknown keys {unexpected[:3]})")
        trainer.load_optimizer_state(state["optimizer"])
        torch.set_rng_state(state["rng"])
        random.setstate(state["python_rng"])
        start_step, wall, history = state["step"], state["wall_seconds"], list(state["history"])

    def log(step: int, stats: dict) -> None:
        row = {"step": step, "reward_evaluations": step * trainer.reward_evaluations_per_step(), "wall_seconds": wall}
        row.update(stats)
        if evaluate is not None:
            rng = torch.get_rng_state()  # evaluation must not change the training stream
            row.update(evaluate(trainer.policy))
            torch.set_rng_state(rng)
        history.append(row)

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        save_torch(
            {
                "method": trainer.method,
                "settings": dict(settings or {}),
                "step": step,
                "policy": trainable_state(trainer.policy),
                "optimizer": trainer.optimizer_state(),
                "rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "wall_seconds": wall,
                "history": history,
            },
            ckpt_path,
        )

    if start_step == 0:
        log(0, {})
    step = start_step
    bar = tqdm(total=steps, initial=start_step, desc=trainer.method, disable=not progress, leave=False)
    try:
        while step < steps:
            t0 = time.perf_counter()
            stats = trainer.step()
            wall += time.perf_counter() - t0
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == steps:
                log(step, stats)
                bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items() if isinstance(v, float)}, refresh=False)
            if checkpoint_every and step % checkpoint_every == 0:
                save(step)
    except KeyboardInterrupt:
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
