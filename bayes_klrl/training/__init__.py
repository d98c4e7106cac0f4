r"""The training loop shared by SVI and the RL trainers: seeding, logging, progress, checkpoints.

A :class:`Trainer` owns a policy and an optimizer and knows how to take one step. The optimizer is the same
machinery for every trainer, SVI included (:class:`OptimizerSettings`): Adam or AdamW, weight decay, a
learning-rate schedule (constant, linear decay or cosine, after an optional linear warm-up) and gradient-norm
clipping, so SVI and RL take the same steps under the same settings. :func:`fit` runs a trainer for
``steps`` steps from an explicit ``seed``, logs every ``log_every`` steps (optionally calling
``evaluate(policy)`` for exact or Monte Carlo metrics, outside the timed region), and writes a checkpoint
(policy, optimizer and RNG state) every ``checkpoint_every`` steps and on Ctrl-C. ``resume=True``
continues from the checkpoint to the same final parameters as an uninterrupted run.

One concept per file: :mod:`.optim` (:class:`OptimizerSettings`), :mod:`.distributed` (process group, rank
seeds), :mod:`.checkpoint` (trainable state, reading a checkpoint), :mod:`.trainer` (:class:`Trainer`) and
:mod:`.loop` (:func:`fit`, :class:`FitResult`).
"""

from __future__ import annotations

from .checkpoint import CHECKPOINT_NAME, load_trainable_state, trainable_state
from .distributed import init_distributed_from_env, rank_seed, world
from .loop import FitResult, fit, seed_everything
from .optim import LR_SCHEDULES, OPTIMIZERS, OptimizerSettings
from .trainer import Trainer

__all__ = [
    "CHECKPOINT_NAME",
    "FitResult",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "OptimizerSettings",
    "Trainer",
    "fit",
    "init_distributed_from_env",
    "load_trainable_state",
    "rank_seed",
    "seed_everything",
    "trainable_state",
    "world",
]
