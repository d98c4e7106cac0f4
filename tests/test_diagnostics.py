"""The ArviZ boundary: InferenceData of every method, NetCDF round trips, the diagnostics table."""

import math

import arviz as az
import numpy as np
import pytest
import torch

from bayes_klrl.diagnostics import (
    diagnostics_table,
    importance_inference_data,
    load_netcdf,
    mcmc_inference_data,
    save_netcdf,
    scalar_diagnostics,
)
from bayes_klrl.exact import exact_posterior
from bayes_klrl.infer.importance import importance_sample
from bayes_klrl.infer.mcmc import run_mcmc

from .conftest import small_markov_task

#: |resampled mean − exact E_π*[r]| on 4,000 draws (about 4 s.e.); the prior's mean is farther
RESAMPLED_MEAN_TOL = 0.08


def test_mcmc_inference_data_round_trips_through_netcdf(tmp_path):
    task = small_markov_task(vocab_size=3, length=4, seed=0)
    result = run_mcmc(task, "imh", num_chains=3, num_samples=60, warmup=10, seed=0)
    path = save_netcdf(mcmc_inference_data(task, result), tmp_path / "run" / "mcmc.nc")
    idata = az.from_netcdf(path)
    tokens = idata.posterior["tokens"]
    assert tokens.dims == ("chain", "draw", "position") and tokens.dtype == np.int64
    np.testing.assert_array_equal(tokens.values, result.draws.numpy())
    np.testing.assert_allclose(idata.posterior["reward_over_beta"].values, result.rewards.numpy() / task.beta)
    np.testing.assert_allclose(idata.sample_stats["accept_prob"].values, result.accept_prob.numpy())
    assert idata.posterior.attrs["method"] == "mcmc" and idata.posterior.attrs["weighted"] == 0
    assert not list(tmp_path.joinpath("run").glob(".*.tmp"))  # the atomic write left no temporary file


def test_importance_inference_data_keeps_weighted_draws_out_of_the_posterior_group():
    task = small_markov_task(seed=1)
    result = importance_sample(task, num_samples=4000, seed=0)
    idata = importance_inference_data(task, result)
    # the weighted proposal draws live in their own group, with their weights
    log_w = idata.proposal["log_weight"].values[0]
    np.testing.assert_allclose(log_w, result.log_weights.numpy())
    # prior proposal: log w = log π0 + r/β − log q = r/β
    np.testing.assert_allclose(log_w, idata.proposal["reward_over_beta"].values[0], atol=1e-6)
    smoothed = idata.proposal["psis_log_weight"].values[0]
    assert math.isclose(float(np.exp(smoothed).sum()), 1.0, rel_tol=1e-9)
    assert idata.proposal.attrs["weighted"] == 1 and idata.posterior.attrs["weighted"] == 0
    # the posterior group holds resampled, equally weighted draws: their plain mean estimates E_π*[r]
    np.testing.assert_array_equal(idata.posterior["tokens"].values[0], result.resampled.numpy())
    exact = exact_posterior(task).expected_reward
    unweighted = float(idata.posterior["reward"].mean())
    prior_mean = float(idata.proposal["reward"].mean())
    assert abs(unweighted - exact) < RESAMPLED_MEAN_TOL < abs(prior_mean - exact)
    np.testing.assert_allclose(
        idata.log_likelihood["reward_over_beta"].values, idata.posterior["reward_over_beta"].values
    )


def test_diagnostics_table_and_scalar_diagnostics():
    task = small_markov_task(vocab_size=3, length=3, seed=0)
    idata = mcmc_inference_data(task, run_mcmc(task, "gibbs", num_chains=4, num_samples=300, warmup=50, seed=0))
    table = diagnostics_table(idata)
    assert list(table.index) == ["reward", "log_prior", "reward_over_beta"]  # no log_q for Gibbs
    assert {"r_hat", "ess_bulk", "ess_tail", "mcse_mean"} <= set(table.columns)
    d = scalar_diagnostics(idata, "reward")
    assert d["rhat"] < 1.05 and d["ess_bulk"] > 100
    # r_hat of r/β equals that of r: a rescaling changes nothing
    assert table.loc["reward_over_beta", "r_hat"] == pytest.approx(table.loc["reward", "r_hat"])


def test_constant_reward_gives_none_not_an_error():
    task = small_markov_task().replace(reward=lambda x: torch.ones(x.shape[0]))
    idata = mcmc_inference_data(task, run_mcmc(task, "imh", num_chains=2, num_samples=20, seed=0))
    assert scalar_diagnostics(idata, "reward")["rhat"] is None


def test_load_netcdf_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no InferenceData file"):
        load_netcdf(tmp_path / "absent.nc")
