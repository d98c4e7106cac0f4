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

__all__ = ["Trainer", "FitResult", "fit", "CHECKPOINT_NAME", "trainable_state", "load_trainable_state"]

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
    r"""One optimizer over one policy; :meth:`step` draws ``num_sequences`` sequences and updates once.

    Subclasses implement :meth:`step` only. The base checks the common arguments, owns the optimizer
    (:meth:`make_optimizer`, a hook: Adam over the policy's trainable parameters; SVI returns Pyro's) and
    saves and restores everything a resume needs with :meth:`state_dict` / :meth:`load_state_dict`; a trainer
    with state of its own (PPO's adaptive β, DPG's running :math:`\hat Z`) extends those two.

    :param task: the task (prior, reward, β, length).
    :param policy: the trainable policy, e.g. ``task.make_policy()``.
    :param int num_sequences: sequences sampled (and rewards evaluated) per step.
    :param float lr: the learning rate.
    """

    method: str = "trainer"

    def __init__(self, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float = 0.02):
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if int(num_sequences) < 2:
            raise ValueError(f"num_sequences must be >= 2 (the leave-one-out baseline needs two), got {num_sequences}")
        if policy.vocab_size != task.vocab_size:
            raise ValueError(f"policy vocabulary {policy.vocab_size} differs from the task's {task.vocab_size}")
        self.task = task
        self.policy = policy
        self.num_sequences = int(num_sequences)
        self.lr = float(lr)
        self.optimizer = self.make_optimizer()

    def make_optimizer(self):
        """The optimizer (hook): Adam over the policy's trainable parameters."""
        return torch.optim.Adam([p for p in self.policy.parameters() if p.requires_grad], lr=self.lr)

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss`` (gradients zeroed first)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @abstractmethod
    def step(self) -> dict[str, float]:
        """One update; returns scalar statistics of the batch."""

    def state_dict(self) -> dict:
        """Everything a resume needs: the policy's trainable weights and the optimizer's state (extend it with
        a trainer's own state)."""
        return {"policy": trainable_state(self.policy), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a checkpoint that does not fit the policy is refused with a ValueError."""
        load_trainable_state(self.policy, state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])

    def reward_evaluations_per_step(self) -> int:
        return self.num_sequences


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

    :param int seed: seeds the global RNGs before the first step.
    :param evaluate: ``policy -> dict`` of extra figures logged at step 0, every ``log_every`` steps and at the end;
        it runs outside the timed region and does not change the training's random stream.
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
    if isinstance(steps, bool) or int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if int(log_every) < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if int(checkpoint_every) < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict] = []
    start_step, wall = 0, 0.0
    seed_everything(seed)
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
        try:
            trainer.load_state_dict(state["trainer"])
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ValueError(f"checkpoint {ckpt_path} does not fit this run: {str(exc).splitlines()[0]}") from exc
        torch.set_rng_state(state["rng"])
        random.setstate(_restore_python_rng(state["python_rng"]))
        start_step, wall, history = state["step"], state["wall_seconds"], list(state["history"])

    def log(step: int, stats: dict) -> dict:
        row = {"step": step, "reward_evaluations": step * trainer.reward_evaluations_per_step(), "wall_seconds": wall}
        row.update(stats)
        if evaluate is not None:
            rng = torch.get_rng_state()  # evaluation must not change the training stream
            row.update(evaluate(trainer.policy))
            torch.set_rng_state(rng)
        history.append(row)
        return row

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        save_torch(
            {
                "method": trainer.method,
                "settings": dict(settings or {}),
                "step": step,
                "trainer": trainer.state_dict(),
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
    bar = tqdm(total=steps, initial=start_step, desc=trainer.method, disable=None if progress else True, leave=False)
    # (disable=None: bars only on a terminal, never as megabytes of carriage returns in a log file)
    try:
        while step < steps:
            t0 = time.perf_counter()
            stats = trainer.step()
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
