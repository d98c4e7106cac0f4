"""Importance sampling against exact enumeration."""

import math

import pytest
import torch

from bayes_klrl import exact_posterior
from bayes_klrl.exact import posterior_policy
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


def test_weights_and_estimate_agree_with_pyro_importance():
    """pyro.infer.Importance runs the model one sequence per trace; its log-weights are ours on its draws."""
    import pyro
    from pyro.infer import EmpiricalMarginal, Importance  # noqa: F401  (EmpiricalMarginal: Pyro's resampler)

    from bayes_klrl.infer.importance import importance_log_weights
    from bayes_klrl.model import model, token_site

    task = small_markov_task(beta=0.8, seed=3)
    pyro.set_rng_seed(0)
    pyro_is = Importance(model, guide=None, num_samples=1500).run(task, 1)
    tokens = torch.stack(
        [
            torch.stack([tr.nodes[token_site(t)]["value"].reshape(()) for t in range(task.length)])
            for tr in pyro_is.exec_traces
        ]
    )  # (N, T)
    pyro_log_w = torch.stack([w.reshape(()) for w in pyro_is.log_weights]).double()
    torch.testing.assert_close(importance_log_weights(task, tokens), pyro_log_w, atol=1e-5, rtol=0)
    ours = importance_sample(task, num_samples=1500, seed=0)
    pyro_log_z = float(pyro_is.get_log_normalizer())
    exact = exact_posterior(task).log_z
    assert abs(pyro_log_z - exact) < SE_BOUND * ours.log_z_se * 1.5  # the same estimator: the same error scale
    assert abs(ours.log_z - exact) < SE_BOUND * ours.log_z_se


def test_khat_rises_with_the_exact_kl():
    """Policies moved further from π* (exact KL(q‖π*) 0 → ~3 nats) get larger Pareto k̂ (Yao et al. 2018).

    k̂ is averaged over three sampling seeds. On a finite space k̂ saturates: far beyond a few nats the samples
    miss π*'s mass altogether and the weights they do see look light-tailed, so the check stops at ~3 nats.
    """
    from bayes_klrl.exact import policy_metrics

    task = small_markov_task(vocab_size=4, length=6, beta=0.5, seed=0)  # 4096 sequences
    post = exact_posterior(task)
    direction = torch.randn(posterior_policy(task).logits.shape, generator=torch.Generator().manual_seed(1))
    kls, khats = [], []
    for scale in (0.0, 0.3, 1.0, 2.5):
        q = posterior_policy(task, post)
        with torch.no_grad():
            q.logits.add_(scale * direction)
        kls.append(policy_metrics(task, q, post).kl_q_to_posterior)
        khats.append(sum(importance_sample(task, q, num_samples=8000, seed=s).khat for s in range(3)) / 3)
    assert kls == sorted(kls) and kls[-1] > 2.0
    assert khats == sorted(khats), (kls, khats)
    assert khats[0] < 0.5 < 0.7 < khats[-1]


def test_nearly_constant_weights_read_as_good_whatever_khat():
    """k̂ ignores the scale of the weights' tail; a near-exact policy is labelled good through max_weight_ratio."""
    task = small_markov_task(vocab_size=4, length=6, beta=0.5, seed=0)
    near = posterior_policy(task)
    with torch.no_grad():
        near.logits.add_(0.02 * torch.randn(near.logits.shape, generator=torch.Generator().manual_seed(0)))
    result = importance_sample(task, near, num_samples=4000, seed=0)
    w = torch.exp(result.log_weights - result.log_weights.max())
    assert result.max_weight_ratio == pytest.approx(float(w.max() / w.mean()), rel=1e-9)
    assert result.max_weight_ratio < 3.0 and result.khat_label == "good"
    assert khat_label(1.2, max_weight_ratio=1.5) == "good" and khat_label(1.2, max_weight_ratio=3.5) == "unreliable"


@pytest.mark.parametrize("proposal", ["prior", "policy"])
def test_draws_are_one_scored_record_and_the_summary_is_weight_summary(proposal):
    from bayes_klrl.samples import ScoredSamples, score, weight_summary

    task = small_markov_task(beta=0.8, seed=0)
    q = None if proposal == "prior" else posterior_policy(task)
    result = importance_sample(task, q, num_samples=900, chunk_size=400, seed=1)
    assert isinstance(result.samples, ScoredSamples) and result.samples.num_samples == 900
    assert torch.equal(result.log_weights, result.samples.log_weight)
    assert result.sequences is result.samples.tokens and result.rewards is result.samples.reward
    rescored = score(task, result.sequences, log_q=task.prior if q is None else q)  # one pass, not in chunks
    torch.testing.assert_close(result.log_weights, rescored.log_weight, atol=1e-6, rtol=0)
    summary = weight_summary(result.log_weights)
    assert (result.log_z, result.log_z_se, result.ess) == (summary.log_z, summary.log_z_se, summary.ess)
    assert (result.max_weight_ratio, result.elbo) == (summary.max_weight_ratio, summary.mean_log_weight)
