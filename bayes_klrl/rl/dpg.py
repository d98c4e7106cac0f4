r"""Distributional policy gradient (DPG): fit the policy to :math:`\pi^*` by the *forward* KL.

SVI and KL-in-reward RL minimize the reverse divergence :math:`\mathrm{KL}(q\|\pi^*)`, which is mode-seeking:
:math:`q` is punished for mass where :math:`\pi^*` has little, not for missing mass. DPG (Parshakova, Andreoli &
Dymetman 2019; "GDC", Khalifa, Elsahar & Dymetman 2021) minimizes the mass-covering forward divergence instead,

.. math::

    \mathrm{KL}(\pi^*\|q_\theta) = \mathbb{E}_{\pi^*}[\log\pi^*(x) - \log q_\theta(x)], \qquad
    \nabla_\theta\,\mathrm{KL}(\pi^*\|q_\theta) = -\mathbb{E}_{\pi^*}[\nabla_\theta\log q_\theta(x)]
        = -\frac1Z\,\mathbb{E}_{x\sim q'}\Big[\frac{P(x)}{q'(x)}\,\nabla_\theta\log q_\theta(x)\Big],

with the unnormalized target :math:`P(x) = \pi_0(x)\,e^{r(x)/\beta}` (so :math:`\pi^* = P/Z`) and a proposal
:math:`q'` to sample from, since :math:`\pi^*` itself cannot be sampled. For :math:`x_1..x_N \sim q'` and
:math:`\log w_i = \log P(x_i) - \log q'(x_i)`, the estimate is

.. math::

    \hat g = -\sum_i c_i\,\nabla_\theta\log q_\theta(x_i), \qquad
    c_i = \frac{w_i}{N Z}\ \text{(unbiased, given } \log Z\text{)} \quad\text{or}\quad
    c_i = \bar w_i = \frac{w_i}{\sum_j w_j}\ \text{(self-normalized within the batch)}.

:math:`Z` is rarely known. Normalizing by the batch's own weights (``normalize="batch"``) is consistent with an
:math:`O(1/N)` bias that is not harmless: when the policy misses a region of high :math:`\pi^*` mass, that
region is absent from most batches, and each batch's normalized weights then send the policy further away from
it. The default (``normalize="running"``) divides by a running estimate
:math:`\hat Z_t = \frac{1}{tN}\sum_{s\le t}\sum_i w^{(s)}_i` over every batch so far (each batch mean is an
unbiased estimate of :math:`Z` whatever the proposal was), as GDC estimates :math:`Z` once over many samples.
When the proposal is the policy itself, :math:`\mathbb{E}_q[\nabla\log q] = 0`, so subtracting :math:`1/N`
from every :math:`c_i` (a baseline) leaves the expectation unchanged and lowers the variance.

Proposals (``proposal=``): ``"policy"`` (on-policy, :math:`q' = q_\theta` detached), ``"prior"``
(:math:`q' = \pi_0`, the original DPG) or ``"refresh"`` (GDC's off-policy variant: :math:`q'` is a frozen copy
of the policy, replaced by the current policy whenever the batch estimate of
:math:`\mathrm{KL}(\pi^*\|q_\theta) - \mathrm{KL}(\pi^*\|q') = \sum_i \bar w_i(\log q'(x_i) - \log q_\theta(x_i))`
is negative).

References:

- Parshakova, Andreoli, Dymetman (2019), *Distributional reinforcement learning for energy-based sequential
  models*, CoNLL.
- Khalifa, Elsahar, Dymetman (2021), *A distributional approach to controlled text generation*, ICLR.
"""

from __future__ import annotations

import copy
import math

import torch

from ..lm import AutoregressiveLM
from ..samples import score, weight_summary
from ..task import Task
from ..training import Trainer

__all__ = ["NORMALIZATIONS", "PROPOSALS", "DPGTrainer", "dpg_coefficients", "dpg_surrogate"]

PROPOSALS = ("policy", "prior", "refresh")
NORMALIZATIONS = ("running", "batch")


