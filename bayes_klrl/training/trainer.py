r"""The :class:`Trainer` base: one optimizer over one policy, one abstract :meth:`~Trainer.step`, data-parallel
helpers and the state a resume needs."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import torch

from ..lm import AutoregressiveLM
from ..task import Task
from .checkpoint import load_trainable_state, trainable_state
from .distributed import world
from .optim import OptimizerSettings

__all__ = ["Trainer"]


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
