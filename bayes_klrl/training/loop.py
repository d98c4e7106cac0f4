r"""The training loop :func:`fit`: seeding, logging, progress, checkpoints and resume, returning a :class:`FitResult`."""

from __future__ import annotations

import inspect
import numbers
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..lm import AutoregressiveLM
from ..storage import save_torch
from .checkpoint import CHECKPOINT_NAME, _load_checkpoint, _restore_python_rng
from .distributed import rank_seed
from .trainer import Trainer

__all__ = ["FitResult", "fit", "seed_everything"]


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


def _takes_two_arguments(function) -> bool:
    """Whether ``function`` can be called with two positional arguments (``evaluate(policy, step)``)."""
    try:
        inspect.signature(function).bind(None, None)
    except (TypeError, ValueError):  # one argument, or no signature (a builtin): call it the documented way
        return False
    return True


def seed_everything(seed: int) -> None:
    """Seed the global RNGs torch (and so Pyro) and ``random`` draw from."""
    random.seed(seed)
    torch.manual_seed(seed)


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