def dpg_coefficients(log_weights: torch.Tensor, *, log_z: float | None = None, baseline: bool = False) -> torch.Tensor:
    r"""The weights :math:`c_i` of :math:`\nabla\log q_\theta(x_i)` in the DPG estimate, float64 ``(N,)``.

    :param log_weights: :math:`\log w_i = \log\pi_0(x_i) + r(x_i)/\beta - \log q'(x_i)`, ``(N,)``; ``-inf`` for
        sequences outside the posterior's support (weight 0).
    :param log_z: if given, :math:`c_i = w_i/(NZ)` (unbiased); else :math:`c_i = w_i/\sum_j w_j`.
    :param bool baseline: subtract :math:`1/N` from every :math:`c_i`; only valid (unbiased) when the
        samples come from the policy being trained.
    :raises ValueError: if every weight is 0 (no sample in the posterior's support).

    Example::

        >>> dpg_coefficients(torch.tensor([0.0, 0.0, float("-inf")]))
        tensor([0.5000, 0.5000, 0.0000], dtype=torch.float64)
    """
    log_w = log_weights.detach().double()
    if log_w.dim() != 1:
        raise ValueError(f"log_weights must have shape (N,), got {tuple(log_w.shape)}")
    if not torch.isfinite(log_w).any():
        raise ValueError("every importance weight is 0: no sample lies in the posterior's support")
    n = log_w.numel()
    if log_z is None:
        coef = torch.softmax(log_w, 0)
    else:
        coef = torch.exp(log_w - log_z) / n
    if baseline:
        coef = coef - 1.0 / n
    return coef


def dpg_surrogate(
    log_q: torch.Tensor, log_weights: torch.Tensor, *, log_z: float | None = None, baseline: bool = False
) -> torch.Tensor:
    r"""A loss whose gradient is the DPG estimate of :math:`\nabla_\theta\mathrm{KL}(\pi^*\|q_\theta)`:
    :math:`-\sum_i c_i \log q_\theta(x_i)` with :math:`c` from :func:`dpg_coefficients` (detached).

    :param log_q: :math:`\log q_\theta(x_i)`, differentiable, ``(N,)``.

    Example::

        >>> log_w = score(task, x, log_q=policy).log_weight       # x drawn from the policy (here: at the prior)
        >>> loss = dpg_surrogate(policy.log_prob(x), log_w)
        >>> loss.backward()       # policy gradients now hold an estimate of ∇ KL(π*‖q)
    """
    coef = dpg_coefficients(log_weights, log_z=log_z, baseline=baseline).to(log_q.dtype)
    return -(coef * log_q).sum()


