"""The identity ELBO = J/β = log Z − KL(q‖π*), checked by exact enumeration."""

import math

import pytest
import torch

from bayes_klrl import CategoricalLM, MarkovLM, Task, exact_elbo, exact_objective, exact_posterior, policy_metrics
from bayes_klrl.exact import enumerate_sequences, exact_forward_kl, posterior_policy
from bayes_klrl.tasks.rewards import KeywordCount

from .conftest import perturbed_policy, small_markov_task

IDENTITY_TOL = 1e-5  # the tolerance for ELBO·β = J
GRAD_TOL = 1e-6
CLOSED_FORM_TOL = 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("beta", [0.1, 0.8, 5.0])
def test_elbo_times_beta_equals_rl_objective(seed, beta):
    task = small_markov_task(beta=beta, seed=seed)
    policy = perturbed_policy(task, scale=1.0, seed=seed)
    elbo, objective = exact_elbo(task, policy), exact_objective(task, policy)
    assert abs(float(elbo.detach()) * beta - float(objective.detach())) < IDENTITY_TOL


@pytest.mark.parametrize("seed", [0, 1])
def test_elbo_gradient_equals_objective_gradient_over_beta(seed):
    task = small_markov_task(beta=0.6, seed=seed)
    policy = perturbed_policy(task, scale=1.0, seed=seed)
    (g_elbo,) = torch.autograd.grad(exact_elbo(task, policy), policy.logits)
    (g_obj,) = torch.autograd.grad(exact_objective(task, policy), policy.logits)
    assert g_elbo.abs().max() > 1e-3  # not trivially zero
    assert torch.allclose(g_elbo, g_obj / task.beta, atol=GRAD_TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_to_posterior_is_log_z_minus_elbo_and_nonnegative(seed):
    task = small_markov_task(seed=seed)
    post = exact_posterior(task)
    m = policy_metrics(task, perturbed_policy(task, seed=seed), post)
    assert m.kl_q_to_posterior == pytest.approx(post.log_z - m.elbo, abs=IDENTITY_TOL)
    assert m.kl_q_to_posterior > 0 and m.kl_posterior_to_q > 0 and 0 < m.tv_to_posterior < 1
    assert m.objective == pytest.approx(task.beta * m.elbo, abs=IDENTITY_TOL)


def test_posterior_normalizes_and_matches_direct_formula(small_task):
    post = exact_posterior(small_task)
    x = enumerate_sequences(3, 3)
    direct = small_task.prior.log_prob(x).double() + small_task.rewards(x).double() / small_task.beta
    assert float(post.log_probs.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert post.log_z == pytest.approx(float(torch.logsumexp(direct, 0)), abs=1e-10)
    top, probs = post.top_k(3)
    assert top.shape == (3, 3) and torch.all(probs[:-1] >= probs[1:])


def test_bandit_matches_closed_form(bandit_task):
    post = exact_posterior(bandit_task)
    log_prior = torch.log_softmax(bandit_task.prior.logits.double(), 0)
    r = torch.linspace(-1, 1, 5).double()
    closed = torch.log_softmax(log_prior + r / bandit_task.beta, 0)
    assert torch.allclose(post.log_probs, closed, atol=CLOSED_FORM_TOL)
    assert post.log_z == pytest.approx(float(torch.logsumexp(log_prior + r / bandit_task.beta, 0)), abs=CLOSED_FORM_TOL)


def test_hard_constraint_is_conditioning(constraint_task):
    post = exact_posterior(constraint_task)
    x = enumerate_sequences(3, 3)
    event = (x == 2).any(-1)
    prior = constraint_task.prior.log_prob(x).double().exp()
    conditioned = torch.where(event, prior, torch.zeros_like(prior)) / prior[event].sum()
    assert torch.allclose(post.log_probs.exp(), conditioned, atol=1e-10)
    assert post.log_z == pytest.approx(math.log(float(prior[event].sum())), abs=1e-10)
    m = policy_metrics(constraint_task, constraint_task.make_policy(), post)  # the prior violates it
    assert m.kl_q_to_posterior == math.inf and m.elbo == -math.inf and math.isfinite(m.kl_posterior_to_q)


def test_refuses_large_tasks_with_clear_message(small_task):
    with pytest.raises(ValueError, match=r"27 sequences, above the exact-enumeration limit of 10"):
        exact_posterior(small_task, max_sequences=10)


def test_empty_posterior_is_an_error():
    task = small_markov_task().replace(reward=lambda x: torch.full((x.shape[0],), -math.inf))
    with pytest.raises(ValueError, match="no sequence has a finite reward"):
        exact_posterior(task)


@pytest.mark.parametrize("batch_size", [5, 65_536], ids=["batched", "one-batch"])
def test_forward_kl_matches_metrics_and_its_closed_form_gradient(batch_size):
    """KL(π*‖q) equals policy_metrics' value, and for a tabular q its gradient is the closed form
    ∂/∂L[h, v] = π*(h)·q(v|h) − π*(h v) (row h = prefix h, π*(h) the posterior marginal of the prefix)."""
    task = small_markov_task(beta=0.6, seed=1)
    post = exact_posterior(task)
    policy = perturbed_policy(task, scale=1.0, seed=1)
    kl = exact_forward_kl(task, policy, post, batch_size=batch_size)
    assert float(kl.detach()) == pytest.approx(policy_metrics(task, policy, post).kl_posterior_to_q, abs=1e-10)
    (grad,) = torch.autograd.grad(kl, policy.logits)
    v, length = task.vocab_size, task.length
    probs = post.log_probs.exp().reshape([v] * length)
    q_rows = torch.softmax(policy.logits.detach().double(), -1)  # (rows, V)
    expected, offset = [], 0
    for t in range(length):
        joint = probs.sum(dim=tuple(range(t + 1, length))) if t + 1 < length else probs  # marginal of x_{≤t}
        joint = joint.reshape(v**t, v)  # (V^t prefixes h, V tokens)
        expected.append(joint.sum(-1, keepdim=True) * q_rows[offset : offset + v**t] - joint)
        offset += v**t
    torch.testing.assert_close(grad.double(), torch.cat(expected), atol=GRAD_TOL, rtol=0)


def test_forward_kl_is_zero_at_the_posterior_and_refuses_large_tasks(small_task):
    q = posterior_policy(small_task)
    assert float(exact_forward_kl(small_task, q).detach()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="exact-enumeration limit"):
        exact_forward_kl(small_task, q, max_sequences=10)


# -- enumeration by prefix against scoring every sequence on its own -----------------------------------------

#: float32 sums of the same per-token terms, in float64 afterwards
PREFIX_TOL = 1e-5


def _toy_task(kind: str) -> Task:
    from bayes_klrl.lm import TinyTransformerLM
    from bayes_klrl.lm.transformer import TransformerConfig

    if kind == "bandit":
        prior, length = CategoricalLM(torch.tensor([0.3, -1.0, 0.5, 2.0])), 1
    elif kind == "markov":
        prior, length = MarkovLM.random(3, seed=4, concentration=2.0), 4
    else:
        prior, length = TinyTransformerLM(TransformerConfig(vocab_size=3, max_length=4, d_model=16), seed=1), 4
    return Task(prior=prior, reward=KeywordCount(keywords=(1,), scale=1.0), beta=0.7, length=length, name=kind)


def _per_sequence(task: Task, policy) -> dict:
    """Exact figures from ``log_prob`` of every sequence, one row each: the reference for the prefix pass."""
    x = enumerate_sequences(task.vocab_size, task.length)
    with torch.no_grad():
        log_prior = task.prior.log_prob(x).double()
    log_q = policy.log_prob(x).double()  # differentiable
    log_joint = log_prior + task.rewards(x).double() / task.beta
    log_z = torch.logsumexp(log_joint, 0)
    log_p = (log_joint - log_z).detach()
    q = log_q.exp()
    return {
        "log_prior": log_prior,
        "log_z": float(log_z),
        "elbo": (q * (log_joint - log_q)).sum(),
        "kl_q_to_posterior": (q * (log_q - log_p)).sum(),
        "kl_posterior_to_q": (log_p.exp() * (log_p - log_q)).sum(),
    }


@pytest.mark.parametrize("batch_size", [2, 7, 65_536], ids=["below-V", "partial-batches", "one-batch"])
@pytest.mark.parametrize("kind", ["bandit", "markov", "transformer"])
def test_prefix_enumeration_equals_per_sequence_scoring(kind, batch_size):
    task = _toy_task(kind)
    policy = task.make_policy("full")
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    reference = _per_sequence(task, policy)
    post = exact_posterior(task, batch_size=batch_size)
    torch.testing.assert_close(post.log_prior, reference["log_prior"], atol=PREFIX_TOL, rtol=0)
    assert post.log_z == pytest.approx(reference["log_z"], abs=PREFIX_TOL)
    m = policy_metrics(task, policy, post, batch_size=batch_size)
    for name in ("elbo", "kl_q_to_posterior", "kl_posterior_to_q"):
        assert getattr(m, name) == pytest.approx(float(reference[name].detach()), abs=PREFIX_TOL), name
    assert m.kl_q_to_posterior > 0.01
    parameters = [p for p in policy.parameters() if p.requires_grad]
    fast = torch.autograd.grad(exact_elbo(task, policy, batch_size=batch_size), parameters)
    slow = torch.autograd.grad(reference["elbo"], parameters)
    for a, b in zip(fast, slow):
        assert a.abs().max() > 0 or b.abs().max() == 0
        torch.testing.assert_close(a.double(), b.double(), atol=GRAD_TOL * 10, rtol=1e-4)
    forward = exact_forward_kl(task, policy, post, batch_size=batch_size)
    assert float(forward.detach()) == pytest.approx(float(reference["kl_posterior_to_q"].detach()), abs=PREFIX_TOL)


def test_exact_gradients_with_a_tabular_policy_match_per_sequence_scoring(small_task):
    policy = perturbed_policy(small_task, scale=1.0, seed=3)
    reference = _per_sequence(small_task, policy)
    (fast,) = torch.autograd.grad(exact_elbo(small_task, policy, batch_size=4), policy.logits)
    (slow,) = torch.autograd.grad(reference["elbo"], policy.logits)
    assert slow.abs().max() > 1e-3
    torch.testing.assert_close(fast.double(), slow.double(), atol=GRAD_TOL, rtol=0)
