r"""Sequential Monte Carlo over tokens, batched: :math:`\log\hat Z` (a lower bound in expectation), and conditional
SMC with one particle fixed to an exact posterior draw (an upper bound in expectation).

The target is :math:`\gamma(x) = \pi_0(x)\,e^{r(x)/\beta}`, :math:`Z = \sum_x \gamma(x)`. With a twist
:math:`\psi` (:mod:`bayes_klrl.infer.twists`) the intermediate targets are
:math:`\gamma_t(x_{\le t}) = \pi_0(x_{\le t})\,e^{\psi_t(x_{\le t})}`, :math:`\psi_0 = 0`, :math:`\psi_T = r/\beta`.
Each particle proposes :math:`x_t \sim p_t(\cdot \mid x_{<t})` and is reweighted by

.. math:: w_t = \frac{\pi_0(x_t \mid x_{<t})\, e^{\psi_t(x_{\le t}) - \psi_{t-1}(x_{<t})}}{p_t(x_t \mid x_{<t})},

where :math:`p_t` is the prior tilted by the twist (``proposal=None``; then :math:`w_t = \sum_v \pi_0(v \mid
x_{<t}) e^{\psi_t(x_{<t},v)} / e^{\psi_{t-1}(x_{<t})}` for :math:`t < T`, the same for every token drawn) or a
given policy. When the effective sample size of a run's weights falls below ``resample_threshold`` × N, its
particles are resampled (systematic) and :math:`\log\hat Z` takes the log mean weight,

.. math:: \log\hat Z = \sum_{\text{resampling steps and the end}} \log\frac1N\sum_i W_i,

accumulated exactly in float64 (log-sum-exp, nothing subtracted and thrown away). :math:`\hat Z` is unbiased,
so :math:`\mathbb{E}[\log\hat Z] \le \log Z` (Jensen). With ``reference`` (one exact posterior draw per run),
particle 0 of each run is that draw at every step and keeps its own lineage while the others resample
(multinomially, which keeps the conditional resampling exact); then :math:`\mathbb{E}[\log\hat Z] \ge \log Z`
(bidirectional Monte Carlo). ``K`` independent runs of ``N`` particles move in one batch of :math:`K N` rows.

Rewards of :math:`-\infty` (hard constraints) give weight 0; a run whose particles all have weight 0 has
:math:`\log\hat Z = -\infty`.

References:

- Zhao, Brekelmans, Makhzani, Grosse (2024), *Probabilistic inference in language models via twisted sequential
  Monte Carlo*, ICML.
- Grosse, Ghahramani, Adams (2015), *Sandwiching the marginal likelihood using bidirectional Monte Carlo*.
- Andrieu, Doucet, Holenstein (2010), *Particle Markov chain Monte Carlo methods* (conditional SMC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..lm import AutoregressiveLM
from ..task import Task
from .twists import Twist, ZeroTwist, twisted_proposal_log_probs

__all__ = ["RESAMPLING", "SMCResult", "smc", "systematic_resample"]

#: resampling schemes of the unconditional run (a conditional run resamples multinomially)
RESAMPLING = ("systematic", "multinomial")


@dataclass(frozen=True)
class SMCResult:
    r"""``K`` independent SMC runs of ``N`` particles.

    :ivar log_z: :math:`\log\hat Z` of each run, float64 ``(K,)`` (``-inf``: no particle had positive weight).
    :ivar tokens: the final particles, LongTensor ``(K, N, T)``.
    :ivar log_weights: their final log-weights (accumulated since the last resampling), float64 ``(K, N)``;
        weighted draws of :math:`\pi^*` (never equally weighted unless equal).
    :ivar log_prior: :math:`\log\pi_0` of the particles ``(K, N)``; ``reward``: :math:`r` ``(K, N)``.
    :ivar ess: the normalized ESS of the final weights of each run ``(K,)``.
    :ivar resampling_steps: how many times each run resampled ``(K,)``.
    :ivar conditional: whether particle 0 of each run was an exact posterior draw (the upper-bound run).
    :ivar increments: without resampling only, the log-increments towards :math:`\pi_0 e^{\psi_t}` per position,
        ``(K, N, T)``, the last towards :math:`\pi_0 e^{\psi_T}` with the twist's own :math:`\psi_T`, and
        ``terminal`` ``(K, N)``: :math:`r/\beta - \psi_T`; ``increments.sum(-1) + terminal`` are the final
        log-weights (what contrastive twist learning reads). ``None`` when a run resampled.
    :ivar reward_evaluations: rewards evaluated, :math:`K N`.
    """

    log_z: torch.Tensor
    tokens: torch.Tensor
    log_weights: torch.Tensor
    log_prior: torch.Tensor
    reward: torch.Tensor
    ess: torch.Tensor
    resampling_steps: torch.Tensor
    conditional: bool
    increments: torch.Tensor | None
    terminal: torch.Tensor | None
    reward_evaluations: int

    @property
    def num_runs(self) -> int:
        return int(self.log_z.numel())

    @property
    def num_particles(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def log_z_mean(self) -> float:
        r"""The mean of :math:`\log\hat Z` over runs: a lower bound of :math:`\log Z` in expectation (an upper bound
        for a conditional run)."""
        return float(self.log_z.mean())

    @property
    def log_z_se(self) -> float:
        """The standard error of :attr:`log_z_mean` over the runs (NaN with one run or an infinite run)."""
        if self.num_runs < 2 or not torch.isfinite(self.log_z).all():
            return math.nan
        return float(self.log_z.std() / math.sqrt(self.num_runs))

    @property
    def log_z_pooled(self) -> float:
        r""":math:`\log\frac1K\sum_k \hat Z_k`: the runs' unbiased :math:`\hat Z` pooled (still a lower bound in
        expectation for an unconditional run, and a tighter one)."""
        return float(torch.logsumexp(self.log_z, 0) - math.log(self.num_runs))


def systematic_resample(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Systematic resampling of each row of normalized ``weights`` ``(K, N)``: ancestor indices ``(K, N)``,
    particle :math:`i` takes the ancestor whose cumulative weight first exceeds :math:`(U + i)/N`,
    :math:`U \sim \mathcal U(0, 1)` per row. Each ancestor :math:`j` gets :math:`\lfloor N W_j \rfloor` or
    :math:`\lceil N W_j \rceil` copies.

    Example::

        >>> systematic_resample(torch.tensor([[0.5, 0.5, 0.0, 0.0]])).tolist()
        [[0, 0, 1, 1]]
    """
    k, n = weights.shape
    u = (
        torch.rand(k, 1, generator=generator, dtype=torch.float64, device=weights.device)
        + torch.arange(n, device=weights.device)
    ) / n
    cumulative = weights.double().cumsum(-1)
    cumulative[:, -1] = 1.0
    return torch.searchsorted(cumulative, u, right=True).clamp_(max=n - 1)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _minus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b`` with :math:`x - (-\\infty)` read as :math:`-\\infty`: a prefix of twist value :math:`-\\infty`
    has no mass, whatever follows it."""
    return torch.where(torch.isneginf(b), torch.full_like(a, -math.inf), a - b)


def _draw(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of float64 ``log_probs`` ``(B, V)``."""
    return torch.multinomial(log_probs.exp(), 1, replacement=True, generator=generator).squeeze(-1)


