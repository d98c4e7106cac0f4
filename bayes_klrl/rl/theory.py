r"""What each policy-gradient recipe's update estimates, exactly: expected gradients by enumeration and bandit fixed points.

**Expected gradients at a fixed policy.** For a policy :math:`q` with parameters :math:`\theta` and a batch drawn
from :math:`q` itself (on-policy, :math:`q_{\text{old}} = q` in value), the expected gradient of a loss
:math:`\ell(x;\theta)` is :math:`\sum_x \bar q(x)\,\nabla_\theta\ell(x;\theta)`, with :math:`\bar q` the sampling
distribution (:math:`q` detached). On an enumerable task the sum runs over all :math:`V^T` sequences, and the
functions below build it from the very functions the trainer calls (:func:`~bayes_klrl.rl.recipes.kl_loss_terms`,
:func:`~bayes_klrl.rl.recipes.learning_signal`, :func:`~bayes_klrl.rl.recipes.recipe_loss`), so what is tested is
what is trained. With :math:`\rho_t = \pi_0(x_t|x_{<t})/q(x_t|x_{<t})`, :math:`k1_t = -\log\rho_t`,
:math:`q_t = q(x_t|x_{<t})` and all expectations over :math:`x\sim\bar q`:

- KL in the reward (RLOO): :math:`\mathbb{E}[(r - \beta\sum_t k1_t)\nabla\log q(x)] = \nabla J = \beta\nabla\mathrm{ELBO}`;
- k1 in the loss: :math:`\mathbb{E}[\nabla\sum_t k1_t] = \sum_t\mathbb{E}[\nabla\log q_t] = 0`;
- k3 in the loss: :math:`\nabla k3_t = (1-\rho_t)\nabla\log q_t`, so
  :math:`\mathbb{E}[\nabla\sum_t k3_t] = \sum_t \mathbb{E}_{x_{<t}\sim\bar q}\,\nabla_\theta
  \mathrm{KL}(\pi_0(\cdot|x_{<t})\,\|\,q(\cdot|x_{<t}))`, the gradient of :func:`per_token_forward_kl` (prefix
  weights detached);
- k3 with the ratio correction, and k2 (identical sample by sample on-policy):
  :math:`\nabla(k3_t\,q_t/q^{\text{old}}_t) = \nabla\tfrac12(\log\rho_t)^2 = k1_t\nabla\log q_t`, so both give
  :math:`\sum_t\mathbb{E}[k1_t\nabla\log q_t]` (:func:`k1_score_gradient`), whereas
  :math:`\nabla\mathrm{KL}(q\|\pi_0) = \sum_t\mathbb{E}[(\sum_{s\ge t}k1_s)\nabla\log q_t]`: the two agree at
  :math:`T=1` only.

**Bandit fixed points** (:math:`T=1`, softmax policy :math:`q=\mathrm{softmax}(\theta)`, infinite groups). With
:math:`\partial\log q_k/\partial\theta_j = \delta_{kj}-q_j` and an advantage centred under :math:`q`, the reward
term's expected gradient (to be ascended) is :math:`q_j A_j`; the KL terms' expected gradients (to be descended)
are :math:`q_j - \pi_{0,j}` (k3) and :math:`q_j(\log(q_j/\pi_{0,j}) - \mathrm{KL}(q\|\pi_0))` (ratio-corrected k3,
k2). Setting the sum to zero:

- ``rl``: :math:`q = \pi^* \propto \pi_0 e^{r/\beta}`;
- ``grpo`` (k3 in the loss, :math:`A = (r-\mu_q)/(\sigma_q+\epsilon)`): :math:`q_k = \beta\pi_{0,k}/(\beta - A_k)`;
- ``drgrpo`` (k3 in the loss, :math:`A = r-\mu_q`): :math:`q_k = \beta\pi_{0,k}/(\beta - r_k + \mu_q)`;
- ``grpo_corr`` (ratio-corrected k3, standardized :math:`A`): :math:`q \propto \pi_0 e^{r/(\beta s)}` with
  :math:`s = \sigma_q(r)+\epsilon`: the posterior at the effective coefficient :math:`\beta s`, found
  self-consistently; when :math:`\beta` is below a threshold no such interior point exists and the policy
  collapses onto :math:`\arg\max r`.

**The options added to the k1-in-reward recipe**, over arms or the whole sequences of an enumerable task (a
tabular policy reaches any distribution over them):

- an entropy bonus :math:`\alpha` (sequence estimator): :math:`q \propto \pi_0^{\beta/(\beta+\alpha)}e^{r/(\beta+\alpha)}`
  (:func:`entropy_fixed_point`); the per-token estimator ascends :func:`per_token_entropy` (prefix weights fixed),
  the same at :math:`T = 1` only;
- :math:`r` standardized before the KL is added: :math:`q = \pi^*_{\beta s}`, :math:`s = \sigma_q(r) + \epsilon`,
  self-consistent at every :math:`T` (:func:`standardized_reward_fixed_point`);
- :math:`k` phases separated by reference resets: :math:`\pi_0 e^{k r/\beta}` (:func:`reference_reset_fixed_point`);
- a behaviour sampler :math:`\mu` (``behaviour=`` of :func:`expected_recipe_gradient`): sequence-level IS gives
  :math:`\nabla J`, the others do not, yet at :math:`\pi^*` every signal is :math:`\log Z`, so a tabular policy
  settles at :math:`\pi^*` whichever correction is used.

Here :math:`\mu_q = \mathbb{E}_q[r]`, :math:`\sigma_q` the standard deviation of :math:`r` under :math:`q` (the
limit of the group's unbiased standard deviation) and :math:`\epsilon` the recipes' ``GROUP_STD_EPS``.
The derivations are in docs/tutorial.md ("Which RLHF recipes sample the posterior?"); the checks against
enumeration and training in tests/rl/test_recipes.py.

References: Shao et al. (2024) *DeepSeekMath*; Liu et al. (2025) *Understanding R1-Zero-like training*;
Schulman (2020) *Approximating KL divergence*; Korbak, Perez & Buckley (2022) *RL with KL penalties is better
viewed as Bayesian inference*.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..exact import enumerate_sequences, exact_elbo
from ..lm import AutoregressiveLM
from ..task import DEFAULT_MAX_ENUMERATION, Task
from .recipes import GROUP_STD_EPS, PRESETS, Recipe, kl_loss_terms, learning_signal, recipe_loss, token_entropy

__all__ = [
    "BANDIT_CLOSED_FORMS",
    "entropy",
    "entropy_fixed_point",
    "in_reward_expected_gradient",
    "infinite_batch_rewards",
    "per_token_entropy",
    "reference_reset_fixed_point",
    "standardized_reward_fixed_point",
    "bandit_expected_gradient",
    "bandit_fixed_point",
    "elbo_gradient",
    "expected_kl_loss_gradient",
    "expected_kl_reward_gradient",
    "expected_recipe_gradient",
    "infinite_group_advantages",
    "k1_score_gradient",
    "per_token_forward_kl",
    "per_token_forward_kl_gradient",
    "reverse_kl",
    "reverse_kl_gradient",
]


# ---------------------------------------------------------------------------------------------------------------
# Expected gradients at a fixed policy, by enumeration
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Enumeration:
    r"""Every sequence of a task, scored once under the policy (differentiable) and the prior.

    ``weights`` is the sampling distribution :math:`\bar q(x)` (detached, float64) and ``token_log_q`` the
    differentiable :math:`\log q(x_t|x_{<t})`."""

    sequences: torch.Tensor  # (M, T)
    weights: torch.Tensor  # (M,)
    token_log_q: torch.Tensor  # (M, T)
    token_log_prior: torch.Tensor  # (M, T)
    rewards: torch.Tensor  # (M,)
    log_q_next: torch.Tensor | None = None  # (M, T, V), differentiable, when asked for


def _enumerate(task: Task, policy: AutoregressiveLM, max_sequences: int, *, vocab: bool = False) -> _Enumeration:
    if task.num_sequences > max_sequences:
        raise ValueError(
            f"task '{task.name}' has {task.num_sequences:,} sequences, above the enumeration limit {max_sequences:,}"
        )
    x = enumerate_sequences(task.vocab_size, task.length).to(policy.device)  # (M, T)
    log_q_next = policy.next_token_log_probs(x) if vocab else None  # (M, T, V)
    token_log_q = policy.token_log_probs(x) if log_q_next is None else log_q_next.gather(-1, x[..., None]).squeeze(-1)
    with torch.no_grad():
        token_log_prior = task.prior.token_log_probs(x).to(token_log_q.device)  # (M, T)
        rewards = task.rewards(x).to(token_log_q.device)  # (M,)
        weights = token_log_q.detach().double().sum(-1).exp()  # (M,) q̄(x)
    return _Enumeration(x, weights, token_log_q, token_log_prior, rewards, log_q_next)


def _parameters(policy: AutoregressiveLM) -> list[torch.Tensor]:
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no parameters that require gradients")
    return params


def _flat_gradient(value: torch.Tensor, policy: AutoregressiveLM) -> torch.Tensor:
    r""":math:`\nabla_\theta` value, flattened over the policy's trainable parameters, float64 ``(P,)``."""
    params = _parameters(policy)
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double() for p, g in zip(params, grads)])


