"""Property tests over random small tasks: the inequalities of the theory hold everywhere."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayes_klrl import MarkovLM, Task, exact_posterior, policy_metrics

SLACK = 1e-6  # policies compute log q in float32; sums are float64


@st.composite
def tasks_and_policies(draw):
    v = draw(st.integers(2, 4))
    t = draw(st.integers(1, 4))
    beta = draw(st.floats(1e-3, 1e3))
    scale = draw(st.floats(0.0, 5.0))
    seed = draw(st.integers(0, 2**16))
    hard = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    weights = scale * torch.randn(v, generator=g)

    def reward(x):
        r = weights[x].sum(-1)
        if hard:  # a hard constraint: token 0 must appear
            r = torch.where((x == 0).any(-1), r, torch.full_like(r, -math.inf))
        return r

    task = Task(prior=MarkovLM.random(v, seed=seed), reward=reward, beta=beta, length=t)
    policy = task.make_policy("tabular")
    with torch.no_grad():
        policy.logits.add_(draw(st.floats(0.0, 3.0)) * torch.randn(policy.logits.shape, generator=g))
    return task, policy


@settings(max_examples=60, deadline=None)
@given(tasks_and_policies())
def test_elbo_below_log_z_and_divergences_nonnegative(case):
    task, policy = case
    post = exact_posterior(task)
    m = policy_metrics(task, policy, post)
    assert math.isfinite(post.log_z)
    assert m.elbo <= post.log_z + SLACK
    assert m.kl_q_to_posterior >= -SLACK and m.kl_posterior_to_q >= -SLACK and m.kl_to_prior >= -SLACK
    assert -SLACK <= m.tv_to_posterior <= 1 + SLACK
    if math.isfinite(m.elbo):
        assert abs(m.kl_q_to_posterior - (post.log_z - m.elbo)) < 1e-6 * max(1.0, abs(post.log_z))


@settings(max_examples=40, deadline=None)
@given(tasks_and_policies(), st.integers(0, 2**16))
def test_importance_weights_finite_exactly_where_the_posterior_has_support(case, seed):
    """log w = log π0 + r/β − log q is finite on every sampled sequence with π*(x) > 0 and −inf elsewhere (never
    NaN or +inf), with a perturbed policy as proposal and, over all V^T sequences, with the prior."""
    from bayes_klrl.exact import enumerate_sequences
    from bayes_klrl.infer.importance import importance_log_weights

    task, policy = case
    post = exact_posterior(task)
    x = policy.sample(64, task.length, generator=torch.Generator().manual_seed(seed))
    log_w = importance_log_weights(task, x, policy)
    powers = task.vocab_size ** torch.arange(task.length - 1, -1, -1)
    support = torch.isfinite(post.log_probs[(x * powers).sum(-1)])
    assert torch.equal(torch.isfinite(log_w), support)
    assert not torch.isnan(log_w).any() and not (log_w == math.inf).any()
    every = enumerate_sequences(task.vocab_size, task.length)
    assert torch.equal(torch.isfinite(importance_log_weights(task, every)), torch.isfinite(post.log_probs))
