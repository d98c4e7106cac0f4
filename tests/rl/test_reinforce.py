"""The plain-torch RL trainers: unbiased REINFORCE gradient, equivalence with SVI, convergence."""

import pytest
import torch

from bayes_klrl import exact_elbo, exact_posterior, fit, policy_metrics
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.modelfile import load_task
from bayes_klrl.rl import PPOTrainer, ReinforceTrainer, kl_per_token

from ..conftest import perturbed_policy, small_markov_task

Z_BOUND = 5.0
ABS_SLACK = 1e-4
KL_GOAL = 0.02


def test_reinforce_gradient_is_unbiased():
    task = small_markov_task(beta=0.7, seed=1)
    policy = perturbed_policy(task, scale=0.7, seed=1)
    (exact,) = torch.autograd.grad(exact_elbo(task, policy), policy.logits)
    exact = exact.reshape(-1).double() * task.beta  # ∇J = β ∇ELBO
    trainer = ReinforceTrainer(task, policy, num_sequences=64, lr=1e-12)  # tiny lr: the policy barely moves
    torch.manual_seed(0)
    grads = []
    for _ in range(600):
        trainer.step()
        grads.append(-policy.logits.grad.reshape(-1).double())
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / g.shape[0] ** 0.5
    assert torch.all((mean - exact).abs() <= Z_BOUND * se + ABS_SLACK)


def test_svi_and_reinforce_take_the_same_steps(small_task):
    """Same seed, same batch, Adam: the SVI and KL-in-reward REINFORCE trajectories coincide."""
    a = fit(SVITrainer(small_task, small_task.make_policy(), 128), steps=30, seed=3).policy
    b = fit(ReinforceTrainer(small_task, small_task.make_policy(), 128), steps=30, seed=3).policy
    assert torch.allclose(a.logits, b.logits, atol=1e-4)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased_in_value(small_task, estimator):
    policy = perturbed_policy(small_task, seed=4)
    prior = small_task.prior
    torch.manual_seed(0)
    x = policy.sample(200_000, small_task.length)
    with torch.no_grad():
        k = kl_per_token(policy.token_log_probs(x), prior.token_log_probs(x), estimator).sum(-1)
    exact = policy_metrics(small_task, policy).kl_to_prior
    assert float(k.mean()) == pytest.approx(exact, abs=4 * float(k.std()) / 200_000**0.5)
    if estimator == "k3":
        assert bool((k >= 0).all())


def test_reinforce_reaches_posterior_on_shipped_markov_task():
    task = load_task("markov")
    result = fit(ReinforceTrainer(task, task.make_policy(), num_sequences=1024, lr=0.02), steps=1000, seed=0)
    assert policy_metrics(task, result.policy, exact_posterior(task)).kl_q_to_posterior < KL_GOAL


def test_ppo_k1_moves_towards_posterior_and_k3_is_biased(small_task):
    """k1 in the reward targets π*; k3 in the reward has a biased gradient (score function of
    E_q[ρ − 1] adds β∇CE(π0, q)), and here drives the policy far from π*."""
    post = exact_posterior(small_task)
    start = policy_metrics(small_task, small_task.make_policy(), post).kl_q_to_posterior
    final = {}
    for kl_estimator in ("k1", "k3"):
        trainer = PPOTrainer(small_task, small_task.make_policy(), 256, lr=0.01, kl_estimator=kl_estimator)
        final[kl_estimator] = policy_metrics(small_task, fit(trainer, steps=150, seed=0).policy, post).kl_q_to_posterior
    assert final["k1"] < 0.3 * start
    assert final["k3"] > 2 * final["k1"]


def test_adaptive_kl_controller_moves_beta(small_task):
    trainer = PPOTrainer(small_task, small_task.make_policy(), 128, kl_target=1e-3, kl_horizon=1000)
    fit(trainer, steps=10, seed=0)
    assert trainer.beta > small_task.beta  # KL above target: the controller raises beta


def test_bad_settings():
    task = small_markov_task()
    with pytest.raises(ValueError, match="num_sequences must be >= 2"):
        ReinforceTrainer(task, task.make_policy(), 1)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        PPOTrainer(task, task.make_policy(), 16, kl_estimator="k4")