def expected_kl_loss_gradient(
    task: Task,
    policy: AutoregressiveLM,
    estimator: str = "k3",
    *,
    ratio_correction: bool = False,
    max_sequences: int = DEFAULT_MAX_ENUMERATION,
) -> torch.Tensor:
    r"""Exact expected gradient ``(P,)`` of an in-loss KL term, on-policy:
    :math:`\sum_x \bar q(x)\,\nabla_\theta\sum_t k_t(x)` (times :math:`q_t/q^{\text{old}}_t` with the ratio
    correction), the per-token terms being :func:`~bayes_klrl.rl.recipes.kl_loss_terms` itself.

    It is what the loss term :math:`+\beta\sum_t k_t` of a recipe descends, divided by :math:`\beta` (and without the
    :math:`1/|x|` normalization). Expected values: 0 (k1), :func:`per_token_forward_kl_gradient` (k3),
    :func:`k1_score_gradient` (k2, and k3 with the ratio correction).

    Example::

        >>> expected_kl_loss_gradient(task, policy, "k1").abs().max() < 1e-6   # k1 in the loss: no KL gradient
        tensor(True)
    """
    e = _enumerate(task, policy, max_sequences)
    old = e.token_log_q.detach() if ratio_correction else None  # on-policy: q_old = q in value
    terms = kl_loss_terms(e.token_log_q, e.token_log_prior, estimator, old_token_log_q=old)  # (M, T)
    return _flat_gradient((e.weights * terms.double().sum(-1)).sum(), policy)


