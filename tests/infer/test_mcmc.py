"""MCMC kernels on sequences against exact enumeration, and their fit with pyro.infer.MCMC and ArviZ."""

import math

import arviz as az
import pyro.infer
import pytest
import torch

from bayes_klrl import Task, exact_posterior
from bayes_klrl.diagnostics import diagnostics_table, mcmc_inference_data
from bayes_klrl.exact import posterior_policy
from bayes_klrl.infer.mcmc import IndependenceMH, SingleSiteGibbs, make_kernel, run_mcmc, total_variation
from bayes_klrl.modelfile import load_task
from bayes_klrl.tasks.rewards import KeywordConstraint

from ..conftest import small_markov_task

TV_BOUND = 0.05  # the total-variation bound with enough draws
RHAT_BOUND = 1.01  # the R-hat bound after warm-up on the shipped Markov task


@pytest.mark.parametrize(
    "kernel, options",
    [("gibbs", {"scan": "systematic"}), ("gibbs", {"scan": "random"}), ("imh", {}), ("imh", {"init": "prior"})],
)
def test_draws_match_the_exact_posterior(kernel, options):
    task = small_markov_task(vocab_size=3, length=3, beta=0.8, seed=1)  # 27 sequences
    k = make_kernel(task, kernel, num_chains=8, seed=0, **options)
    mcmc = pyro.infer.MCMC(k, num_samples=1500, warmup_steps=200, disable_progbar=True)
    mcmc.run()
    draws = mcmc.get_samples()["tokens"]  # (draws, C, T), promoted to float by Pyro's sample loop
    assert torch.equal(draws, draws.round())
    assert total_variation(draws.round().long(), exact_posterior(task).log_probs, task.vocab_size) < TV_BOUND


def test_run_mcmc_returns_integer_chains_and_their_rewards():
    task = small_markov_task(vocab_size=3, length=4, seed=2)
    result = run_mcmc(task, "gibbs", num_chains=5, num_samples=40, warmup=10, seed=3)
    assert result.draws.shape == (5, 40, 4) and result.draws.dtype == torch.long
    assert 0 <= int(result.draws.min()) and int(result.draws.max()) < task.vocab_size
    flat = result.draws.reshape(-1, 4)
    torch.testing.assert_close(result.rewards.reshape(-1), task.rewards(flat).double())
    torch.testing.assert_close(result.log_prior.reshape(-1), task.prior.log_prob(flat).double())
    assert torch.all(result.acceptance_rate == 1.0)  # Gibbs draws from exact full conditionals


def test_rhat_after_warmup_on_the_shipped_markov_task():
    task = load_task("markov")
    result = run_mcmc(task, "gibbs", num_chains=8, num_samples=1000, warmup=200, seed=0)
    table = diagnostics_table(mcmc_inference_data(task, result))
    assert table.loc["reward", "r_hat"] < RHAT_BOUND
    assert table.loc["log_prior", "r_hat"] < RHAT_BOUND
    post = exact_posterior(task)
    # the mean of the draws within 4 Monte Carlo standard errors of E_π*[r]
    assert abs(result.expected_reward - post.expected_reward) < 4 * table.loc["reward", "mcse_mean"]


def test_independence_mh_with_the_posterior_as_proposal_accepts_every_move():
    task = small_markov_task(vocab_size=3, length=3, seed=0)
    result = run_mcmc(task, "imh", proposal=posterior_policy(task), num_chains=4, num_samples=50, seed=0)
    # w(x) = π0 e^{r/β} / π* = Z for every x: every ratio is 1 (to float32 rounding)
    assert float(result.accept_prob.min()) > 1 - 1e-4


def test_hard_constraint_chains_never_leave_the_support():
    base = small_markov_task(vocab_size=3, length=4, seed=0)
    task = base.replace(reward=KeywordConstraint(keywords=(2,)))
    post = exact_posterior(task)
    for kernel in ("gibbs", "imh"):
        result = run_mcmc(task, kernel, num_chains=8, num_samples=1500, warmup=200, seed=1)
        assert torch.isfinite(result.rewards).all()
        assert (result.draws == 2).any(-1).all()
        assert total_variation(result.draws, post.log_probs, task.vocab_size) < 2 * TV_BOUND


def test_vectorized_chains_run_one_at_a_time_by_pyro():
    """A one-chain kernel is what pyro.infer.MCMC runs chain by chain (the benchmark's baseline); ArviZ reads it."""
    task = small_markov_task(vocab_size=3, length=3, seed=0)
    kernel = IndependenceMH(task, num_chains=1, seed=0)
    mcmc = pyro.infer.MCMC(kernel, num_samples=30, warmup_steps=5, disable_progbar=True)
    mcmc.run()
    assert mcmc.get_samples()["tokens"].shape == (30, 1, 3)
    if not hasattr(az, "from_pyro"):
        pytest.skip(f"ArviZ {az.__version__} has no Pyro converter (ArviZ 1.x dropped it)")
    idata = az.from_pyro(mcmc, log_likelihood=False)  # needs kernel.model and a "divergences" entry in diagnostics()
    assert "tokens" in idata.posterior


def test_bad_arguments_are_clear_errors():
    task = small_markov_task()
    with pytest.raises(ValueError, match="unknown MCMC kernel"):
        make_kernel(task, "hmc")
    with pytest.raises(ValueError, match="num_chains"):
        SingleSiteGibbs(task, num_chains=0)
    with pytest.raises(ValueError, match="scan"):
        SingleSiteGibbs(task, scan="backwards")
    with pytest.raises(ValueError, match="takes no proposal"):
        make_kernel(task, "gibbs", proposal=task.prior)
    kernel = SingleSiteGibbs(task, num_chains=2)
    with pytest.raises(ValueError, match="shape"):
        kernel.initial_params = {"tokens": torch.zeros(3, 3, dtype=torch.long)}
    infeasible = Task(
        prior=task.prior, reward=lambda x: torch.full((x.shape[0],), -math.inf), beta=1.0, length=3, name="empty"
    )
    with pytest.raises(ValueError, match="finite target"):
        run_mcmc(infeasible, "imh", num_chains=2, num_samples=5)


@pytest.mark.parametrize("kernel, with_policy", [("gibbs", False), ("imh", False), ("imh", True)])
def test_chain_state_is_a_scored_record_with_one_row_per_chain(kernel, with_policy):
    from bayes_klrl.samples import ScoredSamples, score

    task = small_markov_task(vocab_size=3, length=3, seed=0)
    proposal = posterior_policy(task) if with_policy else None
    k = make_kernel(task, kernel, num_chains=6, proposal=proposal, seed=2)
    mcmc = pyro.infer.MCMC(k, num_samples=20, warmup_steps=5, disable_progbar=True)
    mcmc.run()
    state = k.state
    assert isinstance(state, ScoredSamples) and state.num_samples == 6 and state.beta == task.beta
    assert (state.log_q is not None) == with_policy  # only a policy proposal is scored
    rescored = score(task, state.tokens, log_q=proposal)
    torch.testing.assert_close(state.log_target, rescored.log_target)
    assert k.info.accept_prob.shape == (6,)
