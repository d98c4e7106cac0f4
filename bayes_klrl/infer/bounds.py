r"""Two-sided bounds on :math:`\log Z`, exact posterior draws, and a bracket on a policy's distance to :math:`\pi^*`.

An unconditional SMC run gives :math:`\mathbb{E}[\log\hat Z] \le \log Z`; the same run with one particle fixed to
an exact draw :math:`x^* \sim \pi^*` (conditional SMC) gives :math:`\mathbb{E}[\log\hat Z] \ge \log Z`
(:func:`log_z_bounds`). Exact draws come from enumeration, or, when the task declares an upper bound
``reward_max`` on its reward, by rejection from the prior (:func:`exact_posterior_draws`):

.. math:: x \sim \pi_0, \quad \text{accepted with probability } e^{(r(x) - r_{\max})/\beta},
          \quad \text{acceptance rate } Z\,e^{-r_{\max}/\beta}.

Since :math:`\mathrm{KL}(q\|\pi^*) = \log Z - \mathrm{ELBO}(q)` and :math:`\mathrm{KL}(\pi^*\|q) =
\mathrm{EUBO}(q) - \log Z`, with :math:`\mathrm{ELBO}(q) = \mathbb{E}_q[\log w]`,
:math:`\mathrm{EUBO}(q) = \mathbb{E}_{\pi^*}[\log w]`, :math:`\log w = \log\pi_0 + r/\beta - \log q`, a lower
bound :math:`L` and an upper bound :math:`U` of :math:`\log Z` bracket both (:func:`kl_bracket`):

.. math:: \mathrm{KL}(q\|\pi^*) \in [L - \mathrm{ELBO},\ U - \mathrm{ELBO}], \qquad
          \mathrm{KL}(\pi^*\|q) \in [\mathrm{EUBO} - U,\ \mathrm{EUBO} - L].

Every term is a Monte Carlo estimate of a quantity that bounds in expectation, so :func:`kl_bracket` widens each
end by ``num_se`` (2) standard errors of the estimates it is made of, and clips the lower ends at 0 (a KL is never
negative): with few runs, the two means alone can cross.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..exact import ExactPosterior
from ..lm import AutoregressiveLM
from ..samples import score
from ..sequences import sequences_from_codes
from ..task import Task
from .smc import SMCResult, smc
from .twists import Twist

__all__ = [
    "KLBracket",
    "LogZBounds",
    "NoExactDraws",
    "PosteriorDraws",
    "exact_posterior_draws",
    "kl_bracket",
    "log_z_bounds",
]


class NoExactDraws(ValueError):
    """The task has no source of exact posterior draws: it is too large to enumerate and declares no
    ``reward_max``; only the lower bound on log Z can be had."""


@dataclass(frozen=True)
class PosteriorDraws:
    r"""Exact draws of :math:`\pi^*`.

    :ivar tokens: LongTensor ``(M, T)``, independent draws of :math:`\pi^*`.
    :ivar source: ``"enumeration"`` or ``"rejection"``.
    :ivar proposals: prior draws made (and rewards evaluated) by rejection; 0 for enumeration.
    :ivar acceptance_rate: accepted / proposed (rejection; its expectation is :math:`Z e^{-r_{\max}/\beta}`),
        ``None`` for enumeration.
    """

    tokens: torch.Tensor
    source: str
    proposals: int = 0
    acceptance_rate: float | None = None

    @property
    def num_draws(self) -> int:
        return int(self.tokens.shape[0])


def exact_posterior_draws(
    task: Task,
    num_draws: int,
    *,
    posterior: ExactPosterior | None = None,
    seed: int = 0,
    max_proposals: int = 1_000_000,
    chunk_size: int = 4096,
) -> PosteriorDraws:
    r"""``num_draws`` independent draws of :math:`\pi^*`: from the enumerated ``posterior`` when given, else by
    rejection from the prior with acceptance :math:`e^{(r - r_{\max})/\beta}` (``task.reward_max``).

    :param int max_proposals: the most prior draws rejection may make.
    :raises NoExactDraws: without a posterior and without ``task.reward_max``.
    :raises ValueError: if rejection accepts fewer than ``num_draws`` within ``max_proposals`` (the message gives
        the acceptance rate and the budget that would do).

    Example::

        >>> draws = exact_posterior_draws(task.replace(reward_max=6.0), 100, seed=0)
        >>> draws.source, draws.tokens.shape
        ('rejection', torch.Size([100, 6]))
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"num_draws must be an integer >= 1, got {num_draws!r}")
    generator = torch.Generator().manual_seed(seed)
    if posterior is not None:
        codes = torch.multinomial(posterior.log_probs.exp(), num_draws, replacement=True, generator=generator)
        tokens = sequences_from_codes(codes, task.vocab_size, task.length)
        return PosteriorDraws(tokens=tokens.to(task.prior.device), source="enumeration")
    if task.reward_max is None:
        raise NoExactDraws(
            f"task '{task.name}' is too large to enumerate and declares no reward_max: no exact posterior draws, "
            "so only the lower bound on log Z"
        )
    prior_generator = torch.Generator(task.prior.device).manual_seed(seed)
    accepted, proposals = [], 0
    count = 0
    while count < num_draws and proposals < max_proposals:
        size = min(chunk_size, max_proposals - proposals)
        x = task.prior.sample(size, task.length, generator=prior_generator)  # (n, T)
        reward = task.rewards(x).double().cpu()  # checked against reward_max by the task
        log_u = torch.log(torch.rand(size, generator=generator, dtype=torch.float64))
        keep = log_u < (reward - task.reward_max) / task.beta
        accepted.append(x[keep.to(x.device)])
        count += int(keep.sum())
        proposals += size
    rate = count / proposals
    if count < num_draws:
        need = f"about {num_draws / rate:,.0f}" if rate > 0 else "more"
        raise ValueError(
            f"rejection sampling accepted {count} of {proposals:,} prior draws (rate {rate:.3g}); {num_draws} exact "
            f"draws need {need} proposals: raise the proposal budget or ask for fewer draws"
        )
    tokens = torch.cat(accepted)[:num_draws]
    return PosteriorDraws(tokens=tokens, source="rejection", proposals=proposals, acceptance_rate=rate)


