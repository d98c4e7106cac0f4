"""Nothing lost, nothing misread, through the command line: output folders that hold a run are never overwritten
by accident, bad flags are refused in one line before any work and leave no folder behind, k-hat labels say
when they cannot be trusted, and a row whose importance scoring fails does not take the comparison with it.

Complements test_cli (the compare command's outputs) and test_reliability (numerics at extreme scales).
"""

import json
import math
import re
import textwrap
from pathlib import Path

import pytest

from bayes_klrl.cli import main

USER_MODEL = """
import torch
from bayes_klrl import MarkovLM, Task

def task(beta=0.7, length=4):
    prior = MarkovLM.random(4, seed=7)
    return Task(prior=prior, reward=lambda x: (x == 3).sum(-1).float(), beta=beta, length=length, name="user")
"""

#: a prior that almost never meets the constraint (all tokens 0): 1,024 draws of π0 hold none
RARE_MODEL = """
import math
import torch
from bayes_klrl import MarkovLM, Task

def task(beta=1.0, length=6):
    penalty = torch.tensor([-6.0, 0.0, 0.0, 0.0])
    prior = MarkovLM(penalty, torch.zeros(4, 4) + penalty)
    return Task(prior=prior, reward=lambda x: torch.where((x == 0).all(-1), 0.0, -math.inf), beta=beta,
                length=length, name="rare")
"""

#: log Z of RARE_MODEL: six tokens 0 in a row, each of probability e^-6 / (e^-6 + 3)
RARE_LOG_Z = 6 * math.log(math.exp(-6.0) / (math.exp(-6.0) + 3))

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def user_model(tmp_path):
    path = tmp_path / "user_task.py"
    path.write_text(textwrap.dedent(USER_MODEL))
    return path


def small(model, *more):
    return ["compare", str(model), "--steps", "3", "--num-sequences", "8", "--eval-samples", "64", "--no-progress",
            *more]  # fmt: skip


