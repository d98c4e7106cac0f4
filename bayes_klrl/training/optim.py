r"""The optimizer settings every trainer shares: Adam or AdamW, weight decay, a warm-up and decaying learning-rate
schedule, gradient-norm clipping (:class:`OptimizerSettings`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "OptimizerSettings"]

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