@torch.no_grad()
def smc(
    task: Task,
    *,
    num_particles: int,
    num_runs: int = 1,
    twist: Twist | None = None,
    proposal: AutoregressiveLM | None = None,
    resample_threshold: float = 0.5,
    resampling: str = "systematic",
    reference: torch.Tensor | None = None,
    seed: int | None = None,
    max_batch_elements: int = 2**25,
) -> SMCResult:
    r"""Run ``num_runs`` independent (twisted) SMC samplers of ``num_particles`` particles on the task's posterior.

    :param task: the task.
    :param int num_particles: :math:`N \ge 1` per run.
    :param int num_runs: :math:`K \ge 1` independent runs, batched.
    :param twist: a :class:`~bayes_klrl.infer.twists.Twist` (default :class:`~bayes_klrl.infer.twists.ZeroTwist`:
        the bootstrap filter).
    :param proposal: a policy to propose tokens from; ``None`` (default): the prior tilted by the twist.
    :param float resample_threshold: resample a run when its normalized ESS falls below this, in [0, 1]
        (0: never, importance sampling with the twisted proposal).
    :param str resampling: ``systematic`` or ``multinomial`` (conditional runs always resample multinomially).
    :param reference: LongTensor ``(K, T)``, one exact posterior draw per run: conditional SMC (an upper bound).
    :param seed: seeds the draws; ``None`` uses torch's global random stream.
    :param int max_batch_elements: the runs move in batches of at most this many particle × vocabulary entries
        (at least one run per batch), which bounds the memory of the float64 ``(rows, V)`` weights.

    Example::

        >>> result = smc(task, num_particles=256, num_runs=8, seed=0)
        >>> result.log_z.shape, result.log_z_mean <= exact_posterior(task).log_z + 3 * result.log_z_se
        (torch.Size([8]), True)
    """
    n = _check_int("num_particles", num_particles, 1)
    k = _check_int("num_runs", num_runs, 1)
    if not (isinstance(resample_threshold, (int, float)) and 0.0 <= resample_threshold <= 1.0):
        raise ValueError(f"resample_threshold must be in [0, 1], got {resample_threshold!r}")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {', '.join(RESAMPLING)}, got {resampling!r}")
    twist = ZeroTwist(task.vocab_size) if twist is None else twist
    if twist.vocab_size != task.vocab_size:
        raise ValueError(f"the twist has vocab_size {twist.vocab_size}; the task has {task.vocab_size}")
    if proposal is not None and proposal.vocab_size != task.vocab_size:
        raise ValueError(f"the proposal has vocab_size {proposal.vocab_size}; the task has {task.vocab_size}")
    length = task.length
    device = task.prior.device
    conditional = reference is not None
    if conditional:
        if reference.dtype != torch.long or tuple(reference.shape) != (k, length):
            raise ValueError(f"reference must be a LongTensor of shape ({k}, {length}): one exact draw per run")
        reference = reference.to(device)
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    runs_per_batch = max(1, max_batch_elements // (n * task.vocab_size))
    if k > runs_per_batch:  # the runs are independent: move them in batches that fit
        parts = []
        for start in range(0, k, runs_per_batch):
            stop = min(k, start + runs_per_batch)
            parts.append(
                _run(task, n, stop - start, twist, proposal, resample_threshold, resampling,
                     None if reference is None else reference[start:stop], generator)
            )  # fmt: skip
        return _concatenate(parts)
    return _run(task, n, k, twist, proposal, resample_threshold, resampling, reference, generator)


def _concatenate(parts: list[SMCResult]) -> SMCResult:
    """Batches of runs as one result (runs along dim 0)."""

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    names = (
        "log_z",
        "tokens",
        "log_weights",
        "log_prior",
        "reward",
        "ess",
        "resampling_steps",
        "increments",
        "terminal",
    )
    return SMCResult(
        **{name: cat(name) for name in names},
        conditional=parts[0].conditional,
        reward_evaluations=sum(p.reward_evaluations for p in parts),
    )


def _run(task, n, k, twist, proposal, resample_threshold, resampling, reference, generator) -> SMCResult:
    """One batch of ``k`` runs of ``n`` particles (:func:`smc`)."""
    prior, length, beta = task.prior, task.length, task.beta
    device = prior.device
    conditional = reference is not None
    b = k * n
    ref_rows = torch.arange(k, device=device) * n  # particle 0 of each run
    prior_logits, prior_state = prior.start(b)
    psi, twist_state = twist.start(b, prior_logits)
    if proposal is not None:
        q_logits, q_state = proposal.start(b)
    tokens = torch.empty(b, length, dtype=torch.long, device=device)
    log_prior = torch.zeros(b, dtype=torch.float64, device=device)
    psi_before = torch.zeros(b, dtype=torch.float64, device=device)  # ψ_{t-1}(x<t), ψ_0 = 0
    log_w = torch.zeros(k, n, dtype=torch.float64, device=device)  # since the last resampling
    log_z = torch.zeros(k, dtype=torch.float64, device=device)
    resampled = torch.zeros(k, dtype=torch.long, device=device)
    increments = torch.zeros(b, length, dtype=torch.float64, device=device)  # dropped at the first resampling
    for t in range(length):
        lp = torch.log_softmax(prior_logits.double(), -1)  # log π0(· | x<t), (B, V)
        psi = psi.detach().double()
        if proposal is None:
            lq, c = twisted_proposal_log_probs(lp, psi)
        else:
            lq = torch.log_softmax(q_logits.detach().double(), -1)
        x_t = _draw(lq, generator)  # (B,)
        if conditional:
            x_t[ref_rows] = reference[:, t]
        tokens[:, t] = x_t
        lp_x = lp.gather(-1, x_t[:, None]).squeeze(-1)
        psi_x = psi.gather(-1, x_t[:, None]).squeeze(-1)
        log_prior += lp_x
        if proposal is None:  # Σ_v π0 e^ψ / e^{ψ_{t-1}}: the same for every token drawn
            step_w = _minus(c, psi_before)
        else:
            step_w = _minus(lp_x + psi_x - lq.gather(-1, x_t[:, None]).squeeze(-1), psi_before)
        step_w = torch.where(torch.isneginf(psi_x), torch.full_like(step_w, -math.inf), step_w)
        if increments is not None:
            increments[:, t] = step_w
        log_w += step_w.view(k, n)
        psi_before = psi_x
        if t + 1 == length:
            break
        index = _resample(log_w, log_z, resampled, resample_threshold, resampling, conditional, generator)
        if index is not None:
            tokens, log_prior, psi_before = (v[index] for v in (tokens, log_prior, psi_before))
            increments = None  # only a run that never resampled reports them: no need to carry them along
            x_t = tokens[:, t]
            prior_state = prior.select_state(prior_state, index)
            twist_state = twist.select_state(twist_state, index)
            if proposal is not None:
                q_state = proposal.select_state(q_state, index)
        prior_logits, prior_state = prior.step(x_t, prior_state)
        psi, twist_state = twist.step(x_t, twist_state, prior_logits)
        if proposal is not None:
            q_logits, q_state = proposal.step(x_t, q_state)
    reward = task.rewards(tokens).double().to(device)  # (B,)
    terminal = _minus(reward / beta, psi_before)  # r/β − ψ_T(x): 0 under the exact twist
    terminal = torch.where(torch.isneginf(reward), torch.full_like(terminal, -math.inf), terminal)
    log_w += terminal.view(k, n)
    total = torch.logsumexp(log_w, -1)  # (K,)
    log_z += total - math.log(n)
    ess = torch.where(
        torch.isfinite(total), torch.exp(2 * total - torch.logsumexp(2 * log_w, -1)) / n, torch.zeros_like(total)
    )
    return SMCResult(
        log_z=log_z.cpu(),
        tokens=tokens.view(k, n, length).cpu(),
        log_weights=log_w.cpu(),
        log_prior=log_prior.view(k, n).cpu(),
        reward=reward.view(k, n).cpu(),
        ess=ess.cpu(),
        resampling_steps=resampled.cpu(),
        conditional=conditional,
        increments=increments.view(k, n, length).cpu() if increments is not None else None,
        terminal=terminal.view(k, n).cpu() if increments is not None else None,
        reward_evaluations=b,
    )


def _resample(log_w, log_z, resampled, threshold, resampling, conditional, generator):
    """Resample the runs whose normalized ESS is below ``threshold`` (in place on ``log_w``, ``log_z`` and the
    counts ``resampled``); returns the row index ``(K N,)`` of every particle's ancestor, or ``None``."""
    k, n = log_w.shape
    total = torch.logsumexp(log_w, -1)  # (K,)
    ess = torch.exp(2 * total - torch.logsumexp(2 * log_w, -1)) / n
    ess = torch.where(torch.isfinite(total), ess, torch.zeros_like(ess))  # a run with no mass left: resample
    due = ess < threshold
    if threshold <= 0 or not bool(due.any()):
        return None
    weights = torch.softmax(log_w[due], -1)  # (k', N)
    weights = torch.where(torch.isfinite(total[due])[:, None], weights, torch.full_like(weights, 1.0 / n))
    if conditional:
        ancestors = torch.empty(weights.shape, dtype=torch.long, device=weights.device)
        ancestors[:, 0] = 0  # the reference keeps its own lineage
        if n > 1:
            ancestors[:, 1:] = torch.multinomial(weights, n - 1, replacement=True, generator=generator)
    elif resampling == "systematic":
        ancestors = systematic_resample(weights, generator)
    else:
        ancestors = torch.multinomial(weights, n, replacement=True, generator=generator)
    log_z[due] += total[due] - math.log(n)
    log_w[due] = 0.0
    resampled[due] += 1
    local = torch.arange(n, device=log_w.device).expand(k, n).clone()
    local[due] = ancestors
    return (local + torch.arange(k, device=log_w.device)[:, None] * n).reshape(-1)
