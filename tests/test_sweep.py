"""Sweeps through an executor: the same seeds give the same metrics serially, on a local process pool and on a
Dask LocalCluster (wall times aside); bad sweep settings are refused before anything runs."""

import importlib.util
import json

import pytest

from bayes_klrl.cli import main
from bayes_klrl.compare import CompareConfig
from bayes_klrl.sweep import grid, make_executor, run_sweep

CONFIG = CompareConfig(methods=("exact", "rl", "svi"), steps=8, num_sequences=32, eval_samples=64, log_every=4)
HAS_DASK = importlib.util.find_spec("distributed") is not None


def _without_times(results):
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for doc in results for row in doc["methods"]]


def _runs(out):
    return grid("markov", CONFIG, seeds=(0, 1), betas=(0.5, 1.0), out=out, overrides={"length": 3})


def test_grid_names_every_run_and_refuses_repeats(tmp_path):
    runs = _runs(tmp_path)
    assert [r.name for r in runs] == ["beta0.5_seed0", "beta0.5_seed1", "beta1_seed0", "beta1_seed1"]
    assert [r.config.seed for r in runs] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="seeds has repeated values"):
        grid("markov", CONFIG, seeds=(1, 1), out=tmp_path)
    with pytest.raises(ValueError, match="every beta must be > 0"):
        grid("markov", CONFIG, seeds=(0,), betas=(0.0,), out=tmp_path)


@pytest.mark.slow  # starting spawned workers that import torch and pyro takes seconds each
def test_a_process_pool_gives_the_serial_metrics(tmp_path):
    serial = run_sweep(_runs(tmp_path / "serial"))
    pooled = run_sweep(_runs(tmp_path / "pool"), executor="process", workers=2)
    assert _without_times(serial) == _without_times(pooled)
    # each run wrote its own folder, and different seeds/betas really differ
    assert (tmp_path / "pool" / "beta1_seed1" / "metrics.json").is_file()
    kls = [row["kl_q_to_posterior"] for doc in serial for row in doc["methods"] if row["method"] == "rl"]
    assert len(set(kls)) == 4


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DASK, reason="needs the [cluster] extra (dask distributed)")
def test_a_dask_local_cluster_gives_the_serial_metrics(tmp_path):
    serial = run_sweep(_runs(tmp_path / "serial"))
    clustered = run_sweep(_runs(tmp_path / "dask"), executor="dask", workers=2)
    assert _without_times(serial) == _without_times(clustered)


def test_compare_sweep_flags_write_the_gathered_table(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["compare", "markov", "--set", "length=3", "--methods", "exact,rl", "--steps", "4",
                 "--num-sequences", "16", "--eval-samples", "16", "--seeds", "0,1", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert [run["folder"] for run in doc["runs"]] == ["seed0", "seed1"]
    assert (out / "sweep.csv").read_text().count("\n") == 1 + 2 * 2  # header + (exact, rl) per run
    assert "sweep: 2 runs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0,1", "--seed", "3"], "--seed and --seeds both given"),
        (["--betas", "0.5", "--beta", "0.7"], "--beta and --betas both given"),
        (["--workers", "2"], "--workers applies to sweeps"),
        (["--seeds", "0", "--executor", "process", "--workers", "0"], "workers must be >= 1"),
        (["--seeds", "0", "--scheduler", "tcp://x:1"], "needs --executor dask"),
    ],
)
def test_bad_sweep_settings_are_one_line_errors(tmp_path, capsys, argv, message):
    code = main(["compare", "markov", "--methods", "exact", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_make_executor_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="unknown executor"):
        with make_executor("ray"):
            pass