class DPGTrainer(Trainer):
    r"""Distributional policy gradient: Adam on the estimate of :math:`\nabla\,\mathrm{KL}(\pi^*\|q_\theta)`.

    Usable with :func:`~bayes_klrl.training.fit` like :class:`~bayes_klrl.rl.ReinforceTrainer`.

    :param task: the task.
    :param policy: a trainable policy (e.g. ``task.make_policy()``).
    :param int num_sequences: sequences drawn from the proposal (and rewards evaluated) per step.
    :param float lr: the (peak) learning rate (the optimizer: ``optimizer_options``).
    :param str proposal: ``"policy"`` (on-policy), ``"prior"`` or ``"refresh"`` (GDC: a frozen copy of the
        policy, replaced when the policy is estimated to be closer to :math:`\pi^*`).
    :param log_z: :math:`\log Z` if known (e.g. from enumeration): unbiased weights :math:`w_i/(NZ)`.
    :param str normalize: without ``log_z``: ``"running"`` (divide by the running estimate of :math:`Z` over all
        batches so far, the default) or ``"batch"`` (self-normalize within each batch).
    :param bool baseline: with ``proposal="policy"``, subtract :math:`1/N` from each coefficient (default on).
    :param optimizer_options: optimizer, schedule and clipping (:class:`~bayes_klrl.training.OptimizerSettings`).

    Example::

        >>> result = fit(DPGTrainer(task, task.make_policy(), num_sequences=512, lr=0.05), steps=500, seed=0)
        >>> policy_metrics(task, result.policy).kl_posterior_to_q < 0.1      # the divergence DPG minimizes
        True
    """

    method = "dpg"

    def __init__(
        self,
        task: Task,
        policy: AutoregressiveLM,
        num_sequences: int = 1024,
        *,
        lr: float = 0.02,
        proposal: str = "policy",
        log_z: float | None = None,
        normalize: str = "running",
        baseline: bool = True,
        **optimizer_options,
    ):
        super().__init__(task, policy, num_sequences, lr=lr, **optimizer_options)
        if self.world_size > 1:
            raise ValueError("DPG does not run data-parallel; use svi, rl or the recipes under torchrun")
        if proposal not in PROPOSALS:
            raise ValueError(f"unknown DPG proposal {proposal!r}; choose one of {', '.join(PROPOSALS)}")
        if log_z is not None and not math.isfinite(log_z):
            raise ValueError(f"log_z must be finite, got {log_z}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.normalize = normalize
        self._log_w_sum = -math.inf  # logsumexp of every log-weight seen (the running estimate of Z)
        self._num_weights = 0
        self.proposal = proposal
        self.log_z = None if log_z is None else float(log_z)
        self.baseline = bool(baseline) and proposal == "policy"
        self._frozen = self._freeze(policy) if proposal == "refresh" else None

    @staticmethod
    def _freeze(policy: AutoregressiveLM) -> AutoregressiveLM:
        return copy.deepcopy(policy).frozen()

    def _proposal_lm(self) -> AutoregressiveLM:
        return {"policy": self.policy, "prior": self.task.prior, "refresh": self._frozen}[self.proposal]

    def step(self) -> dict[str, float]:
        task = self.task
        proposal = self._proposal_lm()
        x = proposal.sample(self.num_sequences, task.length)  # (N, T)
        log_q = self.policy.log_prob(x)  # (N,) differentiable
        if self.proposal == "policy":
            scored = score(task, x, log_q=log_q.detach())
        else:
            scored = score(task, x, log_q=task.prior if self.proposal == "prior" else proposal)
        r, log_target, log_proposal = scored.reward, scored.log_target, scored.log_q
        log_w = scored.log_weight  # (N,) log P(x) − log q'(x)
        # every batch mean of w is an unbiased estimate of Z, whatever the proposal was: pool them
        self._log_w_sum = float(torch.logaddexp(torch.tensor(self._log_w_sum).double(), torch.logsumexp(log_w, 0)))
        self._num_weights += log_w.numel()
        log_z_running = self._log_w_sum - math.log(self._num_weights)
        stats = {"reward_mean": float(r.mean()), "log_z_running": log_z_running}
        finite = torch.isfinite(log_w)
        if not finite.any():  # no sample in the support: nothing to learn from this batch
            return {**stats, "log_z_estimate": -math.inf, "ess": 0.0, "forward_kl_estimate": math.nan}
        log_z = self.log_z
        if log_z is None and self.normalize == "running":
            log_z = log_z_running
        loss = dpg_surrogate(log_q, log_w, log_z=log_z, baseline=self.baseline)
        self.update(loss)
        with torch.no_grad():
            summary = weight_summary(log_w)
            w_bar = torch.softmax(log_w, 0)  # (N,)
            gap = torch.where(finite, log_target - log_q.detach().double(), torch.zeros_like(log_w))
            stats.update(
                log_z_estimate=summary.log_z,
                ess=summary.ess,
                forward_kl_estimate=float((w_bar * gap).sum()) - summary.log_z,  # Σ w̄ log(P/q) − log Ẑ
            )
            if self.proposal == "refresh":
                new_log_q = self.policy.log_prob(x).double()
                improvement = float((w_bar * (log_proposal - new_log_q)).sum())
                refreshed = improvement < 0.0
                if refreshed:
                    self._frozen = self._freeze(self.policy)
                stats["refreshed"] = float(refreshed)
        return stats

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "proposal": None if self._frozen is None else self._frozen.state_dict(),
            "log_w_sum": self._log_w_sum,  # the running estimate of Z
            "num_weights": self._num_weights,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("proposal") is not None and self._frozen is not None:
            self._frozen.load_state_dict(state["proposal"])
        self._log_w_sum, self._num_weights = float(state["log_w_sum"]), int(state["num_weights"])
