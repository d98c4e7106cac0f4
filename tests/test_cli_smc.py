"""``compare --methods ...,smc``: the bounds row, every trained row's KL bracket against its exact KL, the files, and
the refusals (one line, exit 2, before any work)."""

import json

import pytest

from bayes_klrl.cli import main

#: the bracket's ends are Monte Carlo: each may miss the exact KL by this much (ELBO over 1,024 draws, 16 runs)
BRACKET_SLACK = 0.03


def _compare(tmp_path, *args, name="run"):
    out = tmp_path / name
    code = main(["compare", *args, "--out", str(out), "--no-progress"])
    return code, out


def test_smc_row_and_brackets_on_an_enumerable_task(tmp_path, capsys):
    code, out = _compare(
        tmp_path, "markov", "--methods", "exact,rl,smc", "--steps", "150", "--num-sequences", "256",
        "--particles", "128", "--smc-runs", "16", "--twist-steps", "100",
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "log Z bounds (smc) and KL brackets" in printed
    assert "--particles is not an option" not in printed  # a sampler's option: the trained methods need no note
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {row["method"]: row for row in metrics["methods"]}
    log_z = metrics["exact"]["log_z"]
    smc = rows["smc"]
    slack = 4 * max(smc["log_z_lower_se"], smc["log_z_upper_se"])
    assert smc["log_z_lower"] - slack <= log_z <= smc["log_z_upper"] + slack
    assert smc["exact_draws"] == "enumeration" and smc["twist"] == "learned"
    rl = rows["rl"]
    assert rl["kl_q_to_posterior_lower"] - BRACKET_SLACK <= rl["kl_q_to_posterior"]
    assert rl["kl_q_to_posterior"] <= rl["kl_q_to_posterior_upper"] + BRACKET_SLACK
    assert rl["kl_posterior_to_q_lower"] - BRACKET_SLACK <= rl["kl_posterior_to_q"]
    assert rl["kl_posterior_to_q"] <= rl["kl_posterior_to_q_upper"] + BRACKET_SLACK
    assert "kl_q_to_posterior_lower" in metrics["columns"]
    assert (out / "smc.nc").is_file()


def test_smc_netcdf_keeps_weighted_particles_apart(tmp_path):
    az = pytest.importorskip("arviz")
    code, out = _compare(
        tmp_path, "markov", "--methods", "smc", "--twist", "none", "--particles", "32", "--smc-runs", "4"
    )
    assert code == 0
    idata = az.from_netcdf(out / "smc.nc")
    assert idata.posterior.attrs["weighted"] == 0 and idata.particles.attrs["weighted"] == 1
    assert idata.posterior["tokens"].shape == (4, 32, 6)  # one chain per run, resampled: equally weighted
    assert "log_weight" in idata.particles and "log_weight" not in idata.posterior


def test_lower_bound_only_is_said_in_one_line(tmp_path, capsys):
    code, out = _compare(
        tmp_path, "markov", "--methods", "rl,smc", "--steps", "20", "--num-sequences", "64", "--particles", "32",
        "--smc-runs", "4", "--twist", "none", "--set", "length=10",
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "note: smc gives the lower bound on log Z only" in printed and "declares no reward_max" in printed
    rows = {row["method"]: row for row in json.loads((out / "metrics.json").read_text())["methods"]}
    assert rows["smc"].get("log_z_upper") is None and rows["rl"].get("kl_q_to_posterior_upper") is None
    assert rows["rl"]["kl_q_to_posterior_lower"] is not None


def test_rejection_gives_the_upper_bound_beyond_enumeration(tmp_path):
    code, out = _compare(
        tmp_path, "markov_pattern", "--methods", "smc", "--particles", "64", "--smc-runs", "8", "--twist", "none",
        "--eval-samples", "8", "--set", "length=10",
    )  # fmt: skip
    assert code == 0
    smc = json.loads((out / "metrics.json").read_text())["methods"][0]
    assert smc["exact_draws"] == "rejection" and 0 < smc["rejection_acceptance"] < 1
    assert smc["log_z_upper"] is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--particles", "0"], "--particles must be an integer >= 1"),
        (["--smc-runs", "0"], "--smc-runs must be an integer >= 1"),
        (["--resample-threshold", "2"], "--resample-threshold must be in [0, 1]"),
        (["--twist", "exact", "--set", "length=10"], "--twist exact needs the enumerated posterior"),
        (["--twist", "policy"], "--twist policy reads the policy of --twist-policy rl: put rl before smc"),
    ],
    ids=["particles", "runs", "threshold", "exact-not-enumerable", "policy-missing"],
)
def test_bad_smc_settings_are_refused_before_work(tmp_path, capsys, args, message):
    out = tmp_path / "refused"
    code = main(["compare", "markov", "--methods", "smc", *args, "--out", str(out), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (out / "metrics.json").exists()


def test_learned_twist_resumed_on_another_task_is_refused(tmp_path, capsys):
    common = ["--methods", "smc", "--twist-steps", "5", "--num-sequences", "32", "--particles", "8", "--smc-runs", "2"]
    code, out = _compare(tmp_path, "markov", *common)
    assert code == 0 and (out / "smc_twist" / "checkpoint.pt").is_file()
    capsys.readouterr()
    code = main(["compare", "markov", *common, "--beta", "0.5", "--resume", "--out", str(out), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "beta" in err