def expected_kl_reward_gradient(
    task: Task, policy: AutoregressiveLM, *, beta: float | None = None, max_sequences: int = DEFAULT_MAX_ENUMERATION
) -> torch.Tensor:
    r"""Exact expected score-function gradient ``(P,)`` with the KL in the reward (RLOO, infinite batch):

    .. math:: \mathbb{E}_{\bar q}\big[(R - \mathbb{E}_{\bar q}R)\,\nabla\log q(x)\big],
        \qquad R = r - \beta\textstyle\sum_t k1_t,

    :math:`R` from :func:`~bayes_klrl.rl.recipes.learning_signal`. An ascent direction; it equals
    :math:`\nabla J = \beta\nabla\mathrm{ELBO}` (the baseline does not change the expectation).

    Example::

        >>> torch.allclose(expected_kl_reward_gradient(task, policy), task.beta * elbo_gradient(task, policy), atol=1e-6)
        True
    """
    beta = task.beta if beta is None else beta
    e = _enumerate(task, policy, max_sequences)
    signal = learning_signal(e.rewards, e.token_log_q, e.token_log_prior, beta, PRESETS["rl"]).double()  # (M,)
    centred = signal - (e.weights * signal).sum()
    return _flat_gradient((e.weights * centred * e.token_log_q.double().sum(-1)).sum(), policy)


def infinite_group_advantages(signal: torch.Tensor, weights: torch.Tensor, kind: str) -> torch.Tensor:
    r"""The limit ``(M,)`` of a recipe's advantages as the group (or batch) grows, under sampling weights ``(M,)``.

    ``loo`` and ``group``: :math:`A = R - \mathbb{E}_{\bar q}R`; ``group-std``:
    :math:`A = (R - \mathbb{E}_{\bar q}R)/(\sigma_{\bar q}(R) + \epsilon)`. (A finite group of :math:`G` scales the
    group-centred advantage's expectation by :math:`(G-1)/G`; the standardized one has no such closed form.)

    Example::

        >>> infinite_group_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), "group")
        tensor([-0.5000,  0.5000])
    """
    centred = signal - (weights * signal).sum()
    if kind in ("loo", "group"):
        return centred
    if kind in ("group-std", "batch-std"):
        return centred / ((weights * centred**2).sum().sqrt() + GROUP_STD_EPS)
    raise ValueError(f"unknown advantage {kind!r}")


def infinite_batch_rewards(rewards: torch.Tensor, weights: torch.Tensor, kind: str) -> torch.Tensor:
    r"""The limit ``(M,)`` of :func:`~bayes_klrl.rl.recipes.normalize_rewards` as the group (or batch) grows:
    :math:`r' = (r - \mathbb{E}_{\bar q}r)/(\sigma_{\bar q}(r) + \epsilon)` (``group-std``, ``batch-std``),
    :math:`r` itself for ``none``.

    Example::

        >>> infinite_batch_rewards(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), "none")
        tensor([0., 1.])
    """
    if kind == "none":
        return rewards
    return infinite_group_advantages(rewards, weights, "group-std")


def expected_recipe_gradient(
    task: Task,
    policy: AutoregressiveLM,
    recipe: Recipe | str,
    *,
    beta: float | None = None,
    behaviour: AutoregressiveLM | None = None,
    max_sequences: int = DEFAULT_MAX_ENUMERATION,
) -> torch.Tensor:
    r"""Exact expected gradient ``(P,)`` of :func:`~bayes_klrl.rl.recipes.recipe_loss` on a batch's first update,
    in the limit of infinite batches and groups (advantages from :func:`infinite_group_advantages`):
    :math:`\sum_x \bar q(x)\,\nabla\ell_{\text{recipe}}(x)`, each sequence's loss computed by ``recipe_loss``
    itself. A descent direction: zero at the recipe's fixed point. With a ``behaviour`` policy :math:`\mu` the
    batch is drawn from it, :math:`\sum_x \mu(x)\nabla\ell(x)`, its per-token log-probabilities going to the
    recipe's off-policy correction (sequence-level IS: exactly the on-policy gradient; none: not).

    Example::

        >>> g = expected_recipe_gradient(task, policy, "rl")     # = −∇J
    """
    recipe = PRESETS[recipe] if isinstance(recipe, str) else recipe
    if recipe.kl_gradient != "sampled" or recipe.replay > 1:
        raise ValueError("expected_recipe_gradient covers the on-policy sampled-KL recipes (not analytic, not replay)")
    beta = task.beta if beta is None else beta
    vocab = bool(recipe.entropy_coef) and recipe.entropy_estimator == "token"
    e = _enumerate(task, policy, max_sequences, vocab=vocab)
    old = e.token_log_q.detach()
    behaviour_log_q = None
    if behaviour is not None:
        with torch.no_grad():
            behaviour_log_q = behaviour.token_log_probs(e.sequences).to(old.dtype)  # (M, T)
        e = dataclasses.replace(e, weights=behaviour_log_q.double().sum(-1).exp())
    rewards = infinite_batch_rewards(e.rewards.double(), e.weights, recipe.reward_normalization).to(old.dtype)
    signal = learning_signal(rewards, old, e.token_log_prior, beta, recipe).double()  # (M,)
    advantage = infinite_group_advantages(signal, e.weights, recipe.advantage).to(old.dtype)  # (M,)
    total = torch.zeros((), dtype=torch.float64, device=old.device)
    for i in range(e.sequences.shape[0]):  # recipe_loss averages over its batch: one sequence at a time
        s = slice(i, i + 1)
        log_q_next = None if e.log_q_next is None else e.log_q_next[s]
        mu = None if behaviour_log_q is None else behaviour_log_q[s]
        loss = recipe_loss(
            e.token_log_q[s],
            old[s],
            e.token_log_prior[s],
            advantage[s],
            beta,
            recipe,
            log_q_next=log_q_next,
            behaviour_token_log_q=mu,
        )
        total = total + e.weights[i] * loss.double()
    return _flat_gradient(total, policy)


