r"""One scored-sample record shared by every method: sequences with their prior, reward and proposal scores.

Every method of this package — exact enumeration, importance sampling, MCMC, DPG, RL — looks at sequences
:math:`x_i` through the same numbers:

.. math::

    \log\pi_0(x_i), \qquad r(x_i), \qquad \log p(y{=}1 \mid x_i) = r(x_i)/\beta, \qquad
    \log\tilde\pi^*(x_i) = \log\pi_0(x_i) + r(x_i)/\beta, \qquad
    \log w_i = \log\tilde\pi^*(x_i) - \log q(x_i).

:class:`ScoredSamples` holds them (a small frozen record, like BlackJAX's sampler states) and :func:`score` is
the one function that builds it from a task. :func:`weight_summary` is the one summary of importance weights
(:math:`\log\hat Z`, its standard error, the normalized ESS). The one encoding of a sequence as an integer
(:func:`~bayes_klrl.sequences.sequence_codes`, :func:`~bayes_klrl.sequences.sequences_from_codes`) lives in :mod:`bayes_klrl.sequences`, below the LMs.

Example::

    >>> samples = score(task, task.prior.sample(1000, task.length), log_q=task.prior)
    >>> summary = weight_summary(samples.log_weight)       # q = π0: log w = r/β
    >>> 0 < summary.ess <= 1 and summary.log_z > 0          # (Σw)²/(N Σw²) and log Ẑ (log Z = 4.66 here)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .lm import AutoregressiveLM
    from .task import Task

__all__ = [
    "ScoredSamples",
    "WeightSummary",
    "score",
    "weight_summary",
]


@dataclass(frozen=True)
class ScoredSamples:
    r"""Sequences with the numbers every method reads off them (:math:`N` rows; for MCMC, one row per chain).

    :ivar tokens: the sequences, LongTensor ``(N, T)``.
    :ivar log_prior: :math:`\log\pi_0(x)`, float64 ``(N,)``.
    :ivar reward: :math:`r(x)`, float64 ``(N,)``, finite or :math:`-\infty` (a hard constraint).
    :ivar beta: the KL coefficient :math:`\beta > 0`.
    :ivar log_q: :math:`\log q(x)` of the proposal or policy that drew them, float64 ``(N,)``, or ``None``
        when no proposal was scored (exact enumeration, Gibbs).

    Derived: :attr:`log_likelihood` :math:`r/\beta`, :attr:`log_target` :math:`\log\pi_0 + r/\beta`
    (the unnormalized :math:`\log\pi^*`) and :attr:`log_weight` :math:`\log\pi_0 + r/\beta - \log q`.
    Build it with :func:`score`.

    Example::

        >>> s = score(task, x, log_q=policy)
        >>> torch.equal(s.log_weight, s.log_target - s.log_q)
        True
    """

    tokens: torch.Tensor
    log_prior: torch.Tensor
    reward: torch.Tensor
    beta: float
    log_q: torch.Tensor | None = None

    def __post_init__(self):
        if self.tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (N, T), got {tuple(self.tokens.shape)}")
        n = self.tokens.shape[0]
        fields = {"log_prior": self.log_prior, "reward": self.reward, "log_q": self.log_q}
        for name, value in fields.items():
            if value is not None and tuple(value.shape) != (n,):
                raise ValueError(f"{name} must have shape ({n},) for {n} sequences, got {tuple(value.shape)}")

    @property
    def num_samples(self) -> int:
        """:math:`N`, the number of rows."""
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        """:math:`T`, tokens per sequence."""
        return int(self.tokens.shape[1])

    @property
    def log_likelihood(self) -> torch.Tensor:
        r""":math:`\log p(y{=}1 \mid x) = r(x)/\beta`, ``(N,)``."""
        return self.reward / self.beta

    @property
    def log_target(self) -> torch.Tensor:
        r"""The unnormalized log-posterior :math:`\log\pi_0(x) + r(x)/\beta`, ``(N,)``."""
        return self.log_prior + self.reward / self.beta

    @property
    def log_weight(self) -> torch.Tensor:
        r"""The importance log-weight :math:`\log\pi_0(x) + r(x)/\beta - \log q(x)`, ``(N,)``.

        :raises ValueError: if no proposal was scored (``log_q is None``).
        """
        if self.log_q is None:
            raise ValueError("these samples carry no log_q (no proposal was scored): pass log_q to score()")
        return self.log_target - self.log_q

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index) -> ScoredSamples:
        """The rows ``index`` (an int, a slice, a LongTensor of rows or a boolean mask ``(N,)``), as a record."""
        if isinstance(index, int):
            index = [index]  # one row, kept as a (1, T) record
        return ScoredSamples(
            tokens=self.tokens[index],
            log_prior=self.log_prior[index],
            reward=self.reward[index],
            beta=self.beta,
            log_q=None if self.log_q is None else self.log_q[index],
        )

    def where(self, mask: torch.Tensor, other: ScoredSamples) -> ScoredSamples:
        """Row ``i`` from ``other`` where ``mask[i]`` else from ``self`` (a Metropolis–Hastings accept); ``(N,)``."""
        if (self.log_q is None) != (other.log_q is None):
            raise ValueError("both records must carry log_q, or neither")
        return ScoredSamples(
            tokens=torch.where(mask.unsqueeze(-1), other.tokens, self.tokens),
            log_prior=torch.where(mask, other.log_prior, self.log_prior),
            reward=torch.where(mask, other.reward, self.reward),
            beta=self.beta,
            log_q=None if self.log_q is None else torch.where(mask, other.log_q, self.log_q),
        )

    def to(self, device: torch.device | str) -> ScoredSamples:
        """The same record on ``device`` (dtypes unchanged)."""
        return ScoredSamples(
            tokens=self.tokens.to(device),
            log_prior=self.log_prior.to(device),
            reward=self.reward.to(device),
            beta=self.beta,
            log_q=None if self.log_q is None else self.log_q.to(device),
        )

    def cpu(self) -> ScoredSamples:
        """The same record on the CPU."""
        return self.to("cpu")

    @staticmethod
    def cat(chunks: Sequence[ScoredSamples]) -> ScoredSamples:
        """Concatenate records with the same :math:`\\beta` along the rows (chunks of one draw)."""
        if not chunks:
            raise ValueError("cat needs at least one record")
        beta = chunks[0].beta
        if any(c.beta != beta for c in chunks):
            raise ValueError("cannot concatenate records with different beta")
        has_q = {c.log_q is not None for c in chunks}
        if len(has_q) != 1:
            raise ValueError("cannot concatenate records with and without log_q")
        return ScoredSamples(
            tokens=torch.cat([c.tokens for c in chunks]),
            log_prior=torch.cat([c.log_prior for c in chunks]),
            reward=torch.cat([c.reward for c in chunks]),
            beta=beta,
            log_q=torch.cat([c.log_q for c in chunks]) if has_q == {True} else None,
        )


def score(task: Task, tokens: torch.Tensor, *, log_q: torch.Tensor | AutoregressiveLM | None = None) -> ScoredSamples:
    r"""Score sequences under a task: :math:`\log\pi_0(x)` and the checked reward :math:`r(x)`, in float64.

    The prior and the reward are evaluated without gradients (:meth:`Task.rewards` validates the reward).

    :param task: the task (prior :math:`\pi_0`, reward, :math:`\beta`).
    :param tokens: LongTensor ``(N, T)``; the record keeps them on their device.
    :param log_q: the proposal's log-probabilities :math:`\log q(x)`: a tensor ``(N,)`` (kept as given, in
        float64, so a differentiable :math:`\log q` stays differentiable), or an LM to evaluate without
        gradients (the task's own prior reuses :math:`\log\pi_0`), or ``None``.

    Example::

        >>> x = task.prior.sample(8, task.length)
        >>> s = score(task, x, log_q=task.prior)
        >>> torch.allclose(s.log_weight, task.rewards(x).double() / task.beta)
        True
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
        raise ValueError("tokens must be a LongTensor of shape (N, T)")
    with torch.no_grad():
        log_prior = task.prior.log_prob(tokens).double()  # (N,)
        reward = task.rewards(tokens).double()  # (N,)
        if log_q is task.prior:
            log_q = log_prior
        elif log_q is not None and not isinstance(log_q, torch.Tensor):
            log_q = log_q.log_prob(tokens).double()
    if isinstance(log_q, torch.Tensor):
        log_q = log_q.double()
    return ScoredSamples(tokens=tokens, log_prior=log_prior, reward=reward, beta=task.beta, log_q=log_q)


# -- the summary of importance weights ------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSummary:
    r"""What importance weights :math:`w_i = e^{\log w_i}`, :math:`i = 1..N`, say.

    :ivar log_z: :math:`\log\hat Z = \log\frac1N\sum_i w_i` (``logmeanexp``).
    :ivar log_z_se: its delta-method standard error :math:`\mathrm{sd}(w)/(\sqrt N\,\hat Z)`.
    :ivar ess: normalized effective sample size :math:`(\sum_i w_i)^2 / (N\sum_i w_i^2)` in :math:`[1/N, 1]`.
    :ivar max_weight_ratio: the largest weight over the mean weight, :math:`N\max_i \bar w_i` (1 when all equal).
    :ivar mean_log_weight: :math:`\frac1N\sum_i \log w_i` (an estimate of the ELBO when :math:`x_i \sim q`;
        ``-inf`` if any weight is 0).
    :ivar num_samples: :math:`N`.
    """

    log_z: float
    log_z_se: float
    ess: float
    max_weight_ratio: float
    mean_log_weight: float
    num_samples: int

    @property
    def effective_samples(self) -> float:
        r"""The unnormalized effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2 = N\cdot\mathrm{ess}`."""
        return self.ess * self.num_samples


def weight_summary(log_weights: torch.Tensor) -> WeightSummary:
    r"""Summarize log importance weights ``(N,)`` (float64 sums; zero weights ``-inf`` allowed):

    .. math:: \log\hat Z = \log\tfrac1N\textstyle\sum_i w_i, \qquad
              \mathrm{se} = \mathrm{sd}(w/\hat Z)/\sqrt N, \qquad
              \mathrm{ESS}/N = (\sum_i w_i)^2 / (N \sum_i w_i^2).

    :raises ValueError: if ``log_weights`` is not ``(N,)`` with :math:`N \ge 1`, holds NaN or :math:`+\infty`,
        or every weight is zero.

    Example::

        >>> s = weight_summary(torch.zeros(100))     # equal weights
        >>> s.log_z, s.ess, s.effective_samples
        (0.0, 1.0, 100.0)
    """
    log_w = log_weights.detach().double()
    if log_w.dim() != 1 or log_w.numel() == 0:
        raise ValueError(f"log_weights must have shape (N,) with N >= 1, got {tuple(log_w.shape)}")
    if torch.isnan(log_w).any() or (log_w == math.inf).any():
        raise ValueError("log_weights must be finite or -inf (no NaN or +inf)")
    if not torch.isfinite(log_w).any():
        raise ValueError("every log-weight is -inf: the target has no support among the samples")
    n = log_w.numel()
    log_z = torch.logsumexp(log_w, 0) - math.log(n)
    w = torch.exp(log_w - log_w.max())  # (N,) scaled so the largest is 1
    ess = float(w.sum() ** 2 / (n * (w**2).sum()))
    w_over_z = torch.exp(log_w - log_z)  # w_i / Ẑ, mean 1
    probs = torch.exp(log_w - torch.logsumexp(log_w, 0))  # normalized weights w̄ (N,)
    return WeightSummary(
        log_z=float(log_z),
        log_z_se=float(w_over_z.std() / math.sqrt(n)) if n > 1 else math.nan,
        ess=ess,
        max_weight_ratio=float(n * probs.max()),
        mean_log_weight=float(log_w.mean()),
        num_samples=n,
    )
