"""SMC and twisted SMC against enumeration: the oracle twist, unbiasedness of Z-hat, the two bounds on log Z, exact
posterior draws, the KL bracket, and contrastive twist learning."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_klrl as bk
from bayes_klrl.infer.bounds import NoExactDraws, exact_posterior_draws, kl_bracket, log_z_bounds
from bayes_klrl.infer.smc import smc, systematic_resample
from bayes_klrl.infer.twists import (
    PolicyTwist,
    TableTwist,
    TwistTrainer,
    exact_twist,
    learned_twist,
)
from bayes_klrl.lm.transformer import TinyTransformerLM, TransformerConfig
from bayes_klrl.task import RewardError
from bayes_klrl.tasks.rewards import KeywordCount

from ..conftest import perturbed_policy, small_markov_task

#: the oracle: float32 LMs, log-probabilities summed in float64
ORACLE_TOL = 1e-5
#: z-scores beyond which a Monte Carlo mean is declared off
Z_CRIT = 4.0


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


@pytest.fixture(scope="module")
def pattern_task():
    return bk.load_task("markov_pattern")


@pytest.mark.parametrize("name", ["bandit", "markov", "markov_constraint", "markov_pattern"])
def test_exact_twist_gives_log_z_with_one_particle(name):
    task = bk.load_task(name)
    post = bk.exact_posterior(task)
    twist = exact_twist(task, post)
    for threshold in (0.0, 1.0):
        result = smc(task, num_particles=1, num_runs=4, twist=twist, resample_threshold=threshold, seed=0)
        assert torch.allclose(result.log_z, torch.full_like(result.log_z, post.log_z), atol=ORACLE_TOL, rtol=0)
    many = smc(task, num_particles=8, num_runs=2, twist=twist, resample_threshold=1.0, seed=1)
    assert torch.allclose(many.log_z, torch.full_like(many.log_z, post.log_z), atol=ORACLE_TOL, rtol=0)
    assert torch.allclose(many.ess, torch.ones(2, dtype=torch.float64), atol=1e-6)  # every weight equal


def test_exact_twist_particles_are_posterior_draws():
    task = small_markov_task()
    post = bk.exact_posterior(task)
    result = smc(task, num_particles=20_000, twist=exact_twist(task, post), seed=0)
    codes = bk.sequences.sequence_codes(result.tokens[0], task.vocab_size)
    freq = torch.bincount(codes, minlength=task.num_sequences).double() / codes.numel()
    assert 0.5 * float((freq - post.log_probs.exp()).abs().sum()) < 0.02  # TV of 20,000 draws over 27 cells


def test_bootstrap_at_length_one_is_importance_sampling(bandit_task):
    result = smc(bandit_task, num_particles=500, num_runs=3, seed=0)
    tokens = result.tokens.reshape(-1, 1)
    log_w = bandit_task.log_likelihood(tokens).double().reshape(3, 500)  # q = π0: log w = r/β
    assert torch.allclose(result.log_z, torch.logsumexp(log_w, -1) - math.log(500), atol=1e-12)
    assert int(result.resampling_steps.sum()) == 0


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_z_hat_is_unbiased_and_the_conditional_one_is_not(threshold):
    task = small_markov_task(length=4)
    post = bk.exact_posterior(task)
    z = math.exp(post.log_z)
    rows = sum(task.vocab_size**t for t in range(task.length))
    table = torch.randn(rows, task.vocab_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    twist = TableTwist(task.vocab_size, task.length, table)  # an arbitrary twist: weights vary, particles resample
    lower = smc(task, num_particles=4, num_runs=4000, twist=twist, resample_threshold=threshold, seed=0)
    assert int(lower.resampling_steps.sum()) > 0  # resampling happened, and its normalizer was kept
    mean, se = _mean_and_se(lower.log_z.exp())
    assert abs(mean - z) < Z_CRIT * se, (mean, z, se)
    # power: the same test rejects the conditional runs' Z-hat, biased upwards
    draws = exact_posterior_draws(task, 4000, posterior=post, seed=1)
    upper = smc(
        task, num_particles=4, num_runs=4000, twist=twist, resample_threshold=threshold, reference=draws.tokens, seed=2
    )
    mean_up, se_up = _mean_and_se(upper.log_z.exp())
    assert (mean_up - z) / se_up > Z_CRIT


def test_bounds_bracket_log_z_and_narrow_with_particles(pattern_task):
    post = bk.exact_posterior(pattern_task)
    draws = exact_posterior_draws(pattern_task, 64, posterior=post, seed=0)
    widths = []
    for n in (8, 128):
        b = log_z_bounds(pattern_task, num_particles=n, num_runs=64, draws=draws, seed=n)
        assert b.log_z_lower < post.log_z + Z_CRIT * b.lower.log_z_se
        assert b.log_z_upper > post.log_z - Z_CRIT * b.upper.log_z_se
        widths.append(b.width)
    assert widths[1] < widths[0] / 2


@pytest.mark.parametrize(
    "name",
    [
        "bandit",
        "markov",
        "markov_constraint",
        "markov_pattern",
        pytest.param("words_sentiment", marks=pytest.mark.slow),
    ],
)
def test_bounds_bracket_log_z_on_every_shipped_enumerable_task(name):
    task = bk.load_task(name)
    post = bk.exact_posterior(task)
    draws = exact_posterior_draws(task, 32, posterior=post, seed=0)
    b = log_z_bounds(task, num_particles=64, num_runs=32, draws=draws, seed=0)
    assert b.log_z_lower < post.log_z + Z_CRIT * b.lower.log_z_se + 1e-9
    assert b.log_z_upper > post.log_z - Z_CRIT * b.upper.log_z_se - 1e-9


def test_rejection_draws_match_the_posterior():
    task = bk.load_task("bandit")
    post = bk.exact_posterior(task)
    bounded = task.replace(reward_max=float(post.rewards.max()))
    draws = exact_posterior_draws(bounded, 20_000, seed=0)
    assert draws.source == "rejection"
    expected_rate = math.exp(post.log_z - bounded.reward_max / task.beta)  # Z e^{-r_max/β}
    assert abs(draws.acceptance_rate - expected_rate) < 0.02
    counts = torch.bincount(draws.tokens[:, 0], minlength=task.vocab_size).double()
    expected = 20_000 * post.log_probs.exp()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.88  # chi-square, 9 degrees of freedom, p = 0.001
    # power: the prior's frequencies fail the same test
    prior = 20_000 * post.log_prior.exp()
    assert float(((counts - prior) ** 2 / prior).sum()) > 27.88


def test_kl_bracket_contains_the_exact_kl(pattern_task):
    post = bk.exact_posterior(pattern_task)
    policy = perturbed_policy(pattern_task, scale=0.3, seed=1)
    exact = bk.policy_metrics(pattern_task, policy, post)
    draws = exact_posterior_draws(pattern_task.replace(), 256, seed=0)  # by rejection (reward_max = 1)
    assert draws.source == "rejection"
    bounds = log_z_bounds(pattern_task, num_particles=64, num_runs=256, draws=draws, twist=PolicyTwist(policy), seed=0)
    bracket = kl_bracket(pattern_task, policy, bounds, num_samples=20_000, seed=0)
    # each end is widened by 2 standard errors of its Monte Carlo terms
    assert bracket.kl_q_lower <= exact.kl_q_to_posterior <= bracket.kl_q_upper
    assert bracket.kl_p_lower <= exact.kl_posterior_to_q <= bracket.kl_p_upper
    assert bracket.kl_q_upper - bracket.kl_q_lower < exact.kl_q_to_posterior  # a bracket that says something


def test_policy_twist_is_importance_sampling_with_the_policy(small_task):
    policy = perturbed_policy(small_task, seed=2)
    result = smc(small_task, num_particles=64, num_runs=2, twist=PolicyTwist(policy), seed=0)
    assert int(result.resampling_steps.sum()) == 0  # every intermediate weight is 1
    assert torch.allclose(
        result.increments[..., :-1], torch.zeros(2, 64, small_task.length - 1, dtype=torch.float64), atol=1e-6
    )
    scored = bk.score(small_task, result.tokens.reshape(-1, small_task.length), log_q=policy)
    assert torch.allclose(result.log_weights.reshape(-1), scored.log_weight, atol=1e-5)


def test_resampling_reorders_a_transformer_cache():
    """A KV-cached prior must give the oracle's log Z under resampling (a wrongly reordered cache does not)."""
    prior = TinyTransformerLM(TransformerConfig(vocab_size=4, max_length=4), seed=0)

    task = bk.Task(prior=prior, reward=KeywordCount(keywords=(1,)), beta=0.5, length=4)
    post = bk.exact_posterior(task)
    policy = perturbed_policy(task, scale=1.0, seed=0)
    twist = exact_twist(task, post)
    result = smc(task, num_particles=1, num_runs=3, twist=twist, seed=0)
    assert torch.allclose(result.log_z, torch.full_like(result.log_z, post.log_z), atol=ORACLE_TOL)
    mixed = smc(task, num_particles=16, num_runs=300, proposal=policy, twist=twist, resample_threshold=1.0, seed=1)
    assert int(mixed.resampling_steps.sum()) > 0
    mean, se = _mean_and_se(mixed.log_z.exp())
    assert abs(mean - math.exp(post.log_z)) < Z_CRIT * se