def elbo_gradient(
    task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION
) -> torch.Tensor:
    r""":math:`\nabla_\theta\mathrm{ELBO}(q)` ``(P,)`` by enumeration (:func:`~bayes_klrl.exact.exact_elbo`).

    Example::

        >>> g = task.beta * elbo_gradient(task, policy)      # ∇J
    """
    return _flat_gradient(exact_elbo(task, policy, max_sequences=max_sequences), policy)


def reverse_kl(task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION) -> torch.Tensor:
    r""":math:`\mathrm{KL}(q\|\pi_0) = \sum_x q(x)\log(q(x)/\pi_0(x))`, differentiable in every factor (float64).

    Example::

        >>> round(reverse_kl(task, task.make_policy()).item(), 5)     # the policy starts at the prior
        0.0
    """
    e = _enumerate(task, policy, max_sequences)
    log_q = e.token_log_q.double().sum(-1)  # (M,)
    return (log_q.exp() * (log_q - e.token_log_prior.double().sum(-1))).sum()


def reverse_kl_gradient(
    task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION
) -> torch.Tensor:
    r""":math:`\nabla_\theta\mathrm{KL}(q\|\pi_0)` ``(P,)``
    :math:`= \sum_t\mathbb{E}_q[(\sum_{s\ge t}k1_s)\nabla\log q(x_t|x_{<t})]`.

    Example::

        >>> g = reverse_kl_gradient(task, policy)
    """
    return _flat_gradient(reverse_kl(task, policy, max_sequences=max_sequences), policy)


def per_token_forward_kl(
    task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION
) -> torch.Tensor:
    r"""The per-token forward KL that k3 in the loss descends, with the prefix distribution held fixed (float64):

    .. math::

        F(q) = \sum_{t=1}^{T}\sum_{x_{<t}} \bar q(x_{<t})\,
            \mathrm{KL}\big(\pi_0(\cdot|x_{<t})\,\|\,q(\cdot|x_{<t})\big).

    Differentiable through the next-token distributions :math:`q(\cdot|x_{<t})` only; the prefix weights
    :math:`\bar q(x_{<t}) = \prod_{s<t} q(x_s|x_{<s})` are **detached**. Its gradient
    :math:`\sum_t \mathbb{E}_{x_{<t}\sim\bar q}[\nabla\mathrm{KL}(\pi_0(\cdot|x_{<t})\|q(\cdot|x_{<t}))]` is what
    :math:`\mathbb{E}_q[\nabla\sum_t k3_t]` equals; the gradient of the same sum with the prefix weights live would
    add :math:`\sum_t\mathbb{E}[\mathrm{KL}_t(x_{<t})\sum_{s<t}\nabla\log q(x_s|x_{<s})]`, which no in-loss k3
    estimates. Enumerates all :math:`\sum_{t<T} V^t` prefixes.

    Example::

        >>> round(per_token_forward_kl(task, task.make_policy()).item(), 5)     # q = π0: zero
        0.0
    """
    if task.num_sequences > max_sequences:
        raise ValueError(
            f"task '{task.name}' has {task.num_sequences:,} sequences, above the enumeration limit {max_sequences:,}"
        )
    total = torch.zeros((), dtype=torch.float64)
    for t in range(task.length):
        prefixes = enumerate_sequences(task.vocab_size, t).to(policy.device)  # (V^t, t)
        log_q_next = torch.log_softmax(policy.next_token_logits(prefixes).double(), -1)  # (V^t, V)
        with torch.no_grad():
            log_p0_next = torch.log_softmax(task.prior.next_token_logits(prefixes).double(), -1)  # (V^t, V)
            if t == 0:
                prefix_weights = torch.ones(1, dtype=torch.float64, device=log_q_next.device)
            else:
                prefix_weights = policy.log_prob(prefixes).double().exp()  # (V^t,) q̄(x_<t), detached
        kl = (log_p0_next.exp() * (log_p0_next - log_q_next)).sum(-1)  # (V^t,) KL(π0(·|x<t) ‖ q(·|x<t))
        total = total + (prefix_weights * kl).sum().cpu()
    return total