def exit_code(argv) -> int:
    """``main``'s status; argparse's own refusals exit (status 2) instead of returning."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def never_run(monkeypatch) -> list:
    """Replace run_compare by a recorder: a refusal must come before any method runs."""
    import bayes_klrl.compare

    ran = []
    monkeypatch.setattr(bayes_klrl.compare, "run_compare", lambda *a, **k: ran.append(1))
    return ran


# -- output folders --------------------------------------------------------------------------------------------


def test_a_folder_holding_a_finished_run_is_refused_unchanged(user_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    assert main(small(user_model, "--methods", "exact,rl", "--out", str(out))) == 0
    from bayes_klrl.diagnostics import load_netcdf

    log_likelihood = load_netcdf(out / "rl.nc").log_likelihood  # named for what it holds, r/beta
    assert list(log_likelihood.data_vars) == ["reward_over_beta"]
    before = snapshot(out)
    capsys.readouterr()
    ran = never_run(monkeypatch)
    assert main(small(user_model, "--methods", "exact,svi", "--out", str(out))) == 2
    err = one_line_error(capsys)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert not ran and snapshot(out) == before  # nothing deleted, nothing rewritten


def test_a_folder_holding_only_a_checkpoint_is_refused(user_model, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(small(user_model, "--methods", "rl", "--out", str(out))) == 0
    for name in ("metrics.json", "metrics.csv", "rl.nc", "history_rl.csv"):
        (out / name).unlink()  # what an interrupted run leaves: its checkpoint
    assert main(small(user_model, "--methods", "rl", "--out", str(out))) == 2
    assert "rl/checkpoint.pt" in one_line_error(capsys)
    assert main(small(user_model, "--methods", "rl", "--resume", "--out", str(out))) == 0


def test_overwrite_replaces_the_earlier_run_and_leaves_no_stale_file(user_model, tmp_path):
    out = tmp_path / "o"
    assert main(small(user_model, "--methods", "exact,rl", "--out", str(out))) == 0
    (out / "notes.txt").write_text("mine")  # a file the user made is never touched
    assert main(small(user_model, "--methods", "exact,svi", "--overwrite", "--out", str(out))) == 0
    names = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert {"svi.nc", "history_svi.csv", "svi/checkpoint.pt", "notes.txt"} <= names
    assert not {n for n in names if n.startswith("rl") or n == "history_rl.csv"}


def test_resume_with_nothing_to_resume_is_refused_and_leaves_no_folder(user_model, tmp_path, capsys):
    out = tmp_path / "new" / "o"
    assert main(small(user_model, "--methods", "rl", "--resume", "--out", str(out))) == 2
    assert "--resume" in one_line_error(capsys) and not (tmp_path / "new").exists()
    assert main(small(user_model, "--methods", "rl", "--resume", "--overwrite", "--out", str(out))) == 2
    assert "--resume and --overwrite" in one_line_error(capsys)


def test_a_sweep_does_not_overwrite_an_earlier_sweep(user_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    argv = small(user_model, "--methods", "exact,rl", "--seeds", "0,1", "--out", str(out))
    assert main(argv) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds a run" in one_line_error(capsys) and snapshot(out) == before
    (out / "sweep.json").unlink()
    (out / "sweep.csv").unlink()
    assert main(argv) == 2  # the runs' own folders count too
    assert "seed0/metrics.json" in one_line_error(capsys)


def test_the_readme_sweep_commands_write_different_folders():
    commands = [line for line in README.read_text().splitlines() if "--seeds" in line and "bayes-klrl compare" in line]
    outs = [re.search(r"--out (\S+)", line).group(1) for line in commands]
    assert len(commands) >= 3 and len(set(outs)) == len(outs), outs


# -- one line, naming the flag, before any work, leaving no folder -------------------------------------------------

REFUSED = {
    "negative-betas": (["--methods", "rl", "--seeds", "0", "--betas", "-0.5,0.7"], "--betas: every beta must be > 0"),
    "workers-1000": (
        ["--methods", "rl", "--seeds", "0,1", "--workers", "1000"],
        "--workers 1000 is more than the 2 run(s)",
    ),
    "threads-0": (["--methods", "rl", "--seeds", "0,1", "--threads", "0"], "--threads must be >= 1, got 0"),
    "threads-no-sweep": (["--methods", "rl", "--threads", "2"], "--threads applies to sweeps"),
    "replay-past-run": (["--methods", "rl", "--replay", "5"], "--replay 5 keeps more batches than the run draws"),
    "warmup-past-end": (["--methods", "rl", "--warmup-steps", "5"], "--warmup-steps 5 runs past the end"),
    "minibatches": (
        ["--methods", "grpo", "--epochs", "2", "--minibatches", "3"],
        "does not split into --minibatches 3",
    ),
    "field-names": (
        ["--methods", "rl", "--kl-ratio-correction"],
        "--kl-ratio-correction applies to a KL term in the loss; set --kl-in loss",
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_bad_flags_are_refused_in_one_line_before_work_leaving_no_folder(name, user_model, tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    argv, message = REFUSED[name]
    ran = never_run(monkeypatch)
    out = tmp_path / "new" / "o"
    assert exit_code([*small(user_model), *argv, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert message in err, err
    assert not ran and not (tmp_path / "new").exists()


def test_a_folder_given_as_model_is_named_as_such(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder, not a model file" in one_line_error(capsys)


def test_an_unreachable_scheduler_is_refused_quickly_in_one_line(user_model, tmp_path, capsys):
    pytest.importorskip("distributed")
    argv = ["--seeds", "0,1", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o")]
    assert main([*small(user_model), *argv]) == 2
    assert "--scheduler tcp://127.0.0.1:9: no Dask scheduler answers" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_options_some_chosen_methods_ignore_get_a_note(user_model, tmp_path, capsys):
    argv = small(user_model, "--methods", "exact,svi,rl", "--kl-estimator", "k3", "--out", str(tmp_path / "a"))
    assert main(argv) == 0
    assert "note: --kl-estimator is not an option of svi" in capsys.readouterr().out
    assert main(small(user_model, "--methods", "exact", "--lr", "0.1", "--policy", "full", "--out",
                      str(tmp_path / "b"))) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "note: --lr applies to every trained method" in printed and "note: --policy applies" in printed


def test_methods_given_as_one_string_are_split_at_commas():
    from bayes_klrl import CompareConfig

    assert CompareConfig(methods="exact, rl").methods == ("exact", "rl")


def test_run_compare_with_resume_needs_a_folder(user_model):
    from bayes_klrl import CompareConfig, load_task, run_compare

    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        run_compare(load_task(str(user_model)), CompareConfig(methods=("rl",), steps=2, resume=True))


# -- k-hat that cannot be trusted, and rows whose importance scoring fails --------------------------------------


def test_a_collapsed_policy_reads_unreliable_with_its_reason(user_model, tmp_path):
    out = tmp_path / "o"
    argv = ["compare", str(user_model), "--methods", "exact,rl", "--steps", "30", "--num-sequences", "16",
            "--lr", "1e6", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "metrics.json").read_text())
    (row,) = [r for r in doc["methods"] if r["method"] == "rl"]
    assert row["kl_q_to_posterior"] > 1  # the step size threw the policy far from pi*
    assert row["khat_label"] == "unreliable" and row["khat_reason"]
    assert row["khat"] is None or math.isfinite(row["khat"])  # a number or null, never "inf"/"-inf"
    assert '"khat": "' not in json.dumps(doc["methods"]) and "khat_reason" in doc["columns"]


def test_unreliable_readings_from_ess_and_the_largest_weight():
    from bayes_klrl.infer.importance import ESS_MIN, khat_reading

    # the README's ppo row: 3.87 nats from pi*, k-hat -4.29, ESS 0.343, largest weight 8.37 x the mean
    assert khat_reading(-4.29, 8.37, ess=0.343, num_samples=1024)[0] == "unreliable"
    assert khat_reading(-4.29, 2.5, ess=0.9, num_samples=1024)[0] == "good"  # bounded weights: no draw dominates
    assert "ESS" in khat_reading(0.2, 50.0, ess=ESS_MIN / 2, num_samples=1024)[1]
    assert khat_reading(0.2, 20.0, ess=0.5, num_samples=32)[0] == "unreliable"  # one weight holds 20/32
    assert khat_reading(math.inf, None)[0] == "unreliable" and khat_reading(0.2, 5.0, ess=0.5)[0] == "good"


@pytest.mark.filterwarnings("default::bayes_klrl.estimators.NoFeasibleSampleWarning")
def test_a_row_whose_importance_scoring_fails_keeps_its_exact_figures(tmp_path, capsys):
    path = tmp_path / "rare.py"
    path.write_text(RARE_MODEL)
    out = tmp_path / "o"
    argv = ["compare", str(path), "--methods", "exact,is,rl", "--steps", "2", "--num-sequences", "16",
            "--eval-samples", "64", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = {r["method"]: r for r in json.loads((out / "metrics.json").read_text())["methods"]}
    assert set(rows) == {"exact", "is", "rl"} and rows["exact"]["log_z"] == pytest.approx(RARE_LOG_Z, abs=1e-4)
    rl = rows["rl"]
    assert rl["scored"] == "exact" and rl["kl_q_to_posterior"] == "inf" and 0 < rl["infeasible_mass"] <= 1
    assert rl["log_z"] is None and rl["ess"] is None and "weight 0" in rl["importance_failed"]
    assert rows["is"]["importance_failed"] and "importance-sampling columns are empty" in captured.out
    for line in captured.err.splitlines():  # warnings read as one line each, no file path and source line first
        assert line.startswith("bayes-klrl: warning:"), line


# -- Ctrl-C ------------------------------------------------------------------------------------------------------

#: the user model, whose reward presses Ctrl-C (SIGINT to this process) in the middle of the N-th training step
#: while the file ``interrupt_at`` beside it holds N
INTERRUPTING_MODEL = """
import os
import pathlib
import signal
import torch
from bayes_klrl import MarkovLM, Task

