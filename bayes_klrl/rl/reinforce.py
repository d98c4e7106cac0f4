r"""REINFORCE with the KL in the reward and a leave-one-out baseline (RLOO), in plain torch.

It maximizes :math:`J(q) = \mathbb{E}_q[r] - \beta\,\mathrm{KL}(q\|\pi_0)` with the sequence-level reward
:math:`R(x) = r(x) - \beta(\log q(x) - \log\pi_0(x))` ("k1"), a leave-one-out baseline over the batch, and
the loss :math:`-\frac1N\sum_i (R_i - b_i)\log q(x_i)`. Since :math:`R = \beta f` with :math:`f` the SVI signal,
its gradient is :math:`\beta/N` times the SVI leave-one-out estimate: the same algorithm.
"""

from __future__ import annotations

import torch

from ..estimators import floor_infeasible, leave_one_out_baseline
from ..lm import AutoregressiveLM
from ..task import Task
from ..training import Trainer

__all__ = ["ReinforceTrainer"]


class ReinforceTrainer(Trainer):
    r"""REINFORCE with the KL in the reward and a leave-one-out baseline (RLOO).

    :param int num_sequences: sequences sampled (and rewards evaluated) per step.
    :param float lr: Adam learning rate.
    :param bool kl_penalty: put :math:`-\beta(\log q - \log\pi_0)` in the reward (the default). With
        ``False`` the learning signal is :math:`r(x)` alone: plain reward maximization, whose optimum is a point
        mass on :math:`\arg\max r` (distribution collapse). The reported ``objective_estimate`` is still
        :math:`r - \beta\,\mathrm{KL}`.

    Example::

        >>> result = fit(ReinforceTrainer(task, task.make_policy(), num_sequences=1024), steps=1500, seed=0)
    """

    method = "rl"

    def __init__(
        self,
        task: Task,
        policy: AutoregressiveLM,
        num_sequences: int = 1024,
        *,
        lr: float = 0.02,
        kl_penalty: bool = True,
    ):
        super().__init__(task, policy, num_sequences, lr=lr)
        self.kl_penalty = bool(kl_penalty)

    def step(self) -> dict[str, float]:
        task, beta = self.task, self.task.beta
        x = self.policy.sample(self.num_sequences, task.length)  # (N, T)
        log_q = self.policy.log_prob(x)  # (N,)
        with torch.no_grad():
            log_prior = task.prior.log_prob(x)
            r = task.rewards(x)
            kl = log_q.detach() - log_prior  # k1, per sequence
            shaped = r - beta * kl  # (N,) the KL-in-reward return
            usable = floor_infeasible(shaped if self.kl_penalty else r)
            advantage = usable - leave_one_out_baseline(usable)
        loss = -(advantage * log_q).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "objective_estimate": float(shaped.mean()),
            "reward_mean": float(r.mean()),
            "kl_estimate": float(kl.mean()),
        }