@dataclass(frozen=True)
class LogZBounds:
    r""":math:`\log Z` bracketed by an SMC run and (with exact draws) a conditional SMC run.

    :ivar lower: the unconditional runs (:class:`~bayes_klrl.infer.smc.SMCResult`).
    :ivar upper: the conditional runs, or ``None`` when there were no exact draws.
    :ivar draws: the exact draws used, or ``None``.
    """

    lower: SMCResult
    upper: SMCResult | None
    draws: PosteriorDraws | None

    @property
    def log_z_lower(self) -> float:
        r"""Mean :math:`\log\hat Z` of the unconditional runs: :math:`\le \log Z` in expectation."""
        return self.lower.log_z_mean

    @property
    def log_z_upper(self) -> float | None:
        r"""Mean :math:`\log\hat Z` of the conditional runs: :math:`\ge \log Z` in expectation (``None``: no draws)."""
        return None if self.upper is None else self.upper.log_z_mean

    @property
    def width(self) -> float | None:
        return None if self.upper is None else self.log_z_upper - self.log_z_lower

    @property
    def reward_evaluations(self) -> int:
        upper = 0 if self.upper is None else self.upper.reward_evaluations
        proposals = 0 if self.draws is None else self.draws.proposals
        return self.lower.reward_evaluations + upper + proposals


def log_z_bounds(
    task: Task,
    *,
    num_particles: int,
    num_runs: int,
    twist: Twist | None = None,
    proposal: AutoregressiveLM | None = None,
    draws: PosteriorDraws | None = None,
    resample_threshold: float = 0.5,
    seed: int = 0,
) -> LogZBounds:
    r"""``num_runs`` SMC runs (a lower bound of :math:`\log Z` in expectation) and, with ``draws`` (at least
    ``num_runs`` exact posterior draws), as many conditional runs, run ``i`` fixed to draw ``i`` (an upper bound).

    Example::

        >>> draws = exact_posterior_draws(task, 16, posterior=exact_posterior(task))
        >>> b = log_z_bounds(task, num_particles=64, num_runs=16, draws=draws)
        >>> b.log_z_lower <= exact_posterior(task).log_z <= b.log_z_upper
        True
    """
    options = dict(
        num_particles=num_particles, num_runs=num_runs, twist=twist, proposal=proposal,
        resample_threshold=resample_threshold,
    )  # fmt: skip
    lower = smc(task, seed=seed, **options)
    upper = None
    if draws is not None:
        if draws.num_draws < num_runs:
            raise ValueError(f"the upper bound needs one exact draw per run: {draws.num_draws} < {num_runs} runs")
        upper = smc(task, seed=seed + 1, reference=draws.tokens[:num_runs], **options)
    return LogZBounds(lower=lower, upper=upper, draws=draws)


