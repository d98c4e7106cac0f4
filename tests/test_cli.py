"""The command line: compare on a user's model file, the metrics.json schema, one-line errors."""

import json
import subprocess
import sys
import textwrap

import pytest

from bayes_klrl.cli import main

USER_MODEL = """
import torch
from bayes_klrl import MarkovLM, Task

def task(beta=0.7, length=4):
    g = torch.Generator().manual_seed(11)
    prior = MarkovLM(torch.randn(4, generator=g), torch.randn(4, 4, generator=g))
    return Task(prior=prior, reward=lambda x: (x == 3).sum(-1).float(), beta=beta, length=length, name="user")
"""

ROW_KEYS = {
    "method",
    "elbo",
    "log_z",
    "kl_q_to_posterior",
    "kl_posterior_to_q",
    "tv_to_posterior",
    "expected_reward",
    "kl_to_prior",
    "reward_evaluations",
    "wall_seconds",
}


@pytest.fixture
def user_model(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(USER_MODEL)
    return path


def test_compare_on_user_model_file(user_model, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "compare",
            str(user_model),
            "--methods",
            "exact,svi,rl",
            "--steps",
            "300",
            "--num-sequences",
            "512",
            "--beta",
            "0.5",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "user" and metrics["beta"] == 0.5
    assert set(metrics["exact"]) == {"log_z", "expected_reward", "entropy"}
    rows = {row["method"]: row for row in metrics["methods"]}
    assert set(rows) == {"exact", "svi", "rl"} and all(set(r) >= ROW_KEYS for r in rows.values())
    for method in ("svi", "rl"):
        row = rows[method]
        assert row["kl_q_to_posterior"] < 0.05
        assert row["elbo"] == pytest.approx(metrics["exact"]["log_z"] - row["kl_q_to_posterior"], abs=2e-3)
        assert row["reward_evaluations"] == 300 * 512
    assert (out / "history_svi.csv").read_text().count("\n") == 1 + 1 + 300 // 50
    assert "kl_q_to_posterior" in capsys.readouterr().out


# samplers on the user task: IS and MCMC land near the exact posterior mean; the done-when bounds
IS_LOG_Z_TOL, IS_REWARD_TOL, MCMC_REWARD_TOL, MCMC_RHAT_MAX = 0.05, 0.05, 0.06, 1.05


@pytest.mark.parametrize("kernel", ["gibbs", "imh"])
def test_compare_samplers_rows_and_inference_data(kernel, user_model, tmp_path, capsys):
    import arviz as az

    out = tmp_path / "run"
    argv = ["compare", str(user_model), "--methods", "exact,is,mcmc,rl", "--steps", "100", "--num-sequences", "256"]
    argv += ["--mcmc-kernel", kernel, "--chains", "8", "--draws", "1000", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    exact = metrics["exact"]
    rows = {row["method"]: row for row in metrics["methods"]}
    assert all(set(r) >= ROW_KEYS for r in rows.values())
    assert abs(rows["is"]["log_z"] - exact["log_z"]) < IS_LOG_Z_TOL
    assert abs(rows["is"]["expected_reward"] - exact["expected_reward"]) < IS_REWARD_TOL
    assert {"ess", "khat"} <= set(rows["is"]) and 0 < rows["is"]["ess"] <= 1
    assert rows["mcmc"]["kernel"] == kernel and rows["mcmc"]["rhat"] <= MCMC_RHAT_MAX
    assert abs(rows["mcmc"]["expected_reward"] - exact["expected_reward"]) < MCMC_REWARD_TOL
    assert rows["mcmc"]["ess_bulk"] > 100
    assert rows["rl"]["khat"] is not None
    for method in ("is", "mcmc", "rl"):
        idata = az.from_netcdf(out / f"{method}.nc")
        assert idata.posterior["tokens"].sizes["position"] == 4
    assert "rhat" in capsys.readouterr().out


def test_set_overrides_task_arguments(user_model, tmp_path):
    out = tmp_path / "run"
    assert main(["compare", str(user_model), "--methods", "exact", "--set", "length=2", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["length"] == 2


BAD_MODELS = {
    "no_task": ("x = 1\n", "defines no task() function"),
    "raises": ("raise RuntimeError('boom')\n", "failed to import: RuntimeError: boom"),
    "wrong_type": ("def task(**kw):\n    return 3\n", "returned int, not a bayes_klrl.Task"),
    "nan_reward": (USER_MODEL.replace("(x == 3).sum(-1).float()", "torch.full((x.shape[0],), float('nan'))"), "NaN"),
    "bad_shape": (USER_MODEL.replace("(x == 3).sum(-1).float()", "x.float()"), "must return shape"),
    "int_reward": (USER_MODEL.replace("(x == 3).sum(-1).float()", "(x == 3).sum(-1)"), "floating-point"),
    "too_large": (USER_MODEL.replace("length=4", "length=40"), "needs V^T <= 4,194,304"),
}


@pytest.mark.parametrize("name", list(BAD_MODELS))
def test_bad_model_files_give_one_line_errors(name, tmp_path, capsys):
    source, message = BAD_MODELS[name]
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    code = main(["compare", str(path), "--methods", "exact", "--steps", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    if name not in ("too_large",):
        assert str(path) in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--beta", "0"], "beta must be finite and > 0"),
        (["--beta", "-1"], "beta must be finite and > 0"),
        (["--methods", "exact,vi"], "unknown method(s) vi"),
    ],
    ids=["beta0", "beta-negative", "unknown-method"],
)
def test_bad_arguments(argv, message, user_model, tmp_path, capsys):
    assert main(["compare", str(user_model), *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_unknown_task_name_lists_shipped_tasks(capsys):
    assert main(["compare", "nonexistent_task"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nonexistent_task'" in err and "markov" in err


def test_tasks_lists_shipped_markov(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "markov" in out and "bandit" in out


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "bayes_klrl", "compare", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--methods" in done.stdout and "--beta" in done.stdout


def test_same_seed_gives_identical_metrics_wall_times_aside(user_model, tmp_path):
    docs = []
    for name in ("a", "b"):
        out = tmp_path / name
        main(
            [
                "compare",
                str(user_model),
                "--methods",
                "exact,svi,rl",
                "--steps",
                "40",
                "--num-sequences",
                "64",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        doc = json.loads((out / "metrics.json").read_text())
        for row in doc["methods"]:
            row.pop("wall_seconds")
        docs.append(doc)
    assert docs[0] == docs[1]


def test_model_file_compare_defaults_sit_below_the_command_line(tmp_path, capsys):
    path = tmp_path / "with_defaults.py"
    path.write_text(USER_MODEL + '\nCOMPARE_DEFAULTS = {"steps": 7, "num_sequences": 16, "lr": 0.05}\n')
    out = tmp_path / "o"
    assert main(["compare", str(path), "--methods", "rl", "--num-sequences", "32", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 7 and metrics["num_sequences"] == 32  # the file's steps, the command line's batch
    assert metrics["methods"][0]["reward_evaluations"] == 7 * 32
    assert "model file defaults: steps=7, lr=0.05\n" in capsys.readouterr().out


def test_bad_compare_defaults_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "bad_defaults.py"
    path.write_text(USER_MODEL + '\nCOMPARE_DEFAULTS = {"stepz": 7}\n')
    assert main(["compare", str(path), "--methods", "exact", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "COMPARE_DEFAULTS has unknown setting(s) stepz" in err and str(path) in err and "\n" not in err


def test_compare_dpg_row_reaches_the_posterior_and_outputs_are_readable(user_model, tmp_path):
    """DPG (forward KL with importance weights) through compare reaches π* with a tabular policy; the output files
    get an ordinary file mode, not mkstemp's 0600."""
    import os
    import stat

    out = tmp_path / "run"
    argv = ["compare", str(user_model), "--methods", "exact,dpg", "--steps", "300", "--num-sequences", "512"]
    assert main([*argv, "--beta", "0.5", "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "metrics.json").read_text())["methods"][1]
    assert row["method"] == "dpg" and row["kl_posterior_to_q"] < 0.02
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((out / "metrics.json").stat().st_mode) == 0o666 & ~mask


def test_mcmc_with_a_trained_policy_as_proposal(user_model, tmp_path, capsys):
    """Independence MH with the RL policy (near π*) as proposal accepts most moves and lands on E_π*[r]."""
    out = tmp_path / "run"
    argv = ["compare", str(user_model), "--methods", "exact,rl,mcmc", "--mcmc-proposal", "rl", "--steps", "300"]
    assert main([*argv, "--num-sequences", "512", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    row = {r["method"]: r for r in metrics["methods"]}["mcmc"]
    assert row["kernel"] == "imh" and row["proposal"] == "rl"
    assert row["acceptance_rate"] > 0.8  # a prior proposal accepts far fewer on this task
    assert abs(row["expected_reward"] - metrics["exact"]["expected_reward"]) < MCMC_REWARD_TOL
    bad = ["compare", str(user_model), "--methods", "mcmc,rl", "--mcmc-proposal", "rl", "--out", str(tmp_path / "b")]
    assert main(bad) == 2
    assert "needs method 'rl' before mcmc" in capsys.readouterr().err


def test_unmixed_chains_get_a_note(user_model, tmp_path, capsys):
    """Too few MCMC draws: R-hat above 1.01 and a one-line note saying what to do."""
    out = tmp_path / "run"
    argv = ["compare", str(user_model), "--methods", "mcmc", "--mcmc-kernel", "imh", "--chains", "4", "--draws", "4"]
    assert main([*argv, "--warmup", "0", "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "metrics.json").read_text())["methods"][0]
    printed = capsys.readouterr().out
    assert row["rhat"] > 1.01
    assert f"note: mcmc R-hat {row['rhat']:.3f} > 1.01" in printed and "--mcmc-kernel gibbs" in printed


def test_compare_imports_the_model_file_once(tmp_path):
    """A model file's body runs once per compare, even when it also sets COMPARE_DEFAULTS."""
    log = tmp_path / "imports.log"
    path = tmp_path / "counted.py"
    path.write_text(
        f"with open({str(log)!r}, 'a') as f:\n    f.write('imported\\n')\n"
        + USER_MODEL
        + '\nCOMPARE_DEFAULTS = {"steps": 2}\n'
    )
    assert main(["compare", str(path), "--methods", "exact", "--out", str(tmp_path / "o")]) == 0
    assert log.read_text().splitlines() == ["imported"]


def test_unusable_out_is_refused_before_any_training(user_model, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = ["compare", str(user_model), "--methods", "exact,svi", "--steps", "100000", "--out", str(a_file)]
    assert main(argv) == 2  # 100,000 SVI steps would take minutes: the folder is checked first
    err = capsys.readouterr().err.strip()
    assert "is a file, not a folder" in err and len(err.splitlines()) == 1
    assert main(["compare", str(user_model), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err


def test_beta_given_twice_is_refused(user_model, tmp_path, capsys):
    argv = ["compare", str(user_model), "--beta", "0.9", "--set", "beta=0.3", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--beta and --set beta" in capsys.readouterr().err


def test_recipe_flags_override_the_preset_and_are_recorded(user_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["compare", str(user_model), "--methods", "exact,grpo", "--steps", "2", "--num-sequences", "16"]
    assert main([*argv, "--group-size", "4", "--kl-estimator", "k2", "--out", str(out), "--no-progress"]) == 0
    (row,) = [r for r in json.loads((out / "metrics.json").read_text())["methods"] if r["method"] == "grpo"]
    assert row["group_size"] == 4 and row["kl_estimator"] == "k2" and row["advantage"] == "group-std"


@pytest.mark.parametrize("command", ["report", "bench"])
def test_report_and_bench_run_the_checkout_scripts(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


CONSTRAINED_MODEL = """
import torch
from bayes_klrl import MarkovLM, Task

def task(beta=1.0, length=4):
    g = torch.Generator().manual_seed(11)
    prior = MarkovLM(torch.randn(4, generator=g), torch.randn(4, 4, generator=g))
    def reward(x):  # hard constraint: token 3 must appear
        return torch.where((x == 3).any(-1), 0.0, float("-inf"))
    return Task(prior=prior, reward=reward, beta=beta, length=length, name="constrained")
"""


def test_hard_constraint_rows_say_what_stays_finite(tmp_path, capsys):
    path = tmp_path / "constrained.py"
    path.write_text(CONSTRAINED_MODEL)
    out = tmp_path / "o"
    argv = ["compare", str(path), "--methods", "exact,rl", "--steps", "20", "--num-sequences", "64"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    (row,) = [r for r in json.loads((out / "metrics.json").read_text())["methods"] if r["method"] == "rl"]
    assert row["kl_q_to_posterior"] == "inf" and row["elbo"] == "-inf"  # infinite, not "not computed"
    assert 0 < row["infeasible_mass"] < 1 and 0 <= row["kl_feasible_to_posterior"] < row["kl_to_prior"] + 10
    assert row["expected_reward_feasible"] == 0.0  # every feasible sequence has reward 0
    assert "hard constraint forbids" in printed and "kl_feasible_to_posterior" in printed


def test_a_second_run_in_the_same_folder_removes_the_first_runs_results(user_model, tmp_path):
    out = tmp_path / "o"
    base = ["compare", str(user_model), "--steps", "2", "--num-sequences", "8", "--out", str(out), "--no-progress"]
    assert main([*base, "--methods", "exact,rl"]) == 0
    assert (out / "rl.nc").exists() and (out / "history_rl.csv").exists()
    (out / "notes.txt").write_text("mine")  # a file the user made is never touched
    assert main([*base, "--methods", "exact,svi", "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"svi.nc", "history_svi.csv", "notes.txt"} <= names and not {"rl.nc", "history_rl.csv"} & names
    assert json.loads((out / "metrics.json").read_text())["files"] == ["history_svi.csv", "svi.nc", "metrics.json",
                                                                      "metrics.csv"]  # fmt: skip


def test_options_no_chosen_method_reads_get_a_note(user_model, tmp_path, capsys):
    argv = ["compare", str(user_model), "--methods", "exact,rl", "--steps", "1", "--num-sequences", "8"]
    assert main([*argv, "--kl-target", "0.5", "--draws", "50", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "note: --kl-target applies to ppo" in printed and "note: --draws applies to mcmc" in printed


def test_logs_get_neither_progress_bars_nor_arviz_refactor_warnings(user_model, tmp_path):
    argv = ["compare", str(user_model), "--methods", "exact,rl,is", "--steps", "30", "--num-sequences", "8"]
    done = subprocess.run(
        [sys.executable, "-m", "bayes_klrl", *argv, "--out", str(tmp_path / "o")],  # progress on, stderr a pipe
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "it/s" not in done.stderr and "FutureWarning" not in done.stderr


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", b"\x80\x04K\x01.", None],
    ids=["empty", "text", "plain-pickle", "truncated"],
)
def test_unreadable_checkpoints_give_one_line_naming_the_file(content, user_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["compare", str(user_model), "--methods", "rl", "--steps", "3", "--num-sequences", "8", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    checkpoint = out / "rl" / "checkpoint.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if content is None else content)
    capsys.readouterr()
    assert main([*argv, "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(checkpoint) in err and "Traceback" not in err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--steps", "2"], "past this run's 2 steps"),
        (["--set", "length=3"], "was written with"),
        (["--lr", "0.05"], "--lr 0.02"),
    ],
    ids=["fewer-steps", "other-task", "other-lr"],
)
def test_resume_refuses_a_run_it_cannot_continue(change, message, user_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["compare", str(user_model), "--methods", "rl", "--steps", "3", "--num-sequences", "8", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*argv, *change, "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_settings_fail_before_any_method_runs(user_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["compare", str(user_model), "--methods", "exact,is,mcmc,rl", "--lr", "-1", "--out", str(out)]
    assert main(argv) == 2
    assert "lr must be" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # IS and MCMC did not run first


@pytest.mark.parametrize(
    "options, message",
    [
        (["--replay", "4", "--estimator", "trace"], "svi: --replay is an option of the 'loo' estimator"),
        (["--replay", "4", "--sites", "tokens"], "svi: --replay rescores earlier draws"),
        (["--kl-gradient", "analytic", "--estimator", "trace"], "svi: --kl-gradient analytic is an option"),
    ],
    ids=["replay-trace", "replay-tokens", "analytic-trace"],
)
def test_svi_options_that_do_not_go_together_fail_before_any_method_runs(
    options, message, user_model, tmp_path, capsys, monkeypatch
):
    import bayes_klrl.compare

    ran = []
    monkeypatch.setattr(bayes_klrl.compare, "run_compare", lambda *a, **k: ran.append(1))
    out = tmp_path / "o"
    assert main(["compare", str(user_model), "--methods", "exact,is,svi", *options, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not ran  # refused with the settings, before exact and IS run


@pytest.mark.parametrize(
    "argv", [["report", "--quick", "--out"], ["bench", "--quick", "--json"]], ids=["report", "bench"]
)
def test_report_and_bench_check_their_output_before_running(argv, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    target = a_file if argv[0] == "report" else a_file / "bench.json"
    assert main([*argv, str(target)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
