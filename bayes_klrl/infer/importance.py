r"""Self-normalized importance sampling for the posterior :math:`\pi^* \propto \pi_0 e^{r/\beta}`, vectorized.

With proposal :math:`q` (the prior or any policy) and :math:`x_i \sim q`,

.. math::

    \log w_i = \log\pi_0(x_i) + r(x_i)/\beta - \log q(x_i), \qquad
    \log\hat Z = \log\frac1N\sum_i w_i, \qquad \mathrm{ESS}/N = \frac{(\sum_i w_i)^2}{N\sum_i w_i^2}.

:math:`\hat Z` is unbiased, so :math:`\log\hat Z` is a stochastic lower bound of :math:`\log Z` in
expectation. The Pareto :math:`\hat k` of the largest weights (PSIS, ``az.psislw``) says whether the proposal
is usable: below 0.5 good, 0.5–0.7 usable, above 0.7 unreliable (Vehtari et al.; Yao et al. 2018).
Samples are drawn and scored in chunks, so large ``num_samples`` fit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import arviz as az
import numpy as np
import torch

from ..lm import AutoregressiveLM
from ..task import Task

__all__ = ["ImportanceResult", "importance_sample", "khat_label"]


def khat_label(khat: float) -> str:
    """The Yao et al. (2018) reading of a Pareto :math:`\\hat k`: ``good``, ``usable`` or ``unreliable``."""
    if not math.isfinite(khat) or khat > 0.7:
        return "unreliable"
    return "good" if khat < 0.5 else "usable"


@dataclass(frozen=True)
class ImportanceResult:
    r"""Weighted samples of :math:`\pi^*`.

    :ivar log_z: :math:`\log\hat Z`. :ivar log_z_se: its delta-method standard error.
    :ivar ess: normalized effective sample size in (0, 1].
    :ivar khat: PSIS Pareto :math:`\hat k` (``-inf`` when all weights are equal); ``khat_label`` its reading.
    :ivar expected_reward: self-normalized :math:`\mathbb{E}_{\pi^*}[r]`.
    :ivar sequences: the draws ``(N, T)``; ``log_weights``, ``rewards``: ``(N,)``.
    :ivar resampled: ``N`` sequences resampled in proportion to the weights ``(N, T)``.
    """

    log_z: float
    log_z_se: float
    ess: float
    khat: float
    khat_label: str
    expected_reward: float
    sequences: torch.Tensor
    log_weights: torch.Tensor
    rewards: torch.Tensor
    resampled: torch.Tensor


@torch.no_grad()
def importance_sample(
    task: Task,
    proposal: AutoregressiveLM | None = None,
    *,
    num_samples: int = 4096,
    chunk_size: int = 4096,
    seed: int = 0,
) -> ImportanceResult:
    """Importance sampling of the task's posterior with ``proposal`` (default: the prior).

    :raises ValueError: if every weight is zero (every reward −inf): the posterior has no support among the
        samples.

    Example::

        >>> result = importance_sample(task, num_samples=20_000, seed=0)
        >>> abs(result.log_z - exact_posterior(task).log_z) < 3 * result.log_z_se
        True
    """
    if num_samples < 2 or chunk_size < 1:
        raise ValueError(f"num_samples must be >= 2 and chunk_size >= 1, got {num_samples}, {chunk_size}")
    proposal = task.prior if proposal is None else proposal
    generator = torch.Generator(proposal.device).manual_seed(seed)
    xs, log_w, rewards = [], [], []
    for start in range(0, num_samples, chunk_size):
        x = proposal.sample(min(chunk_size, num_samples - start), task.length, generator=generator)
        r = task.rewards(x).double()
        log_w.append((task.prior.log_prob(x).double() + r / task.beta - proposal.log_prob(x).double()).cpu())
        xs.append(x.cpu())
        rewards.append(r.cpu())
    x, log_w, r = torch.cat(xs), torch.cat(log_w), torch.cat(rewards)
    if not torch.isfinite(log_w).any():
        raise ValueError(
            f"importance sampling: all {num_samples} samples have reward -inf; the posterior has no support among "
            "the samples (use more samples or a proposal that satisfies the constraint)"
        )
    n = log_w.numel()
    log_z = torch.logsumexp(log_w, 0) - math.log(n)
    w = torch.exp(log_w - log_w.max())
    ess = float(w.sum() ** 2 / (n * (w**2).sum()))
    w_bar = torch.exp(log_w - log_z)  # w_i / Ẑ, mean 1
    log_z_se = float(w_bar.std() / math.sqrt(n))  # delta method: sd(w)/(√N · Ẑ)
    finite = torch.isfinite(log_w)
    tail = log_w[finite].numpy().astype(np.float64)
    if tail.max() - tail.min() < 1e-9:  # constant weights (q = π* on its support): no tail at all
        khat = -math.inf
    else:
        with np.errstate(over="ignore"):  # ArviZ's generalized-Pareto fit overflows harmlessly on light tails
            _, khat = az.psislw(tail)
    probs = w / w.sum()
    resampled = x[torch.multinomial(probs.float(), n, replacement=True, generator=torch.Generator().manual_seed(seed))]
    khat = float(np.asarray(khat))
    return ImportanceResult(
        log_z=float(log_z),
        log_z_se=log_z_se,
        ess=ess,
        khat=khat,
        khat_label=khat_label(khat),
        expected_reward=float((probs * torch.where(finite, r, torch.zeros_like(r))).sum()),
        sequences=x,
        log_weights=log_w,
        rewards=r,
        resampled=resampled,
    )