TRIGGER = pathlib.Path(__file__).with_name("interrupt_at")
CALLS = [0]

def reward(x):
    if x.shape[0] == 24 and TRIGGER.exists():  # a training batch (the exact scoring enumerates 256)
        CALLS[0] += 1
        if CALLS[0] == int(TRIGGER.read_text()):
            TRIGGER.unlink()
            os.kill(os.getpid(), signal.SIGINT)  # sampled, not yet stepped
    return (x == 3).sum(-1).float()

def task(beta=0.7, length=4):
    return Task(prior=MarkovLM.random(4, seed=7), reward=reward, beta=beta, length=length, name="user")
"""


def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_ends(tmp_path, capsys):
    path = tmp_path / "interrupting.py"
    path.write_text(INTERRUPTING_MODEL)
    argv = ["compare", str(path), "--methods", "exact,rl", "--steps", "12", "--num-sequences", "24", "--log-every",
            "2", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    (tmp_path / "interrupt_at").write_text("5")
    assert main([*argv, "--out", str(tmp_path / "cut")]) == 130
    assert not (tmp_path / "interrupt_at").exists()  # Ctrl-C was pressed
    assert main([*argv, "--resume", "--out", str(tmp_path / "cut")]) == 0

    def rl(folder):
        doc = json.loads((tmp_path / folder / "metrics.json").read_text())
        (row,) = [r for r in doc["methods"] if r["method"] == "rl"]
        history = [line.split(",") for line in (tmp_path / folder / "history_rl.csv").read_text().splitlines()]
        wall = history[0].index("wall_seconds")
        return {k: v for k, v in row.items() if k != "wall_seconds"}, [h[:wall] + h[wall + 1 :] for h in history]

    assert rl("cut") == rl("straight")  # bit for bit, wall times aside


@pytest.mark.slow
def test_ctrl_c_stops_a_process_pool_sweep_without_starting_queued_runs(user_model, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    argv = ["compare", str(user_model), "--methods", "rl", "--steps", "100000", "--num-sequences", "8",
            "--checkpoint-every", "20", "--seeds", "0,1,2", "--workers", "2", "--out", str(out), "--no-progress"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "bayes_klrl", *argv], start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not any((out / f"seed{s}" / "rl" / "checkpoint.pt").exists() for s in (0, 1)):
            assert time.monotonic() < deadline and process.poll() is None, "the sweep did not start"
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C at a terminal reaches the whole process group
        _, err = process.communicate(timeout=120)  # 100,000 steps of a queued run would take far longer
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    started = [s for s in (0, 1, 2) if (out / f"seed{s}" / "rl" / "checkpoint.pt").exists()]
    assert started and 2 not in started  # the running runs saved checkpoints; the queued one never started


# -- the README and the tutorial ---------------------------------------------------------------------------------


def test_documented_commands_use_the_virtual_environments_paths():
    """The set-up never activates the venv, so a bare ``bayes-klrl``, ``python`` or ``pip`` would be "command not
    found" or the system's Python."""
    for doc in (README, README.parent / "docs" / "tutorial.md"):
        text = doc.read_text(encoding="utf-8")
        bare = re.findall(r"(?m)(?:^|`|OMP_NUM_THREADS=1 )(?:bayes-klrl|python|pip|torchrun) ", text)
        assert not bare, (doc.name, bare)


