r"""Direct KL-regularized RL trainers in plain torch, written the way RLHF practitioners write them (no Pyro).

Both maximize :math:`J(q) = \mathbb{E}_q[r] - \beta\,\mathrm{KL}(q\|\pi_0)` by putting the KL in the reward.

:class:`ReinforceTrainer` (RLOO): the sequence-level reward
:math:`R(x) = r(x) - \beta(\log q(x) - \log\pi_0(x))` ("k1"), a leave-one-out baseline over the batch, and
the loss :math:`-\frac1N\sum_i (R_i - b_i)\log q(x_i)`. Since :math:`R = \beta f` with :math:`f` the SVI signal,
its gradient is :math:`\beta/N` times the SVI leave-one-out estimate: the same algorithm.

:class:`PPOTrainer`: per-token rewards :math:`-\beta k_t` with :math:`k_t` the k1 estimate
:math:`\log q - \log\pi_0` or the k3 estimate :math:`(\rho_t - 1) - \log\rho_t`, :math:`\rho_t = \pi_0/q`, plus
:math:`r(x)` at the last token; returns-to-go with a leave-one-out baseline per position (no critic); the
clipped surrogate :math:`-\min(\rho A, \mathrm{clip}(\rho, 1\pm\epsilon) A)` over several epochs of minibatches;
optionally the adaptive KL controller of Ziegler et al. (2019),
:math:`\beta \leftarrow \beta\,(1 + \mathrm{clip}(\mathrm{KL}/\mathrm{target} - 1, \pm 0.2)\,N/\mathrm{horizon})`.
"""

from __future__ import annotations

import torch

from .estimators import floor_infeasible, leave_one_out_baseline
from .lm import AutoregressiveLM
from .task import Task
from .training import Trainer

__all__ = ["ReinforceTrainer", "PPOTrainer", "KL_ESTIMATORS", "kl_per_token"]

KL_ESTIMATORS = ("k1", "k3")


def kl_per_token(log_q: torch.Tensor, log_prior: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    r"""Per-token estimate of :math:`\mathrm{KL}(q\|\pi_0)` at the sampled tokens (Schulman's k1 or k3).

    k1 = :math:`\log q - \log\pi_0` (unbiased, can be negative); k3 = :math:`(\rho-1) - \log\rho`,
    :math:`\rho=\pi_0/q` (non-negative, unbiased in value).

    Example::

        >>> kl_per_token(torch.tensor([-1.0]), torch.tensor([-2.0]), "k3")   # rho = e^-1
        tensor([0.3679])
    """
    if estimator == "k1":
        return log_q - log_prior
    if estimator == "k3":
        log_ratio = log_prior - log_q
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


class _TorchOptimizerMixin:
    optimizer: torch.optim.Optimizer

    def optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class ReinforceTrainer(_TorchOptimizerMixin, Trainer):
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
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
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


class PPOTrainer(_TorchOptimizerMixin, Trainer):
    r"""PPO-clip with a per-token KL penalty in the reward, as in RLHF practice.

    :param int num_sequences: sequences sampled (and rewards evaluated) per step.
    :param float lr: Adam learning rate.
    :param int epochs: passes over each batch.
    :param int minibatches: minibatches per pass.
    :param float clip: the clip range :math:`\epsilon`.
    :param str kl_estimator: ``"k1"`` (unbiased) or ``"k3"`` (biased gradients when used in the loss).
    :param kl_target: if set, the adaptive controller moves β towards this KL (nats per sequence).
    :param int kl_horizon: the controller's horizon (in sequences).

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
    ):
        super().__init__(task, policy, num_sequences, lr=lr)
        kl_per_token(torch.zeros(1), torch.zeros(1), kl_estimator)  # validates the name
        if epochs < 1 or minibatches < 1 or num_sequences // minibatches < 2:
            raise ValueError("epochs and minibatches must be >= 1, with at least 2 sequences per minibatch")
        if not 0 < clip < 1:
            raise ValueError(f"clip must be in (0, 1), got {clip}")
        if kl_target is not None and not kl_target > 0:
            raise ValueError(f"kl_target must be > 0, got {kl_target}")
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
        self.epochs, self.minibatches, self.clip = epochs, minibatches, clip
        self.kl_estimator, self.kl_target, self.kl_horizon = kl_estimator, kl_target, kl_horizon
        self.beta = task.beta  # the controller may move it

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
        size = self.num_sequences // self.minibatches
        for _ in range(self.epochs):
            order = torch.randperm(self.num_sequences)
            for k in range(self.minibatches):
                idx = order[k * size : (k + 1) * size]
                ratio = torch.exp(self.policy.token_log_probs(x[idx]) - old_log_q[idx])  # (n, T)
                adv = advantages[idx]
                clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
                loss = -torch.minimum(ratio * adv, clipped * adv).sum(-1).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        if self.kl_target is not None:
            error = max(-0.2, min(0.2, stats["kl_estimate"] / self.kl_target - 1))
            self.beta *= 1 + error * self.num_sequences / self.kl_horizon
        stats["beta"] = self.beta
        return stats

    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "beta": self.beta}

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.beta = state["beta"]
