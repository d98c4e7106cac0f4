r"""PPO-clip with a per-token KL penalty in the reward, as in RLHF practice (no critic).

Per-token rewards :math:`-\beta k_t` with :math:`k_t` a per-token KL estimate (:mod:`bayes_klrl.rl.kl`), plus
:math:`r(x)` at the last token; returns-to-go with a leave-one-out baseline per position; the clipped surrogate
:math:`-\min(\rho A, \mathrm{clip}(\rho, 1\pm\epsilon) A)` over several epochs of minibatches; optionally the
adaptive KL controller of Ziegler et al. (2019),
:math:`\beta \leftarrow \beta\,(1 + \mathrm{clip}(\mathrm{KL}/\mathrm{target} - 1, \pm 0.2)\,N/\mathrm{horizon})`.
"""

from __future__ import annotations

import torch

from ..estimators import floor_infeasible, leave_one_out_baseline
from ..lm import AutoregressiveLM
from ..task import Task
from ..training import Trainer
from .kl import kl_per_token
from .recipes import clipped_surrogate, minibatch_indices

__all__ = ["PPOTrainer"]


class PPOTrainer(Trainer):
    r"""PPO-clip with a per-token KL penalty in the reward, as in RLHF practice.

    :param int num_sequences: sequences sampled (and rewards evaluated) per step.
    :param float lr: the (peak) learning rate (the optimizer: ``optimizer_options``).
    :param int epochs: passes over each batch.
    :param int minibatches: minibatches per pass.
    :param float clip: the clip range :math:`\epsilon`.
    :param str kl_estimator: ``"k1"`` (unbiased) or ``"k3"`` (biased gradients when used in the loss).
    :param kl_target: if set, the adaptive controller moves β towards this KL (nats per sequence).
    :param int kl_horizon: the controller's horizon (in sequences).
    :param optimizer_options: optimizer, schedule and clipping (:class:`~bayes_klrl.training.OptimizerSettings`).

    Example::

        >>> result = fit(PPOTrainer(task, task.make_policy(), num_sequences=1024), steps=500, seed=0)
    """

    method = "ppo"

    def __init__(
        self,
        task: Task,
        policy: AutoregressiveLM,
        num_sequences: int = 1024,
        *,
        lr: float = 0.02,
        epochs: int = 2,
        minibatches: int = 2,
        clip: float = 0.2,
        kl_estimator: str = "k1",
        kl_target: float | None = None,
        kl_horizon: int = 10_000,
        **optimizer_options,
    ):
        super().__init__(task, policy, num_sequences, lr=lr, **optimizer_options)
        if self.world_size > 1:
            raise ValueError("PPO does not run data-parallel; use svi, rl or the recipes under torchrun")
        kl_per_token(torch.zeros(1), torch.zeros(1), kl_estimator)  # validates the name
        if epochs < 1 or minibatches < 1 or num_sequences // minibatches < 2:
            raise ValueError("epochs and minibatches must be >= 1, with at least 2 sequences per minibatch")
        if not 0 < clip < 1:
            raise ValueError(f"clip must be in (0, 1), got {clip}")
        if kl_target is not None and not kl_target > 0:
            raise ValueError(f"kl_target must be > 0, got {kl_target}")
        self.epochs, self.minibatches, self.clip = epochs, minibatches, clip
        self.kl_estimator, self.kl_target, self.kl_horizon = kl_estimator, kl_target, kl_horizon
        self.beta = task.beta  # the controller may move it

    @property
    def updates_per_step(self) -> int:
        return self.epochs * self.minibatches

    def _advantages(self, x: torch.Tensor, old_log_q: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            log_prior = self.task.prior.token_log_probs(x)  # (N, T)
            r = self.task.rewards(x)  # (N,)
            kl_tok = kl_per_token(old_log_q, log_prior, self.kl_estimator)  # (N, T)
            token_rewards = -self.beta * kl_tok
            token_rewards[:, -1] += r
            returns = token_rewards.flip(-1).cumsum(-1).flip(-1)  # (N, T) reward-to-go, gamma = 1
            returns = floor_infeasible(returns)
            advantages = returns - leave_one_out_baseline(returns, dim=0)
            kl_seq = (old_log_q - log_prior).sum(-1)  # k1 per sequence, for reporting and the controller
        stats = {
            "objective_estimate": float((r - self.task.beta * kl_seq).mean()),
            "reward_mean": float(r.mean()),
            "kl_estimate": float(kl_seq.mean()),
        }
        return advantages, stats

    def step(self) -> dict[str, float]:
        x = self.policy.sample(self.num_sequences, self.task.length)  # (N, T)
        with torch.no_grad():
            old_log_q = self.policy.token_log_probs(x)  # (N, T)
        advantages, stats = self._advantages(x, old_log_q)
        for idx in minibatch_indices(self.num_sequences, self.epochs, self.minibatches):
            ratio = torch.exp(self.policy.token_log_probs(x[idx]) - old_log_q[idx])  # (n, T)
            self.update(-clipped_surrogate(ratio, advantages[idx], self.clip).sum(-1).mean())
        if self.kl_target is not None:
            error = max(-0.2, min(0.2, stats["kl_estimate"] / self.kl_target - 1))
            self.beta *= 1 + error * self.num_sequences / self.kl_horizon
        stats["beta"] = self.beta
        return stats

    def state_dict(self) -> dict:
        return {**super().state_dict(), "beta": self.beta}  # the adaptive controller's β

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.beta = float(state["beta"])
