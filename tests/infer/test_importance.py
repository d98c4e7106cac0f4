"""Importance sampling against exact enumeration."""

import math

import pytest
import torch

from bayes_klrl import exact_posterior
from bayes_klrl.infer.importance import importance_sample, khat_label
from bayes_klrl.lm import TabularPolicy

from ..conftest import small_markov_task

SE_BOUND = 3.0  # the "within 3 Monte-Carlo standard errors"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_z_within_three_standard_errors(seed):
    task = small_markov_task(beta=0.8, seed=seed)
    result = importance_sample(task, num_samples=50_000, chunk_size=7_000, seed=seed)
    assert abs(result.log_z - exact_posterior(task).log_z) < SE_BOUND * result.log_z_se
    assert 0 < result.ess <= 1


def posterior_policy(task):
    """A tabular policy equal to π*: each row is the exact conditional π*(x_t | x_<t)."""
    post = exact_posterior(task)
    v, t_max = task.vocab_size, task.length
    policy = TabularPolicy(task.prior, t_max)
    probs = post.log_probs.exp().reshape([v] * t_max)
    rows = []
    for t in range(t_max):
        marginal = probs.sum(dim=tuple(range(t + 1, t_max))) if t + 1 < t_max else probs  # (v,)*(t+1)
        rows.append(torch.log(marginal.reshape(-1, v)).float())
    with torch.no_grad():
        policy.logits.copy_(torch.cat(rows))
    return policy


def test_khat_separates_good_and_poor_proposals():
    task = small_markov_task(beta=0.8, seed=0)
    exact = importance_sample(task, posterior_policy(task), num_samples=4000, seed=0)
    assert exact.khat < 0.5 and exact.khat_label == "good"  # q = π*: every weight equals Z (to float32)
    assert exact.ess == pytest.approx(1.0, abs=1e-6)
    assert exact.log_z == pytest.approx(exact_posterior(task).log_z, abs=1e-5)
    near = posterior_policy(task)
    with torch.no_grad():
        near.logits.add_(0.1 * torch.randn(near.logits.shape, generator=torch.Generator().manual_seed(0)))
    assert importance_sample(task, near, num_samples=4000, seed=0).khat < 0.5
    poor = small_markov_task(beta=0.8, seed=0)
    policy = TabularPolicy(poor.prior, poor.length)
    with torch.no_grad():  # a proposal that almost never emits the rewarded token 0
        policy.logits[:, 0] -= 8.0
    assert importance_sample(poor, policy, num_samples=4000, seed=0).khat > 0.7


def test_all_infeasible_samples_is_a_clear_error():
    task = small_markov_task().replace(reward=lambda x: torch.full((x.shape[0],), -math.inf))
    with pytest.raises(ValueError, match="no support among the samples"):
        importance_sample(task, num_samples=100)


def test_khat_labels():
    assert [khat_label(k) for k in (0.2, 0.6, 0.9, math.inf)] == ["good", "usable", "unreliable", "unreliable"]