def test_the_docs_cite_only_what_the_repository_holds():
    from bayes_klrl.infer.mcmc import MCMCResult

    report = (README.parent / "analysis" / "report.py").read_text(encoding="utf-8")
    modules = re.findall(r'^    "(\w+)",$', report[report.index("MODULES = (") :].split(")")[0], flags=re.M)
    readme = README.read_text(encoding="utf-8")
    tutorial = (README.parent / "docs" / "tutorial.md").read_text(encoding="utf-8")
    for text in (readme, tutorial):
        assert not re.search(r"\bissue \d+", text) and "THEORY.md" not in text
        for path in re.findall(r"`((?:tests|analysis|bayes_klrl|benchmarks|models|docs)/[\w/.-]+\.(?:py|md))`", text):
            assert (README.parent / path).is_file(), path
    numbers = {7: "seven", 8: "eight", 9: "nine", 10: "ten"}
    assert f"runs the {numbers[len(modules)]} analyses" in readme
    assert "run_mcmc(" in readme and "MCMCResult" in readme and "draws" in {f for f in MCMCResult.__dataclass_fields__}


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"steps": "10"}, "steps must be a whole number >= 0, got '10'"),
        ({"steps": 2.5}, "steps must be a whole number >= 0, got 2.5"),
        ({"seed": None}, "seed must be a whole number, got None"),
        ({"checkpoint_dir": "A_FILE"}, "is a file, not a folder"),
    ],
    ids=["steps-text", "steps-fraction", "seed-none", "checkpoint-dir-file"],
)
def test_fit_refuses_bad_arguments_in_one_line(keywords, message, user_model, tmp_path):
    from bayes_klrl import ReinforceTrainer, fit, load_task

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    keywords = {k: str(a_file) if v == "A_FILE" else v for k, v in keywords.items()}
    task = load_task(str(user_model))
    trainer = ReinforceTrainer(task, task.make_policy(), 8)
    with pytest.raises(ValueError, match=re.escape(message)):
        fit(trainer, **{"steps": 2, "seed": 0, **keywords})


def test_an_unreachable_scheduler_address_is_refused_without_dask():
    """The address check itself (a TCP connection, 5 s at most) needs no Dask: a closed port answers at once."""
    from bayes_klrl.sweep import _check_scheduler

    with pytest.raises(ValueError, match=r"--scheduler tcp://127.0.0.1:9: no Dask scheduler answers there"):
        _check_scheduler("tcp://127.0.0.1:9")
    with pytest.raises(ValueError, match="expected an address like tcp://host:8786"):
        _check_scheduler("tcp://host-without-port")