def per_token_forward_kl_gradient(
    task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION
) -> torch.Tensor:
    r""":math:`\nabla_\theta F` ``(P,)`` of :func:`per_token_forward_kl` (prefix weights detached).

    Example::

        >>> torch.allclose(
        ...     per_token_forward_kl_gradient(task, policy), expected_kl_loss_gradient(task, policy, "k3"), atol=1e-6
        ... )
        True
    """
    return _flat_gradient(per_token_forward_kl(task, policy, max_sequences=max_sequences), policy)


def k1_score_gradient(
    task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION
) -> torch.Tensor:
    r""":math:`\sum_t\mathbb{E}_{\bar q}[k1_t\,\nabla\log q(x_t|x_{<t})]` ``(P,)``, :math:`k1_t` not differentiated:
    the expected gradient of ratio-corrected k3 and of k2 in the loss. Unlike :func:`reverse_kl_gradient` it
    credits token :math:`t` with its own :math:`k1_t` only, not with the later :math:`k1_s`, :math:`s > t`.

    Example::

        >>> g = k1_score_gradient(task, policy)
    """
    e = _enumerate(task, policy, max_sequences)
    k1 = (e.token_log_q.detach() - e.token_log_prior).double()  # (M, T)
    return _flat_gradient((e.weights[:, None] * k1 * e.token_log_q.double()).sum(), policy)


# ---------------------------------------------------------------------------------------------------------------
# Bandit (T = 1) fixed points in closed form, infinite groups
# ---------------------------------------------------------------------------------------------------------------

#: the recipes whose infinite-group bandit fixed point :func:`bandit_fixed_point` knows
BANDIT_CLOSED_FORMS = ("rl", "grpo", "drgrpo", "grpo_corr")

_BISECTION_STEPS = 200
_SCAN_POINTS = 400
#: a returned fixed point must zero the expected gradient to this accuracy, else RuntimeError
FIXED_POINT_TOLERANCE = 1e-9


