"""The distributional policy gradient: its estimate of ∇KL(π*‖q) against the enumerated gradient, and training."""

import math

import pytest
import torch

from bayes_klrl import exact_posterior, fit, policy_metrics
from bayes_klrl.exact import exact_forward_kl
from bayes_klrl.rl import DPGTrainer, dpg_coefficients, dpg_surrogate

from ..conftest import perturbed_policy, small_markov_task

#: a coordinate of the mean estimate may sit this many Monte Carlo standard errors from the exact gradient
Z_BOUND = 5.0
#: absolute slack for coordinates whose gradient and variance are both ~0
ABS_SLACK = 1e-4
#: DPG must remove at least this fraction of the initial forward KL
KL_REDUCTION = 0.95
NUM_BATCHES = 500
#: a unigram policy must close all but this fraction of the gap between its start and the family's optimum
FAMILY_OPTIMUM_GAP = 0.05


def _exact_gradient(task, policy, posterior) -> torch.Tensor:
    (grad,) = torch.autograd.grad(exact_forward_kl(task, policy, posterior), policy.logits)
    return grad.reshape(-1).double()


def _within_error(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    mean, se = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    return (mean - exact).abs() <= Z_BOUND * se + ABS_SLACK


def test_exact_forward_kl_matches_policy_metrics(small_task):
    policy = perturbed_policy(small_task, seed=2)
    posterior = exact_posterior(small_task)
    expected = policy_metrics(small_task, policy, posterior).kl_posterior_to_q
    assert float(exact_forward_kl(small_task, policy, posterior).detach()) == pytest.approx(expected, abs=1e-10)
    assert expected > 0.05  # the perturbation moved the policy: the check is not about zeros


def test_coefficients():
    log_w = torch.tensor([0.0, math.log(3.0), -math.inf])
    torch.testing.assert_close(dpg_coefficients(log_w), torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        dpg_coefficients(log_w, log_z=math.log(2.0)), torch.tensor([1 / 6, 0.5, 0.0], dtype=torch.float64)
    )
    assert float(dpg_coefficients(log_w, baseline=True).sum()) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="every importance weight is 0"):
        dpg_coefficients(torch.full((3,), -math.inf))


@pytest.mark.parametrize(
    "normalize,num_sequences",
    [("exact", 32), ("running", 32), ("batch", 256)],
    ids=["exact-log-z-unbiased", "running-z", "self-normalized-batch"],
)
def test_trainer_gradient_matches_exact_forward_kl_gradient(normalize, num_sequences):
    """The trainer's gradient, averaged over batches, equals ∇KL(π*‖q) from enumeration within MC error."""
    task = small_markov_task(beta=0.7, seed=1)
    policy = perturbed_policy(task, scale=0.7, seed=1)
    posterior = exact_posterior(task)
    exact = _exact_gradient(task, policy, posterior)
    kwargs = {"log_z": posterior.log_z} if normalize == "exact" else {"normalize": normalize}
    trainer = DPGTrainer(task, policy, num_sequences=num_sequences, lr=1e-12, **kwargs)  # the policy barely moves
    torch.manual_seed(0)
    grads = []
    for _ in range(NUM_BATCHES):
        trainer.step()
        grads.append(policy.logits.grad.reshape(-1).double().clone())
    ok = _within_error(torch.stack(grads), exact)
    assert bool(ok.all()), f"{int((~ok).sum())} of {ok.numel()} coordinates outside {Z_BOUND} standard errors"


def test_unweighted_score_is_rejected_by_the_same_check():
    """Negative control: without the weights P/q the estimate is E_q[∇log q] = 0, which the check must reject."""
    task = small_markov_task(beta=0.7, seed=1)
    policy = perturbed_policy(task, scale=0.7, seed=1)
    posterior = exact_posterior(task)
    exact = _exact_gradient(task, policy, posterior)
    generator = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(NUM_BATCHES):
        x = policy.sample(32, task.length, generator=generator)
        log_q = policy.log_prob(x)
        (g,) = torch.autograd.grad(dpg_surrogate(log_q, torch.zeros(32)), policy.logits)  # all weights equal
        grads.append(g.reshape(-1).double())
    assert not bool(_within_error(torch.stack(grads), exact).all())


@pytest.mark.parametrize("proposal", ["policy", "prior", "refresh"])
def test_dpg_reduces_forward_kl(proposal):
    task = small_markov_task(beta=0.8, seed=0)
    posterior = exact_posterior(task)
    policy = task.make_policy("tabular")
    before = policy_metrics(task, policy, posterior).kl_posterior_to_q
    result = fit(DPGTrainer(task, policy, num_sequences=256, lr=0.05, proposal=proposal), steps=150, seed=0)
    after = policy_metrics(task, result.policy, posterior).kl_posterior_to_q
    assert before > 0.1
    assert after < (1 - KL_REDUCTION) * before


def test_unigram_policy_reaches_the_moment_matching_optimum():
    """For i.i.d. tokens the forward-KL optimum is closed-form: the token marginals of π* averaged over positions."""
    from bayes_klrl import CategoricalLM
    from bayes_klrl.exact import enumerate_sequences
    from bayes_klrl.tasks.two_modes import two_modes_task

    task = two_modes_task()
    posterior = exact_posterior(task)
    x = enumerate_sequences(task.vocab_size, task.length)
    p = posterior.log_probs.exp()[:, None]  # (V^T, 1)
    marginals = torch.stack([(p * (x == v)).sum(0).mean() for v in range(task.vocab_size)])
    optimum = policy_metrics(task, CategoricalLM(marginals.log()), posterior).kl_posterior_to_q
    policy = task.prior.trainable_copy()
    start = policy_metrics(task, policy, posterior).kl_posterior_to_q
    result = fit(DPGTrainer(task, policy, num_sequences=256, lr=0.05), steps=120, seed=0)
    reached = policy_metrics(task, result.policy, posterior).kl_posterior_to_q
    assert reached - optimum < FAMILY_OPTIMUM_GAP * (start - optimum)


def test_refresh_resumes_to_the_same_policy(tmp_path):
    task = small_markov_task()

    def run(steps, resume):
        trainer = DPGTrainer(task, task.make_policy(), 64, lr=0.05, proposal="refresh")
        return fit(trainer, steps=steps, seed=1, checkpoint_dir=tmp_path, resume=resume).policy

    straight = DPGTrainer(task, task.make_policy(), 64, lr=0.05, proposal="refresh")
    expected = fit(straight, steps=20, seed=1).policy
    run(10, resume=False)
    resumed = run(20, resume=True)
    torch.testing.assert_close(resumed.logits, expected.logits)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"proposal": "mixture"}, "unknown DPG proposal"),
        ({"lr": 0.0}, "lr must be"),
        ({"log_z": math.inf}, "log_z"),
        ({"normalize": "none"}, "unknown normalize"),
    ],
    ids=["proposal", "lr", "log_z", "normalize"],
)
def test_bad_arguments(small_task, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPGTrainer(small_task, small_task.make_policy(), 16, **kwargs)
