r"""Self-normalized importance sampling for the posterior :math:`\pi^* \propto \pi_0 e^{r/\beta}`, vectorized.

With proposal :math:`q` (the prior or any policy) and :math:`x_i \sim q`, :math:`i = 1..N`,

.. math::

    \log w_i = \log\pi_0(x_i) + r(x_i)/\beta - \log q(x_i), \qquad
    \log\hat Z = \log\frac1N\sum_i w_i, \qquad \mathrm{ESS}/N = \frac{(\sum_i w_i)^2}{N\sum_i w_i^2},

    \hat{\mathbb{E}}_{\pi^*}[r] = \sum_i \bar w_i\, r(x_i), \qquad \bar w_i = w_i / \textstyle\sum_j w_j.

:math:`\hat Z` is unbiased, so :math:`\log\hat Z` is a stochastic lower bound of :math:`\log Z` in
expectation (and consistent). The Pareto :math:`\hat k` of the largest weights (PSIS, through
:mod:`bayes_klrl._arviz`) says whether the proposal is usable: below 0.5 good, 0.5–0.7 usable, above 0.7
unreliable. Applied to a trained
policy, :math:`\hat k` says whether it is a usable proposal for π* (:func:`policy_diagnostics`).

Unlike :class:`pyro.infer.Importance`, which runs the model once per sample, the draws here are made and
scored in batched LM passes of ``chunk_size`` sequences; all draws are kept as one
:class:`~bayes_klrl.samples.ScoredSamples` record (:attr:`ImportanceResult.samples`), and the weights are
summarized by :func:`~bayes_klrl.samples.weight_summary`.

References:

- Vehtari, Simpson, Gelman, Yao, Gabry (2024), *Pareto smoothed importance sampling*, JMLR 25(72).
- Yao, Vehtari, Simpson, Gelman (2018), *Yes, but did it work?: Evaluating variational inference*, ICML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import _arviz
from ..lm import AutoregressiveLM
from ..samples import ScoredSamples, score, weight_summary
from ..task import Task

__all__ = [
    "BOUNDED_WEIGHT_RATIO",
    "KHAT_GOOD",
    "KHAT_USABLE",
    "NoSupportError",
    "ImportanceResult",
    "PolicyDiagnostics",
    "importance_log_weights",
    "importance_sample",
    "ESS_MIN",
    "KHAT_MIN",
    "MAX_WEIGHT_SHARE",
    "khat_label",
    "khat_reading",
    "pareto_khat",
    "policy_diagnostics",
]

#: Pareto k̂ below this: the proposal is good (Yao et al. 2018)
KHAT_GOOD = 0.5
#: Pareto k̂ up to this: usable; above it the importance estimates are unreliable
KHAT_USABLE = 0.7
#: weights whose largest is at most this many times their mean read as good, whatever k̂. Calibrated against exact
#: KL on a 4,096-sequence task (π* with its logits perturbed, 1,000 and 8,000 draws): a ratio of 1.8 went with
#: KL(q‖π*) = 0.012 nats, 3.5 with 0.047, 5–7 with 0.10, 15–30 with 0.25 and ≥ 60 with 0.8
BOUNDED_WEIGHT_RATIO = 3.0

#: log-weights whose spread is below this are treated as constant (a proposal equal to π* on its support)
_CONSTANT_SPREAD = 1e-9
#: from this many finite weights on, ArviZ's tail holds at least 5 samples unless the largest weights are tied
_MIN_TAIL_SAMPLES = 25


#: a normalized importance ESS below this reads ``unreliable`` whatever k̂: the estimates rest on fewer than one
#: draw in twenty (a policy 3.9 nats from π* had k̂ = −4.3 and ESS 0.001 on ``markov``)
ESS_MIN = 0.05
#: a finite k̂ below this, on weights not bounded by :data:`BOUNDED_WEIGHT_RATIO`, reads ``unreliable``: the GPD
#: fitted a sharp upper edge, i.e. the largest weights are a few repeated values (the draws cover few sequences),
#: not a tail. ``ppo`` on ``markov`` (k3, defaults) settled 3.87 nats from π* with k̂ = −4.29, ESS 0.34 and
#: largest weight 8.4× the mean, on sequences of reward 6 only
KHAT_MIN = -1.0
#: a largest weight holding more than this share of the weights' sum reads ``unreliable``: one draw decides
MAX_WEIGHT_SHARE = 0.5


def khat_reading(
    khat: float,
    max_weight_ratio: float | None = None,
    *,
    ess: float | None = None,
    num_samples: int | None = None,
    distinct: int | None = None,
) -> tuple[str, str]:
    r"""The reading of a Pareto :math:`\hat k` and the reason for it: ``(label, reason)``.

    In order: a :math:`\hat k` that is not finite reads ``unreliable`` (``+inf``: too few finite weights to fit
    a tail; ``-inf``: the weights take too few distinct values to have one, as when a collapsed policy draws one
    sequence over and over, so they cannot show a poor proposal), except a ``-inf`` from weights bounded by
    :data:`BOUNDED_WEIGHT_RATIO` over at least 25 ``distinct`` sequences (``good``: a proposal equal to
    :math:`\pi^*` on them); so does a normalized ``ess`` below
    :data:`ESS_MIN`, or a largest weight holding more than :data:`MAX_WEIGHT_SHARE` of the sum
    (``max_weight_ratio / num_samples``). Otherwise a ``max_weight_ratio`` of at most
    :data:`BOUNDED_WEIGHT_RATIO` reads ``good``; a :math:`\hat k` below :data:`KHAT_MIN` ``unreliable``; and
    else the Yao et al. (2018) thresholds apply: ``good`` below 0.5, ``usable`` to 0.7, ``unreliable`` above.

    :param distinct: how many distinct sequences the draws hold (named in the reason of a ``-inf``).

    Example::

        >>> khat_reading(float("-inf"), 1.0, ess=1.0, num_samples=1024, distinct=1)[0]
        'unreliable'
        >>> khat_reading(0.3, 5.0, ess=0.8)
        ('good', 'k-hat 0.3 < 0.5')
    """
    if khat == math.inf:
        return "unreliable", "k-hat is inf: too few draws with finite weight to fit the tail"
    if khat == -math.inf:
        bounded = max_weight_ratio is not None and max_weight_ratio <= BOUNDED_WEIGHT_RATIO
        if bounded and distinct is not None and distinct >= _MIN_TAIL_SAMPLES:
            return "good", (
                f"k-hat is -inf: bounded weights with no tail (largest {max_weight_ratio:.3g} x the mean) over "
                f"{distinct:,} distinct sequences"
            )
        held = f" ({distinct:,} distinct sequence(s) among the draws)" if distinct is not None else ""
        return "unreliable", (
            "k-hat is -inf: the weights take too few distinct values to have a tail" + held + ", so they cannot "
            "show a poor proposal"
        )
    if math.isnan(khat):
        return "unreliable", "k-hat is NaN"
    if ess is not None and ess < ESS_MIN:
        return "unreliable", f"ESS {ess:.3g} < {ESS_MIN:g} of the draws"
    if max_weight_ratio is not None and num_samples and max_weight_ratio / num_samples > MAX_WEIGHT_SHARE:
        share = max_weight_ratio / num_samples
        return "unreliable", f"the largest weight holds {share:.3g} of the total (> {MAX_WEIGHT_SHARE:g})"
    if max_weight_ratio is not None and max_weight_ratio <= BOUNDED_WEIGHT_RATIO:
        return "good", f"largest weight {max_weight_ratio:.3g} <= {BOUNDED_WEIGHT_RATIO:g} x the mean"
    if khat < KHAT_MIN:
        return "unreliable", (
            f"k-hat {khat:.3g} < {KHAT_MIN:g}: the largest weights are a few repeated values, not a tail (the draws "
            "cover few sequences)"
        )
    if khat > KHAT_USABLE:
        return "unreliable", f"k-hat {khat:.3g} > {KHAT_USABLE:g}"
    if khat < KHAT_GOOD:
        return "good", f"k-hat {khat:.3g} < {KHAT_GOOD:g}"
    return "usable", f"k-hat {khat:.3g} in [{KHAT_GOOD:g}, {KHAT_USABLE:g}]"


def khat_label(khat: float, max_weight_ratio: float | None = None) -> str:
    r"""The Yao et al. (2018) reading of a Pareto :math:`\hat k`: ``good`` (< 0.5), ``usable`` (0.5–0.7)
    or ``unreliable`` (> 0.7, or not finite). :func:`khat_reading` also weighs the ESS and gives the reason.

    With ``max_weight_ratio`` (the largest weight over the mean weight) at most :data:`BOUNDED_WEIGHT_RATIO`,
    the reading is ``good`` whatever :math:`\hat k`: no draw carries more than three times its share, so no few
    draws can dominate the estimates. :math:`\hat k` fits the *shape* of the weights' upper tail and ignores
    its scale; a policy that is almost exact (weights within a few percent of each other) can show
    :math:`\hat k > 0.7` on a tail that is only a few percent wide.

    Example::

        >>> khat_label(0.3), khat_label(0.6), khat_label(1.2), khat_label(1.2, max_weight_ratio=1.3)
        ('good', 'usable', 'unreliable', 'good')
    """
    if not math.isfinite(khat):  # no tail could be fitted (see khat_reading)
        return "unreliable"
    if max_weight_ratio is not None and max_weight_ratio <= BOUNDED_WEIGHT_RATIO:
        return "good"
    if khat > KHAT_USABLE:
        return "unreliable"
    return "good" if khat < KHAT_GOOD else "usable"


def pareto_khat(log_weights: torch.Tensor) -> tuple[float, torch.Tensor]:
    r"""PSIS of ``log_weights`` ``(N,)``: the Pareto :math:`\hat k` and the smoothed, normalized log-weights.

    Zero weights (``-inf``) stay ``-inf`` and are left out of the fit. Weights that are all equal (a proposal
    equal to the target), or whose largest value is an atom covering the whole tail (a reward taking few values
    with the prior as proposal), are bounded with no tail: :math:`\hat k = -\infty`. Below 25 finite weights
    ArviZ cannot fit a tail and :math:`\hat k = +\infty`.

    :returns: ``(khat, smoothed)`` with ``smoothed`` float64 ``(N,)`` and :math:`\sum_i e^{\text{smoothed}_i} = 1`.

    Example::

        >>> khat, smoothed = pareto_khat(torch.randn(4000, generator=torch.Generator().manual_seed(0)))
        >>> khat < 0.5, float(smoothed.exp().sum())
        (True, 1.0...)
    """
    log_w = log_weights.detach().double().cpu()
    if log_w.dim() != 1:
        raise ValueError(f"log_weights must have shape (N,), got {tuple(log_w.shape)}")
    finite = torch.isfinite(log_w)
    if torch.isnan(log_w).any() or (log_w == math.inf).any():
        raise ValueError("log_weights must be finite or -inf (no NaN or +inf)")
    if not finite.any():
        raise ValueError("every log-weight is -inf: the target has no support among the samples")
    smoothed = torch.full_like(log_w, -math.inf)
    tail = log_w[finite].numpy().copy()
    if tail.max() - tail.min() < _CONSTANT_SPREAD:
        smoothed[finite] = -math.log(tail.size)
        return -math.inf, smoothed
    lw, khat = _arviz.psislw(tail)  # ArviZ 0.x or 1.x
    smoothed[finite] = torch.from_numpy(lw)
    if khat == math.inf and tail.size >= _MIN_TAIL_SAMPLES:
        # no tail could be fitted (under five distinct weights in it); with this many samples that happens only
        # when the largest weight is an atom holding the whole tail (a reward with few values under a proposal
        # that is the prior): the weights are bounded, there is no tail to fit.
        khat = -math.inf
    return khat, smoothed


def importance_log_weights(
    task: Task, sequences: torch.Tensor, proposal: AutoregressiveLM | None = None
) -> torch.Tensor:
    r""":math:`\log w(x) = \log\pi_0(x) + r(x)/\beta - \log q(x)` of given sequences ``(N, T)``; float64 ``(N,)``.

    With ``proposal=None`` the proposal is the prior and :math:`\log w = r/\beta`.

    Example::

        >>> x = task.prior.sample(5, task.length)
        >>> torch.allclose(importance_log_weights(task, x), task.log_likelihood(x).double())
        True
    """
    _check_sequences(task, sequences)
    if proposal is None or proposal is task.prior:
        with torch.no_grad():
            return task.log_likelihood(sequences).double().cpu()  # log π0 − log q cancels exactly
    return score(task, sequences, log_q=proposal).log_weight.cpu()


def _check_sequences(task: Task, sequences: torch.Tensor) -> None:
    if not isinstance(sequences, torch.Tensor) or sequences.dtype != torch.long or sequences.dim() != 2:
        raise ValueError("sequences must be a LongTensor of shape (N, T)")
    if sequences.shape[1] != task.length:
        raise ValueError(f"sequences have {sequences.shape[1]} tokens; the task has length {task.length}")


def _check_proposal(task: Task, proposal: AutoregressiveLM | None) -> AutoregressiveLM:
    if proposal is None:
        return task.prior
    if not isinstance(proposal, AutoregressiveLM):
        raise ValueError(f"proposal must be a bayes_klrl.lm.AutoregressiveLM or None, got {type(proposal).__name__}")
    if proposal.vocab_size != task.vocab_size:
        raise ValueError(f"proposal has vocab_size {proposal.vocab_size}; the task has {task.vocab_size}")
    return proposal


@dataclass(frozen=True)
class ImportanceResult:
    r"""Weighted samples of :math:`\pi^*` from :func:`importance_sample`.

    :ivar log_z: :math:`\log\hat Z = \operatorname{logmeanexp}(\log w)`.
    :ivar log_z_se: its delta-method Monte Carlo standard error :math:`\mathrm{sd}(w)/(\sqrt N\,\hat Z)`.
    :ivar ess: normalized effective sample size :math:`(\sum w)^2 / (N \sum w^2)` in (0, 1].
    :ivar khat: PSIS Pareto :math:`\hat k` (``-inf`` when all weights are equal); ``khat_label`` its reading and
        ``khat_reason`` why (:func:`khat_reading`).
    :ivar max_weight_ratio: the largest weight over the mean weight, :math:`N \max_i \bar w_i` (1 when all are
        equal; at most :data:`BOUNDED_WEIGHT_RATIO` reads as ``good`` whatever :math:`\hat k`).
    :ivar expected_reward: self-normalized :math:`\hat{\mathbb{E}}_{\pi^*}[r]`;
        ``expected_reward_se`` its standard error :math:`\sqrt{\sum_i \bar w_i^2 (r_i - \hat\mu)^2}`.
    :ivar elbo: :math:`\frac1N\sum_i \log w_i`, an estimate of :math:`\mathrm{ELBO}(q)` (``-inf`` if any weight is 0).
    :ivar samples: the draws and their scores, a :class:`~bayes_klrl.samples.ScoredSamples` on the CPU
        (``tokens`` ``(N, T)``; ``log_prior``, ``reward``, ``log_q``, float64 ``(N,)``).
    :ivar smoothed_log_weights: PSIS-smoothed, normalized log-weights, float64 ``(N,)``.
    :ivar resampled: ``N`` sequences resampled (multinomially) in proportion to the weights ``(N, T)``.
    :ivar resample_index: which draw each resampled sequence is, LongTensor ``(N,)``.

    ``sequences``, ``log_weights``, ``rewards``, ``log_prior`` and ``log_q`` read the record.
    """

    log_z: float
    log_z_se: float
    ess: float
    khat: float
    khat_label: str
    max_weight_ratio: float
    expected_reward: float
    expected_reward_se: float
    elbo: float
    samples: ScoredSamples
    log_weights: torch.Tensor
    smoothed_log_weights: torch.Tensor
    resampled: torch.Tensor
    resample_index: torch.Tensor
    khat_reason: str = ""

    @property
    def num_samples(self) -> int:
        return int(self.log_weights.numel())

    @property
    def sequences(self) -> torch.Tensor:
        """The draws :math:`x_i \\sim q`, LongTensor ``(N, T)``."""
        return self.samples.tokens

    @property
    def rewards(self) -> torch.Tensor:
        """:math:`r(x_i)`, float64 ``(N,)``."""
        return self.samples.reward

    @property
    def log_prior(self) -> torch.Tensor:
        """:math:`\\log\\pi_0(x_i)`, float64 ``(N,)``."""
        return self.samples.log_prior

    @property
    def log_q(self) -> torch.Tensor:
        """:math:`\\log q(x_i)` of the proposal, float64 ``(N,)``."""
        return self.samples.log_q


class NoSupportError(ValueError):
    """Every importance draw has weight 0 (reward −inf): nothing estimates the posterior from these draws."""


def _no_support(num_samples: int) -> ValueError:
    return NoSupportError(
        f"importance sampling: all {num_samples} samples have weight 0 (reward -inf); the posterior has no "
        "support among the samples (use more samples or a proposal that satisfies the constraint)"
    )


@torch.no_grad()
def _draw_and_score(
    task: Task, proposal: AutoregressiveLM, num_samples: int, chunk_size: int, seed: int
) -> ScoredSamples:
    """Draw ``num_samples`` sequences from ``proposal`` in chunks, each scored with its ``log_q``; on the CPU."""
    generator = torch.Generator(proposal.device).manual_seed(seed)
    chunks = []
    for start in range(0, num_samples, chunk_size):
        x = proposal.sample(min(chunk_size, num_samples - start), task.length, generator=generator)  # (n, T)
        chunks.append(score(task, x, log_q=proposal).cpu())  # the prior as proposal reuses log π0
    return ScoredSamples.cat(chunks)  # (N,) rows


def _check_counts(num_samples: int, chunk_size: int) -> None:
    for name, value, low in (("num_samples", num_samples, 2), ("chunk_size", chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def importance_sample(
    task: Task,
    proposal: AutoregressiveLM | None = None,
    *,
    num_samples: int = 4096,
    chunk_size: int = 4096,
    seed: int = 0,
) -> ImportanceResult:
    r"""Self-normalized importance sampling of the task's posterior with ``proposal`` (default: the prior).

    .. math:: \log w_i = \log\pi_0(x_i) + r(x_i)/\beta - \log q(x_i), \quad
              \log\hat Z = \log\tfrac1N\textstyle\sum_i w_i, \quad x_i \sim q.

    :param task: the task.
    :param proposal: an :class:`~bayes_klrl.lm.AutoregressiveLM` over the task's vocabulary, or ``None``
        for the prior (then :math:`\log w = r/\beta`).
    :param int num_samples: :math:`N`, at least 2.
    :param int chunk_size: sequences per batched LM pass; memory is bounded by one chunk plus the ``(N,)``
        weights and ``(N, T)`` tokens.
    :param int seed: seeds the draws and the resampling.
    :raises ValueError: if every weight is zero (every reward −inf): the posterior has no support among the
        samples.

    Example::

        >>> result = importance_sample(task, num_samples=20_000, seed=0)
        >>> abs(result.log_z - exact_posterior(task).log_z) < 3 * result.log_z_se
        True
    """
    _check_counts(num_samples, chunk_size)
    proposal = _check_proposal(task, proposal)
    samples = _draw_and_score(task, proposal, num_samples, chunk_size, seed)
    log_w, r = samples.log_weight, samples.reward  # log π0 + r/β − log q, r: (N,)
    finite = torch.isfinite(log_w)
    if not finite.any():
        raise _no_support(num_samples)
    summary = weight_summary(log_w)
    khat, smoothed = pareto_khat(log_w)
    probs = torch.exp(log_w - torch.logsumexp(log_w, 0))  # normalized weights w̄ (N,)
    r0 = torch.where(finite, r, torch.zeros_like(r))  # 0·(−inf) = 0
    mean_r = (probs * r0).sum()
    resample_gen = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(probs, num_samples, replacement=True, generator=resample_gen)
    label, reason = khat_reading(
        khat,
        summary.max_weight_ratio,
        ess=summary.ess,
        num_samples=num_samples,
        distinct=int(torch.unique(samples.tokens, dim=0).shape[0]) if khat == -math.inf else None,  # (N, T) rows
    )
    return ImportanceResult(
        log_z=summary.log_z,
        log_z_se=summary.log_z_se,
        ess=summary.ess,
        khat=khat,
        khat_label=label,
        khat_reason=reason,
        max_weight_ratio=summary.max_weight_ratio,
        expected_reward=float(mean_r),
        expected_reward_se=float(torch.sqrt((probs**2 * (r0 - mean_r) ** 2).sum())),
        elbo=summary.mean_log_weight,
        samples=samples,
        log_weights=log_w,
        smoothed_log_weights=smoothed,
        resampled=samples.tokens[idx],
        resample_index=idx,
    )


@dataclass(frozen=True)
class PolicyDiagnostics:
    r"""How good a proposal for :math:`\pi^*` a policy :math:`q` is, from weights :math:`\pi_0 e^{r/\beta}/q`.

    :ivar khat: PSIS Pareto :math:`\hat k`; ``label`` its reading (``good`` < 0.5 ≤ ``usable`` ≤ 0.7 <
        ``unreliable``; ``good`` also when ``max_weight_ratio`` ≤ :data:`BOUNDED_WEIGHT_RATIO`).
    :ivar max_weight_ratio: the largest weight over the mean weight.
    :ivar ess: normalized effective sample size in (0, 1].
    :ivar log_z: :math:`\log\hat Z`; ``log_z_se`` its standard error.
    :ivar elbo: :math:`\hat{\mathbb{E}}_q[\log w]`; ``log_z - elbo`` estimates :math:`\mathrm{KL}(q\|\pi^*)`.
    :ivar num_samples: :math:`N`.
    """

    khat: float
    label: str
    max_weight_ratio: float
    ess: float
    log_z: float
    log_z_se: float
    elbo: float
    num_samples: int


def policy_diagnostics(
    task: Task, policy: AutoregressiveLM, num_samples: int = 4096, seed: int = 0, *, chunk_size: int = 4096
) -> PolicyDiagnostics:
    r"""Pareto :math:`\hat k` and ESS of the importance weights :math:`w = \pi_0 e^{r/\beta} / q` with
    :math:`x \sim q`: whether the policy is a usable proposal for (and so a faithful approximation of) π*.

    Thresholds of Yao et al. (2018): :math:`\hat k < 0.5` good, 0.5–0.7 usable, > 0.7 unreliable.

    :raises ValueError: if every sample has reward −inf.

    Example::

        >>> d = policy_diagnostics(task, task.make_policy(), num_samples=4000, seed=0)  # q = π0
        >>> d.label in ("good", "usable", "unreliable")
        True
    """
    result = importance_sample(task, policy, num_samples=num_samples, chunk_size=chunk_size, seed=seed)
    return PolicyDiagnostics(
        khat=result.khat,
        label=result.khat_label,
        max_weight_ratio=result.max_weight_ratio,
        ess=result.ess,
        log_z=result.log_z,
        log_z_se=result.log_z_se,
        elbo=result.elbo,
        num_samples=result.num_samples,
    )