def _check_bandit(prior_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    prior = torch.as_tensor(prior_probs, dtype=torch.float64).detach().cpu()
    r = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu()
    if prior.ndim != 1 or r.shape != prior.shape:
        raise ValueError(
            f"prior_probs and rewards must both have shape (V,), got {tuple(prior.shape)}, {tuple(r.shape)}"
        )
    if not bool((prior > 0).all()) or abs(float(prior.sum()) - 1.0) > 1e-6:
        raise ValueError("prior_probs must be positive and sum to 1")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    return prior / prior.sum(), r


def _std(q: torch.Tensor, r: torch.Tensor) -> float:
    mu = (q * r).sum()
    return float((q * (r - mu) ** 2).sum().clamp_min(0).sqrt())


def _k3_stationary(prior: torch.Tensor, r: torch.Tensor, beta: float, scale: float) -> torch.Tensor:
    r"""The distribution :math:`q_k = \beta\pi_{0,k}/(\beta - (r_k-\mu)/s)` whose :math:`\mu` makes it sum to 1.

    :math:`f(\mu) = \sum_k \beta\pi_{0,k}/(\beta - (r_k-\mu)/s)` decreases from :math:`+\infty` at
    :math:`\mu = \max r - \beta s` to at most 1 at :math:`\mu = \max r`: one root, found by bisection; then
    :math:`\sum_k q_k(r_k - \mu) = 0`, so :math:`\mu = \mathbb{E}_q[r]` automatically.
    """
    lo, hi = float(r.max()) - beta * scale, float(r.max())

    def q_of(mu: float) -> torch.Tensor:
        return beta * prior / (beta - (r - mu) / scale)

    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if float(q_of(mid).sum()) > 1.0:
            lo = mid
        else:
            hi = mid
    return q_of(hi)


def _tempered_posterior(prior: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.softmax(prior.log() + r / beta, -1)


def _self_consistent_scale(q_of_scale, r: torch.Tensor, eps: float) -> float:
    r"""The largest root of :math:`h(s) = \sigma_{q(s)}(r) + \epsilon - s` on :math:`[\epsilon, \mathrm{range}(r) + \epsilon]`.

    :math:`h(\epsilon) \ge 0` and :math:`h < 0` at the upper end (a standard deviation is at most half the range),
    so a root exists; a geometric scan finds every sign change and bisection refines the last one, where
    :math:`h` crosses from + to − (the stable root of the iteration :math:`s \leftarrow \sigma_{q(s)} + \epsilon`).
    """
    upper = float(r.max() - r.min()) + eps
    grid = torch.logspace(math.log10(eps), math.log10(upper), _SCAN_POINTS, dtype=torch.float64).tolist()

    def h(s: float) -> float:
        return _std(q_of_scale(s), r) + eps - s

    values = [h(s) for s in grid]
    last = max(i for i in range(len(grid) - 1) if values[i] >= 0 > values[i + 1])
    lo, hi = grid[last], grid[last + 1]
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if h(mid) >= 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def bandit_expected_gradient(
    q: torch.Tensor,
    prior_probs: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    recipe: str,
    *,
    eps: float = GROUP_STD_EPS,
) -> torch.Tensor:
    r"""Closed-form expected gradient ``(V,)`` of a recipe's loss w.r.t. softmax logits at :math:`q`, infinite group.

    .. math::

        g_j = -q_j A_j + \beta\,\partial_{\theta_j}\mathrm{KL}_{\text{est}}, \quad
        \partial_{\theta_j}\mathrm{KL}_{\text{est}} = \begin{cases}
            q_j - \pi_{0,j} & \text{k3 (grpo, drgrpo)}\\
            q_j(\log(q_j/\pi_{0,j}) - \mathrm{KL}(q\|\pi_0)) & \text{ratio-corrected k3 (grpo_corr)}\end{cases}

    and for ``rl`` :math:`g_j = -q_j(R_j - \mathbb{E}_q R)`, :math:`R = r - \beta\log(q/\pi_0)`.
    A descent direction: zero at a fixed point. Cross-checked against enumeration of the trainer's own loss in
    tests/rl/test_recipes.py.

    Example::

        >>> p0 = torch.tensor([0.5, 0.5], dtype=torch.float64); r = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> bandit_expected_gradient(bandit_fixed_point(p0, r, 1.0, "rl"), p0, r, 1.0, "rl").abs().max() < 1e-12
        tensor(True)
    """
    prior, r = _check_bandit(prior_probs, rewards, beta)
    q = torch.as_tensor(q, dtype=torch.float64).detach().cpu()
    log_q = q.clamp_min(torch.finfo(torch.float64).tiny).log()
    log_ratio = log_q - prior.log()  # log q/π0, (V,)
    kl = (q * log_ratio).sum()
    mu = (q * r).sum()
    if recipe == "rl":
        signal = r - beta * log_ratio
        return -q * (signal - (q * signal).sum())
    if recipe == "drgrpo":
        advantage = r - mu
    elif recipe in ("grpo", "grpo_corr"):
        advantage = (r - mu) / (_std(q, r) + eps)
    else:
        raise ValueError(f"no closed-form bandit gradient for recipe {recipe!r}; choose from {BANDIT_CLOSED_FORMS}")
    kl_grad = q * (log_ratio - kl) if recipe == "grpo_corr" else q - prior
    return -q * advantage + beta * kl_grad


def bandit_fixed_point(
    prior_probs: torch.Tensor, rewards: torch.Tensor, beta: float, recipe: str, *, eps: float = GROUP_STD_EPS
) -> torch.Tensor:
    r"""The infinite-group fixed point ``(V,)`` (float64 probabilities) of a recipe on a bandit with a softmax policy.

    - ``rl``: :math:`\pi^*_k \propto \pi_{0,k} e^{r_k/\beta}`.
    - ``grpo``: :math:`q_k = \beta\pi_{0,k}/(\beta - A_k)`, :math:`A_k = (r_k - \mu_q)/(\sigma_q + \epsilon)` under
      :math:`q` itself; for each trial scale :math:`s` the normalizing :math:`\mu` is found by bisection, then
      :math:`s = \sigma_q + \epsilon` by a scan and bisection (largest root). There is always an interior point:
      away from :math:`\arg\max r`, :math:`q_k \approx \beta\pi_{0,k}s/(\mu - r_k)`, so :math:`\sigma_q` is of order
      :math:`\sqrt s \gg s` as :math:`s\to 0`.
    - ``drgrpo``: :math:`q_k = \beta\pi_{0,k}/(\beta - r_k + \mu_q)`, one bisection.
    - ``grpo_corr``: :math:`q = \pi^*_{\beta s}\propto\pi_0 e^{r/(\beta s)}`, :math:`s = \sigma_q(r) + \epsilon`
      (largest root). Below a threshold :math:`\beta_c = \min_\tau \tau/\sigma_{\pi^*_\tau}(r)` the only root is
      :math:`s\approx\epsilon`: the policy collapses onto :math:`\arg\max r` (returned as such, to float64 accuracy).

    The returned point is checked to be a distribution whose :func:`bandit_expected_gradient` is below
    ``FIXED_POINT_TOLERANCE``; :class:`RuntimeError` if not.

    :param prior_probs: :math:`\pi_0`, ``(V,)``, positive, summing to 1.
    :param rewards: :math:`r`, ``(V,)``, finite.
    :param float beta: the KL coefficient.
    :param str recipe: one of :data:`BANDIT_CLOSED_FORMS` (preset names of :mod:`bayes_klrl.rl.recipes`).
    :param float eps: the :math:`\epsilon` of the standardized advantage (the recipes' ``GROUP_STD_EPS``).
    :raises ValueError: for a recipe without a closed form, or invalid inputs.

    Example::

        >>> p0 = torch.full((3,), 1 / 3, dtype=torch.float64)
        >>> bandit_fixed_point(p0, torch.tensor([0.0, 0.5, 1.0]), 0.5, "drgrpo").sum()
        tensor(1., dtype=torch.float64)
    """
    if recipe not in BANDIT_CLOSED_FORMS:
        raise ValueError(f"no closed-form bandit fixed point for recipe {recipe!r}; choose from {BANDIT_CLOSED_FORMS}")
    prior, r = _check_bandit(prior_probs, rewards, beta)
    if float(r.max() - r.min()) == 0.0:  # every advantage is 0 and π0 is stationary for every recipe
        q = prior.clone()
    elif recipe == "rl":
        q = _tempered_posterior(prior, r, beta)
    elif recipe == "drgrpo":
        q = _k3_stationary(prior, r, beta, 1.0)
    elif recipe == "grpo":
        scale = _self_consistent_scale(lambda s: _k3_stationary(prior, r, beta, s), r, eps)
        q = _k3_stationary(prior, r, beta, scale)
    else:  # grpo_corr
        scale = _self_consistent_scale(lambda s: _tempered_posterior(prior, r, beta * s), r, eps)
        q = _tempered_posterior(prior, r, beta * scale)
    if not (bool(torch.isfinite(q).all()) and bool((q >= 0).all()) and abs(float(q.sum()) - 1.0) < 1e-9):
        raise RuntimeError(f"bandit_fixed_point({recipe!r}, beta={beta}) did not produce a distribution: {q}")
    q = q / q.sum()
    residual = float(bandit_expected_gradient(q, prior, r, beta, recipe, eps=eps).abs().max())
    if residual > FIXED_POINT_TOLERANCE:
        raise RuntimeError(f"bandit_fixed_point({recipe!r}, beta={beta}) did not converge: |gradient| = {residual:.2e}")
    return q


# ---------------------------------------------------------------------------------------------------------------
# the entropy bonus, by enumeration
# ---------------------------------------------------------------------------------------------------------------


def entropy(task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION) -> torch.Tensor:
    r""":math:`H(q) = -\sum_x q(x)\log q(x)`, differentiable in every factor (float64). Its gradient
    :math:`\nabla H = \mathbb{E}_q[-\log q(x)\,\nabla\log q(x)]` is what the sequence entropy bonus
    (``entropy_estimator="sequence"``: :math:`-\alpha\log q(x)` in the signal) ascends, times :math:`\alpha`.

    Example::

        >>> h = entropy(task, task.make_policy())     # the prior's entropy
    """
    e = _enumerate(task, policy, max_sequences)
    log_q = e.token_log_q.double().sum(-1)  # (M,)
    return -(log_q.exp() * log_q).sum()


def per_token_entropy(
    task: Task, policy: AutoregressiveLM, *, max_sequences: int = DEFAULT_MAX_ENUMERATION
) -> torch.Tensor:
    r"""The per-token entropy the ``token`` estimator ascends, prefix weights held fixed (float64):
    :math:`\sum_t \sum_{x_{<t}}\bar q(x_{<t})\,H(q(\cdot|x_{<t}))`, differentiable through the next-token
    distributions only (as :func:`per_token_forward_kl`). Equal to :math:`H(q)` in value; its gradient differs from
    :math:`\nabla H(q)` at :math:`T \ge 2` by the prefix weights' score terms.

    Example::

        >>> torch.isclose(per_token_entropy(task, policy), entropy(task, policy))   # same value
        tensor(True)
    """
    if task.num_sequences > max_sequences:
        raise ValueError(
            f"task '{task.name}' has {task.num_sequences:,} sequences, above the enumeration limit {max_sequences:,}"
        )
    total = torch.zeros((), dtype=torch.float64)
    for t in range(task.length):
        prefixes = enumerate_sequences(task.vocab_size, t).to(policy.device)  # (V^t, t)
        log_q_next = torch.log_softmax(policy.next_token_logits(prefixes).double(), -1)  # (V^t, V)
        with torch.no_grad():
            if t == 0:
                prefix_weights = torch.ones(1, dtype=torch.float64, device=log_q_next.device)
            else:
                prefix_weights = policy.log_prob(prefixes).double().exp()  # (V^t,), detached
        total = total + (prefix_weights * token_entropy(log_q_next[:, None, :])[:, 0]).sum().cpu()
    return total


# ---------------------------------------------------------------------------------------------------------------
# KL-in-the-reward options: fixed points over the arms of a bandit, or over the sequences of an enumerable task
# ---------------------------------------------------------------------------------------------------------------


def in_reward_expected_gradient(
    q: torch.Tensor,
    prior_probs: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    *,
    entropy_coef: float = 0.0,
    reward_normalization: str = "none",
    eps: float = GROUP_STD_EPS,
) -> torch.Tensor:
    r"""Expected gradient ``(M,)`` w.r.t. the logits of a softmax over arms (a bandit's tokens, or an enumerable
    task's whole sequences) of a recipe with the k1 KL in the reward, infinite batch:
    :math:`g_k = -q_k(R_k - \mathbb{E}_q R)` with

    .. math:: R = r' - \beta\log(q/\pi_0) - \alpha\log q, \qquad
        r' = r \ \text{or}\ (r - \mathbb{E}_q r)/(\sigma_q(r) + \epsilon)\ \text{(standardized before the KL)}.

    A descent direction: zero at the recipe's fixed point (the sequence entropy estimator; ``loo`` or any
    advantage that is a positive multiple of the centred signal).

    Example::

        >>> p0 = torch.tensor([0.5, 0.5], dtype=torch.float64); r = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> q = entropy_fixed_point(p0, r, 1.0, 0.5)
        >>> in_reward_expected_gradient(q, p0, r, 1.0, entropy_coef=0.5).abs().max() < 1e-12
        tensor(True)
    """
    prior, r = _check_bandit(prior_probs, rewards, beta)
    q = torch.as_tensor(q, dtype=torch.float64).detach().cpu()
    log_q = q.clamp_min(torch.finfo(torch.float64).tiny).log()
    if reward_normalization != "none":
        mu = (q * r).sum()
        r = (r - mu) / (_std(q, r) + eps)
    signal = r - beta * (log_q - prior.log()) - entropy_coef * log_q
    return -q * (signal - (q * signal).sum())


def _certified(q: torch.Tensor, residual: torch.Tensor, what: str) -> torch.Tensor:
    if float(residual.abs().max()) > FIXED_POINT_TOLERANCE:
        raise RuntimeError(f"{what} did not converge: |gradient| = {float(residual.abs().max()):.2e}")
    return q


def entropy_fixed_point(
    prior_probs: torch.Tensor, rewards: torch.Tensor, beta: float, entropy_coef: float
) -> torch.Tensor:
    r"""The fixed point of the k1-in-reward recipe with a sequence entropy bonus :math:`\alpha`:
    :math:`J + \alpha H` is maximized by

    .. math:: q \propto \pi_0^{\beta/(\beta+\alpha)}\,e^{r/(\beta+\alpha)},

    a flattened prior with the reward at temperature :math:`\beta + \alpha`: not :math:`\pi^*` for
    :math:`\alpha > 0`. ``prior_probs`` and ``rewards`` ``(M,)`` over arms or whole sequences. Certified by
    :func:`in_reward_expected_gradient`.

    Example::

        >>> p0 = torch.tensor([0.25, 0.75], dtype=torch.float64)
        >>> entropy_fixed_point(p0, torch.zeros(2), 1.0, 1.0)      # √π0, normalized
        tensor([0.3660, 0.6340], dtype=torch.float64)
    """
    prior, r = _check_bandit(prior_probs, rewards, beta)
    if not (math.isfinite(entropy_coef) and entropy_coef >= 0):
        raise ValueError(f"entropy_coef must be finite and >= 0, got {entropy_coef!r}")
    q = torch.softmax((beta * prior.log() + r) / (beta + entropy_coef), -1)
    residual = in_reward_expected_gradient(q, prior, r, beta, entropy_coef=entropy_coef)
    return _certified(q, residual, f"entropy_fixed_point(beta={beta}, alpha={entropy_coef})")


def standardized_reward_fixed_point(
    prior_probs: torch.Tensor, rewards: torch.Tensor, beta: float, *, eps: float = GROUP_STD_EPS
) -> torch.Tensor:
    r"""The fixed point of a recipe that standardizes :math:`r` before adding the k1 KL to it
    (``reward_normalization="group-std"`` or ``"batch-std"``, OpenRLHF's ``group_norm``), infinite groups:

    .. math:: q = \pi^*_{\beta s} \propto \pi_0\,e^{r/(\beta s)}, \qquad s = \sigma_q(r) + \epsilon,

    found self-consistently (largest root, as ``grpo_corr``). Because the in-reward KL is the exact reverse KL at
    every :math:`T`, this holds over whole sequences, not only at :math:`T = 1`; below a threshold β the only root
    is :math:`s \approx \epsilon` and the policy collapses onto :math:`\arg\max r`. Certified by
    :func:`in_reward_expected_gradient`.

    Example::

        >>> p0 = torch.full((3,), 1 / 3, dtype=torch.float64)
        >>> standardized_reward_fixed_point(p0, torch.tensor([0.0, 0.5, 1.0]), 2.0).sum()
        tensor(1., dtype=torch.float64)
    """
    prior, r = _check_bandit(prior_probs, rewards, beta)
    if float(r.max() - r.min()) == 0.0:
        return prior.clone()
    scale = _self_consistent_scale(lambda s: _tempered_posterior(prior, r, beta * s), r, eps)
    q = _tempered_posterior(prior, r, beta * scale)
    residual = in_reward_expected_gradient(q, prior, r, beta, reward_normalization="group-std", eps=eps)
    return _certified(q, residual, f"standardized_reward_fixed_point(beta={beta})")


def reference_reset_fixed_point(
    prior_probs: torch.Tensor, rewards: torch.Tensor, beta: float, phases: int
) -> torch.Tensor:
    r"""Where the k1-in-reward recipe ends when the reference is replaced by the converged policy
    (``reference_reset_every``) before each of ``phases - 1`` later phases: phase :math:`k` targets
    :math:`\pi^*` with :math:`q_{k-1}` as prior, so

    .. math:: q_k \propto \pi_0\,e^{k\,r/\beta}:

    the posterior at :math:`\beta/k`, the evidence counted :math:`k` times (no stationary posterior: it tends to
    :math:`\arg\max r`). After ``S`` steps with a reset every ``K``, ``phases = (S - 1) // K + 1``.

    Example::

        >>> p0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
        >>> reference_reset_fixed_point(p0, torch.tensor([0.0, 1.0]), 1.0, 2)    # ∝ (1, e²)
        tensor([0.1192, 0.8808], dtype=torch.float64)
    """
    prior, r = _check_bandit(prior_probs, rewards, beta)
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"phases must be a whole number >= 1, got {phases!r}")
    return _tempered_posterior(prior, r, beta / phases)
