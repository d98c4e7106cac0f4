"""The ArviZ boundary (``bayes_klrl._arviz``) gives the same answers on ArviZ 0.x and 1.x: PSIS k̂ against the
Pareto tail it was drawn with, R-hat and ESS against chains with known behaviour, PSIS-LOO against log Z (with the one
observation y = 1, LOO is the harmonic-mean identity E_π*[e^{-r/β}] = 1/Z), and a NetCDF file both lines open."""

import math

import arviz as az
import numpy as np
import pytest
import xarray as xr

from bayes_klrl import _arviz
from bayes_klrl.diagnostics import load_netcdf, mcmc_inference_data, save_netcdf
from bayes_klrl.exact import exact_posterior
from bayes_klrl.infer.mcmc import run_mcmc

from .conftest import small_markov_task

#: |mean k̂ − 1/α| over 5 draws of 10,000 weights from a Pareto tail of index α (one k̂'s spread is 0.05–0.07)
KHAT_TOL = 0.08
#: |k̂ of the fallback − k̂ of ArviZ| on tie-free weights (their tails differ by at most one draw)
FALLBACK_TOL = 0.05
#: |LOO elpd − log Z| in standard errors of the harmonic-mean estimate (about 0.02 nats with 16,000 draws)
LOO_SE = 4.0
#: |LOO elpd − the unsmoothed harmonic-mean estimate| on the same draws (bounded weights: smoothing moves little)
LOO_SMOOTHING_TOL = 0.01


@pytest.mark.parametrize("alpha", [4.0, 2.0, 1.25])
def test_psislw_khat_is_the_pareto_tail_index(alpha):
    khats = []
    for seed in range(5):
        log_w = np.log1p(np.random.default_rng(seed).pareto(alpha, size=10_000))  # w − 1 ~ Lomax(α): k = 1/α
        smoothed, khat = _arviz.psislw(log_w)
        assert math.isclose(float(np.exp(smoothed).sum()), 1.0, rel_tol=1e-9)
        assert _arviz._strict_tail_khat(log_w) == pytest.approx(khat, abs=FALLBACK_TOL)
        khats.append(khat)
    assert np.mean(khats) == pytest.approx(1 / alpha, abs=KHAT_TOL)


def test_psislw_without_a_tail_is_inf_and_normalized():
    smoothed, khat = _arviz.psislw(np.r_[np.zeros(300), np.ones(3)])  # three values above the cutoff
    assert khat == math.inf and math.isclose(float(np.exp(smoothed).sum()), 1.0, rel_tol=1e-12)
    assert _arviz._strict_tail_khat(np.zeros(100)) == math.inf


def test_rhat_and_ess_on_chains_with_known_behaviour():
    rng = np.random.default_rng(1)
    mixed = rng.normal(size=(4, 1000))
    apart = mixed + np.arange(4)[:, None]  # every chain in its own place
    assert _arviz.rhat(mixed) < 1.01 < 1.5 < _arviz.rhat(apart)
    assert 3200 < _arviz.ess(mixed) < 4800 and 3200 < _arviz.ess(mixed, "tail") < 4800  # iid: ESS ≈ 4,000
    sticky = np.repeat(mixed[:, :100], 10, axis=1)  # each draw repeated 10 times: about 400 independent ones
    assert _arviz.ess(sticky) < 800


def test_loo_with_the_one_observation_estimates_log_z():
    task = small_markov_task(vocab_size=3, length=4, seed=0)
    post = exact_posterior(task)
    idx = np.random.default_rng(2).choice(post.log_probs.numel(), size=(4, 4000), p=post.log_probs.exp().numpy())
    r = post.rewards.numpy()[idx]
    data = _arviz.from_groups(
        {
            "posterior": xr.Dataset({"reward": (("chain", "draw"), r)}),
            "log_likelihood": xr.Dataset({"y": (("chain", "draw"), r / task.beta)}),
        }
    )
    result = _arviz.loo(data, "y")
    u = np.exp(-r / task.beta)  # 1/p(y | x): E_π*[u] = 1/Z
    harmonic, se = -math.log(u.mean()), u.std() / u.mean() / math.sqrt(u.size)
    assert abs(result.elpd - harmonic) < LOO_SMOOTHING_TOL
    assert abs(result.elpd - post.log_z) < LOO_SE * se
    assert result.max_pareto_k < 0.5  # e^{-r/β} is bounded: a light tail


def test_the_written_file_opens_with_az_from_netcdf_and_az_summary(tmp_path):
    task = small_markov_task(vocab_size=3, length=4, seed=0)
    result = run_mcmc(task, "imh", num_chains=3, num_samples=50, warmup=5, seed=0)
    path = save_netcdf(mcmc_inference_data(task, result), tmp_path / "mcmc.nc")
    opened = az.from_netcdf(path)  # InferenceData on 0.x, DataTree on 1.x
    assert {"posterior", "sample_stats", "log_likelihood"} <= set(_arviz.group_names(opened))
    table = az.summary(opened, var_names=["reward"], kind="diagnostics", round_to="none")
    assert table.loc["reward", "r_hat"] == pytest.approx(_arviz.rhat(result.rewards.numpy()), rel=1e-9)
    # the layout is plain NetCDF groups, the same whichever line wrote it
    posterior = xr.open_dataset(path, group="posterior", engine="h5netcdf")
    np.testing.assert_array_equal(posterior["tokens"].values, result.draws.numpy())
    posterior.close()
    again = load_netcdf(path)
    np.testing.assert_array_equal(again["posterior"]["tokens"].values, result.draws.numpy())


def test_a_tail_of_ties_gets_a_finite_khat():
    """Weights taking a few values (a discrete reward under the prior as proposal): ArviZ 1.x's own fit divides by
    zero on such a tail; the answer is finite and light-tailed on both lines (the weights are bounded)."""
    for counts in ([40_000, 8_000, 2_000, 1_000, 200], [48_000, 2_000, 1_000, 200, 0]):  # the second: one atom
        log_w = np.repeat([0.0, 0.5, 1.0, 1.5, 2.0], counts)
        _, khat = _arviz.psislw(log_w)
        assert np.isfinite(khat) and khat < 0.5