def test_systematic_resampling_keeps_expected_counts():
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    counts = torch.zeros(4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        idx = systematic_resample(weights, g)[0]
        c = torch.bincount(idx, minlength=4).double()
        assert ((c - 4 * weights[0]).abs() < 1).all()  # floor or ceil of N w
        counts += c
    assert torch.allclose(counts / 2000, 4 * weights[0], atol=0.05)


def test_ctl_gradient_vanishes_at_the_soft_value_and_not_at_zero(small_task):
    post = bk.exact_posterior(small_task)
    oracle = exact_twist(small_task, post)
    twist = TableTwist(small_task.vocab_size, small_task.length)
    with torch.no_grad():
        twist.table.copy_(oracle.table.float())
    trainer = TwistTrainer(small_task, twist, 64, lr=1e-12)
    torch.manual_seed(0)
    trainer.step()
    assert float(twist.table.grad.abs().max()) < 1e-5
    zero = TableTwist(small_task.vocab_size, small_task.length)
    trainer = TwistTrainer(small_task, zero, 64, lr=1e-12)
    trainer.step()
    assert float(zero.table.grad.abs().max()) > 1e-2


def test_learned_twist_cuts_the_variance_of_log_z():
    task = bk.load_task("markov")
    post = bk.exact_posterior(task)
    twist = learned_twist(task)
    bk.fit(TwistTrainer(task, twist, 128, lr=0.05), steps=150, seed=0)
    boot = smc(task, num_particles=32, num_runs=64, seed=1)
    twisted = smc(task, num_particles=32, num_runs=64, twist=twist, seed=1)
    assert float(twisted.log_z.var()) < float(boot.log_z.var()) / 4
    assert abs(twisted.log_z_mean - post.log_z) < abs(boot.log_z_mean - post.log_z) + 1e-3


# -- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_is_refused_in_one_line(small_task):
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        smc(small_task, num_particles=0)
    with pytest.raises(ValueError, match="resample_threshold"):
        smc(small_task, num_particles=2, resample_threshold=1.5)
    with pytest.raises(ValueError, match="reference must be a LongTensor"):
        smc(small_task, num_particles=2, num_runs=2, reference=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(RewardError, match="exceeds the task's declared reward_max 0.5"):
        small_task.replace(reward_max=0.5).rewards(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="reward_max must be finite"):
        small_task.replace(reward_max=math.inf)


def test_no_exact_draws_without_enumeration_or_bound(small_task):
    with pytest.raises(NoExactDraws, match="declares no reward_max"):
        exact_posterior_draws(small_task, 4)
    hopeless = small_task.replace(reward_max=50.0)  # acceptance e^{(r - 50)/β}: nothing within the budget
    with pytest.raises(ValueError, match="rejection sampling accepted 0 of 1,000 prior draws"):
        exact_posterior_draws(hopeless, 4, max_proposals=1000)
