r"""Exact inference by enumerating all :math:`V^T` sequences in vectorized batches.

.. math::

    \log Z = \log \sum_x \pi_0(x) e^{r(x)/\beta}, \qquad \pi^*(x) = \pi_0(x) e^{r(x)/\beta} / Z,

and for any policy :math:`q`:
:math:`\mathrm{ELBO}(q) = \sum_x q(x)[\log\pi_0(x) + r(x)/\beta - \log q(x)]`,
:math:`J(q) = \sum_x q(x) r(x) - \beta\,\mathrm{KL}(q\|\pi_0)`,
:math:`\mathrm{KL}(q\|\pi^*) = \log Z - \mathrm{ELBO}(q)`, :math:`\mathrm{KL}(\pi^*\|q)` (differentiable:
:func:`exact_forward_kl`) and total variation.
Sequences are enumerated by prefix: sequence number :math:`c = pV + v` (lexicographic order,
:func:`~bayes_klrl.sequences.sequences_from_codes`) is the prefix :math:`x_{<T}` number :math:`p` followed by
token :math:`v`, and one teacher-forced pass over a batch of prefixes
(:meth:`~bayes_klrl.lm.AutoregressiveLM.next_token_log_probs`) gives all :math:`V` of their continuations,

.. math:: \log p(x_{<T}\, v) = \sum_{t<T} \log p(x_t \mid x_{<t}) + \log p(v \mid x_{<T}),

so an LM runs :math:`V^{T-1}` rows instead of :math:`V^T`. Each batch is scored once into a
:class:`~bayes_klrl.samples.ScoredSamples`; batches hold at most ``batch_size`` sequences, so memory stays bounded.
Sums are taken in float64. Tasks larger than ``max_sequences`` are refused with a :class:`ValueError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lm import AutoregressiveLM, TabularPolicy
from .samples import ScoredSamples
from .sequences import sequence_codes, sequences_from_codes
from .task import DEFAULT_MAX_ENUMERATION, Task

__all__ = [
    "ExactPosterior",
    "PolicyMetrics",
    "continuation_log_probs",
    "enumerate_sequences",
    "exact_posterior",
    "exact_elbo",
    "exact_forward_kl",
    "exact_objective",
    "policy_metrics",
    "posterior_policy",
    "total_variation",
]

DEFAULT_BATCH_SIZE = 65_536


def enumerate_sequences(vocab_size: int, length: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    r"""Sequences number ``start .. stop-1`` of all ``V^T`` in lexicographic order: LongTensor ``(stop-start, T)``.

    Sequence number :math:`c` has tokens :math:`x_t = \lfloor c / V^{T-t} \rfloor \bmod V`
    (:func:`~bayes_klrl.samples.sequences_from_codes`; :func:`~bayes_klrl.samples.sequence_codes` inverts it).

    :raises ValueError: if :math:`V^T` does not fit in int64.

    Example::

        >>> enumerate_sequences(2, 2)
        tensor([[0, 0],
                [0, 1],
                [1, 0],
                [1, 1]])
    """
    stop = vocab_size**length if stop is None else stop
    return sequences_from_codes(torch.arange(start, stop, dtype=torch.long), vocab_size, length)  # (stop-start, T)


def _check_size(task: Task, max_sequences: int) -> None:
    if task.num_sequences > max_sequences:
        raise ValueError(
            f"task '{task.name}' has V^T = {task.vocab_size}^{task.length} = {task.num_sequences:,} sequences, "
            f"above the exact-enumeration limit of {max_sequences:,} (raise max_sequences, or use sampling methods)"
        )


def _prefix_batches(task: Task, batch_size: int):
    r"""The prefixes :math:`x_{<T}` in lexicographic batches of at most ``max(1, batch_size // V)``: yields
    ``(start, prefixes)`` with ``prefixes`` LongTensor ``(B, T-1)`` numbered ``start .. start+B-1``."""
    v, length = task.vocab_size, task.length
    num_prefixes = v ** (length - 1)
    per_batch = max(1, batch_size // v)
    for start in range(0, num_prefixes, per_batch):
        stop = min(start + per_batch, num_prefixes)
        yield start, enumerate_sequences(v, length - 1, start, stop)  # (B, T-1)


def continuation_log_probs(lm: AutoregressiveLM, prefixes: torch.Tensor) -> torch.Tensor:
    r""":math:`\log p(x_{<T}\,v)` of every one-token continuation of ``prefixes`` ``(B, T-1)``: float64
    ``(B·V,)``, row :math:`bV + v` for prefix :math:`b` and token :math:`v` (the lexicographic order of the
    continuations), from one teacher-forced pass; differentiable.

    Example::

        >>> prefixes = enumerate_sequences(task.vocab_size, task.length - 1)
        >>> x = enumerate_sequences(task.vocab_size, task.length)
        >>> torch.allclose(continuation_log_probs(task.prior, prefixes), task.prior.log_prob(x).double())
        True
    """
    prefixes = prefixes.to(lm.device)
    num_prefixes = prefixes.shape[0]
    # the last input token is never read (causality): any token stands in for it
    inputs = torch.cat([prefixes, prefixes.new_zeros(num_prefixes, 1)], dim=1)  # (B, T)
    log_probs = lm.next_token_log_probs(inputs)  # (B, T, V)
    prefix = log_probs[:, :-1].gather(-1, prefixes[..., None]).squeeze(-1).sum(-1)  # (B,) log p(x_<T)
    # summed in the LM's dtype, token by token as lm.log_prob does, so both give the same numbers
    return (prefix[:, None] + log_probs[:, -1]).reshape(-1).double()  # (B·V,)


def _scored_batches(task: Task, batch_size: int, policy: AutoregressiveLM | None = None):
    """Every sequence in lexicographic batches, each a :class:`ScoredSamples` on the CPU; with ``policy``,
    ``log_q`` is its log-probability, computed with gradients (the prior's without)."""
    v, length = task.vocab_size, task.length
    for start, prefixes in _prefix_batches(task, batch_size):
        x = enumerate_sequences(v, length, start * v, (start + prefixes.shape[0]) * v)  # (B·V, T)
        x = x.to(task.prior.device)
        with torch.no_grad():
            log_prior = continuation_log_probs(task.prior, prefixes).cpu()  # (B·V,)
            reward = task.rewards(x).double().cpu()  # (B·V,)
        if policy is None:
            log_q = None
        elif policy is task.prior:
            log_q = log_prior
        else:
            log_q = continuation_log_probs(policy, prefixes).cpu()  # (B·V,) differentiable
        yield ScoredSamples(tokens=x.cpu(), log_prior=log_prior, reward=reward, beta=task.beta, log_q=log_q)


def _log_probs(task: Task, lm: AutoregressiveLM, batch_size: int) -> torch.Tensor:
    r""":math:`\log p(x)` of ``lm`` at every sequence, float64 ``(V^T,)`` in enumeration order (with gradients
    when enabled, except for the prior)."""
    chunks = []
    for _, prefixes in _prefix_batches(task, batch_size):
        if lm is task.prior:
            with torch.no_grad():
                chunks.append(continuation_log_probs(lm, prefixes).cpu())
        else:
            chunks.append(continuation_log_probs(lm, prefixes).cpu())
    return torch.cat(chunks)  # (V^T,)


@dataclass(frozen=True)
class ExactPosterior:
    r"""The enumerated posterior of a task.

    :ivar log_z: :math:`\log Z`.
    :ivar expected_reward: :math:`\mathbb{E}_{\pi^*}[r]`.
    :ivar entropy: :math:`H(\pi^*)` in nats.
    :ivar kl_to_prior: :math:`\mathrm{KL}(\pi^* \| \pi_0)`.
    :ivar log_prior: :math:`\log\pi_0(x)` for all sequences, float64 ``(V^T,)`` in enumeration order.
    :ivar rewards: :math:`r(x)`, float64 ``(V^T,)``.
    :ivar log_probs: :math:`\log\pi^*(x)`, float64 ``(V^T,)``.
    :ivar vocab_size: :math:`V`; ``length``: :math:`T`.
    """

    log_z: float
    expected_reward: float
    entropy: float
    kl_to_prior: float
    log_prior: torch.Tensor
    rewards: torch.Tensor
    log_probs: torch.Tensor
    vocab_size: int
    length: int

    def top_k(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most probable sequences ``(k, T)`` and their probabilities ``(k,)``."""
        probs, idx = torch.topk(self.log_probs.exp(), min(k, self.log_probs.numel()))
        return enumerate_sequences(self.vocab_size, self.length)[idx], probs


def posterior_policy(task: Task, posterior: ExactPosterior | None = None) -> TabularPolicy:
    r"""A :class:`~bayes_klrl.lm.TabularPolicy` equal to :math:`\pi^*`: the row of each prefix is the exact
    conditional :math:`\pi^*(x_t \mid x_{<t})`, from the enumerated posterior's marginals.

    The reference point for proposals and policies: its ELBO is :math:`\log Z`, its importance weights are all
    :math:`Z`. Zero-probability prefixes get uniform rows (their logits are all :math:`-\infty`, made 0).

    Example::

        >>> q = posterior_policy(task)
        >>> bool(abs(exact_elbo(task, q) - exact_posterior(task).log_z) < 1e-5)
        True
    """
    post = exact_posterior(task) if posterior is None else posterior
    v, length = task.vocab_size, task.length
    probs = post.log_probs.exp().reshape([v] * length)
    rows = []
    for t in range(length):
        marginal = probs.sum(dim=tuple(range(t + 1, length))) if t + 1 < length else probs  # (v,)*(t+1)
        logits = torch.log(marginal.reshape(-1, v))
        logits = torch.where(torch.isinf(logits).all(-1, keepdim=True), torch.zeros_like(logits), logits)
        rows.append(logits.float())
    policy = TabularPolicy(task.prior, length)
    with torch.no_grad():
        policy.logits.copy_(torch.cat(rows).to(policy.logits.device))
    return policy


def _expectation(log_p: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum p\\,v` with the convention 0·(±inf) = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * values, torch.zeros_like(values)).sum()


@torch.no_grad()
def exact_posterior(
    task: Task, *, max_sequences: int = DEFAULT_MAX_ENUMERATION, batch_size: int = DEFAULT_BATCH_SIZE
) -> ExactPosterior:
    r"""Enumerate the task's posterior :math:`\pi^*`.

    :raises ValueError: if :math:`V^T` exceeds ``max_sequences``, or no sequence has a finite reward.

    Example::

        >>> post = exact_posterior(task)
        >>> round(float(post.log_probs.exp().sum()), 12)
        1.0
    """
    _check_size(task, max_sequences)
    log_prior, rewards, log_joint = [], [], []
    for batch in _scored_batches(task, batch_size):  # the tokens of each batch are dropped, their scores kept
        log_prior.append(batch.log_prior)
        rewards.append(batch.reward)
        log_joint.append(batch.log_target)  # log π0 + r/β, (B,)
    log_prior, rewards, log_joint = torch.cat(log_prior), torch.cat(rewards), torch.cat(log_joint)  # (V^T,)
    log_z = torch.logsumexp(log_joint, 0)
    if not torch.isfinite(log_z):
        raise ValueError(f"task '{task.name}': no sequence has a finite reward, the posterior is empty (log Z = -inf)")
    log_probs = log_joint - log_z
    return ExactPosterior(
        log_z=float(log_z),
        expected_reward=float(_expectation(log_probs, rewards)),
        entropy=float(-_expectation(log_probs, log_probs)),
        kl_to_prior=float(_expectation(log_probs, log_probs - log_prior)),
        log_prior=log_prior,
        rewards=rewards,
        log_probs=log_probs,
        vocab_size=task.vocab_size,
        length=task.length,
    )


def exact_elbo(
    task: Task,
    policy: AutoregressiveLM,
    *,
    max_sequences: int = DEFAULT_MAX_ENUMERATION,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    r"""Exact, differentiable :math:`\mathrm{ELBO}(q) = \sum_x q(x)[\log\pi_0(x) + r(x)/\beta - \log q(x)]` (float64).

    Example::

        >>> exact_elbo(task, task.make_policy()).item() <= exact_posterior(task).log_z
        True
    """
    _check_size(task, max_sequences)
    total = torch.zeros((), dtype=torch.float64)
    for batch in _scored_batches(task, batch_size, policy):
        total = total + _expectation(batch.log_q, batch.log_weight)  # Σ q (log π0 + r/β − log q)
    return total


def exact_objective(
    task: Task,
    policy: AutoregressiveLM,
    *,
    max_sequences: int = DEFAULT_MAX_ENUMERATION,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    r"""Exact, differentiable KL-regularized RL objective :math:`J(q) = \mathbb{E}_q[r] - \beta\,\mathrm{KL}(q\|\pi_0)`.

    Computed as a reward term and a KL term, independently of :func:`exact_elbo`, so the identity
    :math:`J = \beta\cdot\mathrm{ELBO}` can be checked numerically.
    """
    _check_size(task, max_sequences)
    expected_reward = torch.zeros((), dtype=torch.float64)
    kl = torch.zeros((), dtype=torch.float64)
    for batch in _scored_batches(task, batch_size, policy):
        expected_reward = expected_reward + _expectation(batch.log_q, batch.reward)
        kl = kl + _expectation(batch.log_q, batch.log_q - batch.log_prior)
    return expected_reward - task.beta * kl


def exact_forward_kl(
    task: Task,
    policy: AutoregressiveLM,
    posterior: ExactPosterior | None = None,
    *,
    max_sequences: int = DEFAULT_MAX_ENUMERATION,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    r"""Exact, differentiable :math:`\mathrm{KL}(\pi^*\|q) = \sum_x \pi^*(x)[\log\pi^*(x) - \log q(x)]` (float64).

    The forward (mass-covering) KL that distributional policy gradient (DPG/GDC) minimizes; its gradient
    :math:`-\sum_x \pi^*(x)\nabla\log q(x)` is the one DPG estimates by importance sampling. Terms with
    :math:`\pi^*(x) = 0` count 0; the KL is :math:`+\infty` where :math:`q(x) = 0 < \pi^*(x)`.

    :param posterior: the enumerated posterior, if already computed (else :func:`exact_posterior`).
    :raises ValueError: if :math:`V^T` exceeds ``max_sequences``.

    Example::

        >>> kl = exact_forward_kl(task, policy)
        >>> kl.backward()         # the exact gradient DPG estimates
    """
    _check_size(task, max_sequences)
    posterior = posterior if posterior is not None else exact_posterior(task, max_sequences=max_sequences)
    log_q = _log_probs(task, policy, batch_size)  # (V^T,) differentiable
    log_p = posterior.log_probs  # (V^T,)
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(log_q)).sum()


@dataclass(frozen=True)
class PolicyMetrics:
    r"""Exact figures of a policy :math:`q` against the task's posterior (nats).

    ``kl_q_to_posterior`` is ``inf`` when :math:`q` puts mass where :math:`\pi^*` has none
    (a hard constraint that the policy does not fully respect); ``elbo`` and ``expected_reward`` are then
    ``-inf``. For such tasks the last three fields say what remains finite: ``infeasible_mass``
    :math:`q(\bar F)` on the sequences the constraint forbids (reward :math:`-\infty`), and, for :math:`q_F`, the
    policy conditioned on the feasible set :math:`F`, ``kl_feasible_to_posterior`` :math:`\mathrm{KL}(q_F\|\pi^*)`
    and ``expected_reward_feasible`` :math:`\mathbb{E}_q[r \mid F]` (``None`` for tasks without a hard constraint).
    """

    elbo: float
    objective: float
    kl_q_to_posterior: float
    kl_posterior_to_q: float
    tv_to_posterior: float
    expected_reward: float
    kl_to_prior: float
    entropy: float
    infeasible_mass: float | None = None
    kl_feasible_to_posterior: float | None = None
    expected_reward_feasible: float | None = None


@torch.no_grad()
def policy_metrics(
    task: Task,
    policy: AutoregressiveLM,
    posterior: ExactPosterior | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PolicyMetrics:
    r"""Score ``policy`` against the exact posterior (enumerated if not given).

    Example::

        >>> m = policy_metrics(task, task.make_policy())    # the policy starts at the prior
        >>> round(m.kl_to_prior, 6)
        0.0
    """
    posterior = posterior if posterior is not None else exact_posterior(task, batch_size=batch_size)
    log_q = _log_probs(task, policy, batch_size)  # (V^T,)
    log_p, log_prior, r = posterior.log_probs, posterior.log_prior, posterior.rewards
    q, p = log_q.exp(), log_p.exp()
    elbo = _expectation(log_q, log_prior + r / task.beta - log_q)
    expected_reward = _expectation(log_q, r)
    kl_to_prior = _expectation(log_q, log_q - log_prior)
    feasible = torch.isfinite(r)
    constrained = {}
    if not bool(feasible.all()):  # a hard constraint: the figures that stay finite for a full-support q
        log_mass = torch.logsumexp(log_q[feasible], 0)  # log q(F)
        log_q_f = log_q[feasible] - log_mass  # q conditioned on F
        constrained = {
            "infeasible_mass": float(-torch.expm1(log_mass)),
            "kl_feasible_to_posterior": float(_expectation(log_q_f, log_q_f - log_p[feasible])),
            "expected_reward_feasible": float(_expectation(log_q_f, r[feasible])),
        }
    return PolicyMetrics(
        elbo=float(elbo),
        objective=float(expected_reward - task.beta * kl_to_prior),
        kl_q_to_posterior=float(_expectation(log_q, log_q - log_p)),
        kl_posterior_to_q=float(_expectation(log_p, log_p - log_q)),
        tv_to_posterior=float(0.5 * (q - p).abs().sum()),
        expected_reward=float(expected_reward),
        kl_to_prior=float(kl_to_prior),
        entropy=float(-_expectation(log_q, log_q)),
        **constrained,
    )


def _empirical_probs(sequences: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Frequencies of ``sequences`` ``(N, T)`` over all :math:`V^T` sequences, lexicographic order, float64."""
    length = sequences.shape[-1]
    codes = sequence_codes(sequences.reshape(-1, length).cpu(), vocab_size)  # (N,)
    return torch.bincount(codes, minlength=vocab_size**length).double() / codes.numel()


def total_variation(sequences: torch.Tensor, log_probs: torch.Tensor, vocab_size: int) -> float:
    r"""Total variation :math:`\tfrac12\sum_x |\hat p(x) - p(x)|` between the empirical distribution of
    ``sequences`` ``(..., T)`` and ``log_probs`` over all :math:`V^T` sequences (lexicographic order).

    Example::

        >>> result = run_mcmc(task, "gibbs", num_chains=8, num_samples=2000, seed=0)
        >>> total_variation(result.draws, exact_posterior(task).log_probs, task.vocab_size) < 0.5
        True
    """
    freq = _empirical_probs(sequences, vocab_size)
    if freq.numel() != log_probs.numel():
        raise ValueError(f"log_probs has {log_probs.numel()} entries; V^T = {freq.numel()}")
    return float(0.5 * (freq - log_probs.double().cpu().exp()).abs().sum())