@dataclass(frozen=True)
class KLBracket:
    r"""A policy's distance to :math:`\pi^*` bracketed by bounds on :math:`\log Z` (module docstring).

    :ivar elbo: :math:`\hat{\mathbb{E}}_q[\log w]` over ``num_samples`` draws of :math:`q`; ``elbo_se`` its
        standard error.
    :ivar eubo: :math:`\hat{\mathbb{E}}_{\pi^*}[\log w]` over the exact draws (``None`` without them);
        ``eubo_se``.
    :ivar kl_q_lower, kl_q_upper: the bracket on :math:`\mathrm{KL}(q\|\pi^*)` (upper ``None`` without an upper
        bound on :math:`\log Z`).
    :ivar kl_p_lower, kl_p_upper: the bracket on :math:`\mathrm{KL}(\pi^*\|q)` (``None`` without exact draws).
    :ivar num_se: the standard errors each end is widened by.
    """

    elbo: float
    elbo_se: float
    eubo: float | None
    eubo_se: float | None
    kl_q_lower: float
    kl_q_upper: float | None
    kl_p_lower: float | None
    kl_p_upper: float | None
    num_se: float = 2.0


def _finite_or_zero(value: float | None) -> float:
    """A standard error that is not there (one run, one draw) counts as 0."""
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    if not torch.isfinite(values).all():
        mean = float(values.mean())
        return mean, math.nan
    return float(values.mean()), float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else math.nan


def kl_bracket(
    task: Task,
    policy: AutoregressiveLM,
    bounds: LogZBounds,
    *,
    num_samples: int = 1024,
    seed: int = 0,
    log_weights: torch.Tensor | None = None,
    num_se: float = 2.0,
) -> KLBracket:
    r"""Bracket :math:`\mathrm{KL}(q\|\pi^*)` and :math:`\mathrm{KL}(\pi^*\|q)` of ``policy`` with ``bounds``.

    :param log_weights: :math:`\log w` of draws of :math:`q` already made (e.g. by the policy's importance
        scoring); otherwise ``num_samples`` draws are made with ``seed``.
    :param float num_se: each end moves outwards by this many standard errors of the difference it is (the
        bound's over its runs and the ELBO's or EUBO's over its draws, added in quadrature); 0: the point
        estimates.

    Example::

        >>> post = exact_posterior(task)
        >>> draws = exact_posterior_draws(task, 32, posterior=post)
        >>> bounds = log_z_bounds(task, num_particles=128, num_runs=32, draws=draws)
        >>> bracket = kl_bracket(task, policy, bounds, num_samples=4096)       # policy = π0 here
        >>> bracket.kl_q_lower <= policy_metrics(task, policy, post).kl_q_to_posterior <= bracket.kl_q_upper
        True
    """
    if log_weights is None:
        generator = torch.Generator(policy.device).manual_seed(seed)
        with torch.no_grad():
            x = policy.sample(num_samples, task.length, generator=generator)
        log_weights = score(task, x, log_q=policy).log_weight
    elbo, elbo_se = _mean_se(log_weights)
    lower, upper = bounds.log_z_lower, bounds.log_z_upper
    lower_se = _finite_or_zero(bounds.lower.log_z_se)
    upper_se = None if bounds.upper is None else _finite_or_zero(bounds.upper.log_z_se)
    eubo = eubo_se = None
    if bounds.draws is not None:
        eubo, eubo_se = _mean_se(score(task, bounds.draws.tokens, log_q=policy).log_weight)

    def widen(se_a: float, se_b: float | None) -> float:
        return num_se * math.hypot(se_a, _finite_or_zero(se_b))

    kl_p_lower = kl_p_upper = None
    if eubo is not None:
        kl_p_upper = max(0.0, eubo - lower + widen(lower_se, eubo_se))
        if upper is not None:
            kl_p_lower = max(0.0, eubo - upper - widen(upper_se, eubo_se))
    return KLBracket(
        elbo=elbo,
        elbo_se=elbo_se,
        eubo=eubo,
        eubo_se=eubo_se,
        kl_q_lower=max(0.0, lower - elbo - widen(lower_se, elbo_se)),
        kl_q_upper=None if upper is None else max(0.0, upper - elbo + widen(upper_se, elbo_se)),
        kl_p_lower=kl_p_lower,
        kl_p_upper=kl_p_upper,
        num_se=num_se,
    )
