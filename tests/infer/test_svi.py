"""SVI on the Pyro program: unbiased gradients, variance ordering, convergence to the exact posterior."""

import pyro
import pytest
import torch

from bayes_klrl import exact_elbo, fit, policy_metrics
from bayes_klrl.exact import exact_posterior
from bayes_klrl.infer.svi import LeaveOneOutELBO, SVITrainer, gradient_samples, gradient_variance
from bayes_klrl.model import PolicyGuide, model, token_site
from bayes_klrl.modelfile import load_task

from ..conftest import perturbed_policy, small_markov_task

Z_BOUND = 5.0  # Monte Carlo z-score allowed per coordinate
ABS_SLACK = 1e-4  # for coordinates a batch almost never visits (standard error ~ 0)
KL_GOAL = 0.02  # the target on the shipped Markov task


def exact_gradient(task, policy):
    (g,) = torch.autograd.grad(exact_elbo(task, policy), policy.logits)
    return g.reshape(-1).double()


@pytest.mark.parametrize("estimator", ["loo", "trace"])
def test_svi_gradient_is_unbiased(estimator):
    task = small_markov_task(beta=0.7, seed=1)
    policy = perturbed_policy(task, scale=0.7, seed=1)
    exact = exact_gradient(task, policy)
    g = gradient_samples(task, policy, estimator, num_sequences=64, num_batches=600, seed=0).double()
    mean, se = g.mean(0), g.std(0) / g.shape[0] ** 0.5
    assert torch.all((mean - exact).abs() <= Z_BOUND * se + ABS_SLACK), float(((mean - exact).abs() / se).max())


def test_biased_estimator_would_be_caught():
    """The check above can fail: a gradient that drops the −log q term of the signal is biased."""
    task = small_markov_task(beta=0.7, seed=1)
    policy = perturbed_policy(task, scale=0.7, seed=1)
    exact = exact_gradient(task, policy)
    pyro.set_rng_seed(0)
    grads = []
    for _ in range(300):
        x = policy.sample(64, task.length)
        log_q = policy.log_prob(x)
        signal = (task.prior.log_prob(x) + task.log_likelihood(x)).detach()  # missing −log q
        (g,) = torch.autograd.grad(((signal - signal.mean()) * log_q).mean(), policy.logits)
        grads.append(g.reshape(-1).double())
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / g.shape[0] ** 0.5
    assert not torch.all((mean - exact).abs() <= Z_BOUND * se + ABS_SLACK)


def test_leave_one_out_has_lower_variance_than_plain_trace_elbo():
    """At the start of training on the shipped task (measured: 0.049 vs 0.231 at N=256, 200 batches)."""
    task = load_task("markov")
    policy = task.make_policy()
    loo = gradient_variance(task, policy, "loo", num_sequences=256, num_batches=100, seed=0)
    plain = gradient_variance(task, policy, "trace", num_sequences=256, num_batches=100, seed=0)
    assert loo.total_variance < 0.5 * plain.total_variance


def test_model_and_guide_sites(small_task):
    policy = small_task.make_policy()
    guide_trace = pyro.poutine.trace(PolicyGuide(policy)).get_trace(small_task, 5)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(small_task, 5)
    names = [token_site(t) for t in range(small_task.length)]
    assert [n for n in guide_trace.nodes if n.startswith("x_")] == names
    x = torch.stack([guide_trace.nodes[n]["value"] for n in names], -1)
    model_trace.compute_log_prob()
    expected = small_task.prior.log_prob(x) + small_task.log_likelihood(x)
    total = sum(model_trace.nodes[n]["log_prob"] for n in [*names, "reward"])
    assert torch.allclose(total, expected, atol=1e-5)


def test_loo_elbo_loss_estimates_elbo(small_task):
    policy = small_task.make_policy()
    pyro.set_rng_seed(0)
    n = 20_000
    estimate = -LeaveOneOutELBO().loss(model, PolicyGuide(policy), small_task, n) / n
    assert estimate == pytest.approx(float(exact_elbo(small_task, policy).detach()), abs=0.03)


def test_svi_reaches_posterior_on_shipped_markov_task():
    task = load_task("markov")
    result = fit(SVITrainer(task, task.make_policy(), num_sequences=1024, lr=0.02), steps=1000, seed=0)
    m = policy_metrics(task, result.policy, exact_posterior(task))
    assert m.kl_q_to_posterior < KL_GOAL


def test_svi_learns_a_hard_constraint(constraint_task):
    """−inf rewards: the policy moves from the prior (TV 0.54) to the conditioned prior (measured 0.020)."""
    post = exact_posterior(constraint_task)
    policy = fit(SVITrainer(constraint_task, constraint_task.make_policy(), 256), steps=300, seed=0).policy
    m = policy_metrics(constraint_task, policy, post)
    assert m.tv_to_posterior < 0.05 and m.kl_posterior_to_q < 0.05
