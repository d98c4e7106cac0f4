"""REINFORCE with ``kl_gradient="analytic"``: unbiased for ∇J, the same steps as analytic SVI, refused elsewhere."""

import pytest
import torch

from bayes_klrl import exact_elbo, fit
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.rl import ReinforceTrainer
from bayes_klrl.rl.recipes import Recipe

from ..conftest import perturbed_policy, small_markov_task

Z_BOUND = 5.0
ABS_SLACK = 1e-4
SAME_STEPS_ATOL = 1e-4  # SVI and REINFORCE, 30 Adam steps: equal up to float rounding


def test_analytic_reinforce_gradient_is_unbiased():
    task = small_markov_task(beta=0.7, seed=1)
    policy = perturbed_policy(task, scale=0.7, seed=1)
    (exact,) = torch.autograd.grad(exact_elbo(task, policy), policy.logits)
    exact = exact.reshape(-1).double() * task.beta  # ∇J = β ∇ELBO
    trainer = ReinforceTrainer(task, policy, num_sequences=64, lr=1e-12, kl_gradient="analytic")
    torch.manual_seed(0)
    grads = []
    for _ in range(600):
        stats = trainer.step()
        grads.append(-policy.logits.grad.reshape(-1).double())
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / g.shape[0] ** 0.5
    assert torch.all((mean - exact).abs() <= Z_BOUND * se + ABS_SLACK)
    assert stats["exact_kl_estimate"] >= 0


def test_analytic_svi_and_reinforce_take_the_same_steps(small_task):
    a = fit(SVITrainer(small_task, small_task.make_policy(), 128, kl_gradient="analytic"), steps=30, seed=3).policy
    b = fit(ReinforceTrainer(small_task, small_task.make_policy(), 128, kl_gradient="analytic"), steps=30, seed=3)
    assert torch.allclose(a.logits, b.policy.logits, atol=SAME_STEPS_ATOL)
    c = fit(ReinforceTrainer(small_task, small_task.make_policy(), 128), steps=30, seed=3).policy
    assert not torch.allclose(c.logits, b.policy.logits, atol=SAME_STEPS_ATOL)  # another estimator: other steps


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kl_in="loss", kl_estimator="k3"), "needs kl_in='reward'|kl_in='loss'"),
        (dict(kl_in="none"), "kl_in='none'"),
        (dict(kl_estimator="k3"), "kl_estimator applies to 'sampled' only"),
        (dict(advantage="group-std"), "advantage='loo'"),
        (dict(epochs=2), "one update per batch"),
        (dict(kl_gradient="exact"), "unknown kl_gradient"),
    ],
    ids=["in-loss", "none", "k3", "group-std", "epochs", "unknown"],
)
def test_analytic_kl_gradient_is_refused_outside_rloo(options, message):
    options = {"kl_gradient": "analytic", **options}
    with pytest.raises(ValueError, match=message) as info:
        Recipe(**options)
    assert len(str(info.value).splitlines()) == 1
    task = small_markov_task()
    with pytest.raises(ValueError, match=message):
        ReinforceTrainer(task, task.make_policy(), 32, **options)
