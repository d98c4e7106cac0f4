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

Here :math:`\mu_q = \mathbb{E}_q[r]`, :math:`\sigma_q` the standard deviation of :math:`r` under :math:`q` (the
limit of the group's unbiased standard deviation) and :math:`\epsilon` the recipes' ``GROUP_STD_EPS``.
The derivations are in docs/tutorial.md ("Which RLHF recipes sample the posterior?"); the checks against
enumeration and training in tests/rl/test_recipes.py.

References: Shao et al. (2024) *DeepSeekMath*; Liu et al. (2025) *Understanding R1-Zero-like training*;
Schulman (2020) *Approximating KL divergence*; Korbak, Perez & Buckley (2022) *RL with KL penalties is better
viewed as Bayesian inference*.
"""

from __future__ import annotations

import math

import torch

from .recipes import GROUP_STD_EPS

__all__ = [
    "BANDIT_CLOSED_FORMS",
    "bandit_expected_gradient",
    "bandit_fixed_point",
]

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
