r"""Checkpoint contents: the policy's trainable weights, and reading back a checkpoint :func:`~bayes_klrl.training.fit`
wrote (``weights_only``, refused with a ValueError when it is not one)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..lm import AutoregressiveLM

__all__ = ["CHECKPOINT_NAME", "load_trainable_state", "trainable_state"]

CHECKPOINT_NAME = "checkpoint.pt"


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
