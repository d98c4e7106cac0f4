"""Checkpoints and resume: an interrupted run continues to the same parameters; outputs are atomic."""

import json

import pytest
import torch

from bayes_klrl import fit
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.rl import PPOTrainer, ReinforceTrainer
from bayes_klrl.storage import write_json

TRAINERS = {"svi": SVITrainer, "rl": ReinforceTrainer, "ppo": PPOTrainer}


@pytest.mark.parametrize("method", list(TRAINERS))
def test_resume_reaches_the_same_parameters(method, small_task, tmp_path):
    make = TRAINERS[method]
    straight = fit(make(small_task, small_task.make_policy(), 64), steps=20, seed=5, log_every=5).policy
    fit(make(small_task, small_task.make_policy(), 64), steps=10, seed=5, log_every=5, checkpoint_dir=tmp_path)
    resumed = fit(
        make(small_task, small_task.make_policy(), 64),
        steps=20,
        seed=5,
        log_every=5,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert torch.equal(straight.logits, resumed.policy.logits)
    assert [row["step"] for row in resumed.history] == [0, 5, 10, 15, 20]


def test_keyboard_interrupt_leaves_a_checkpoint(small_task, tmp_path):
    trainer = ReinforceTrainer(small_task, small_task.make_policy(), 32)
    step, calls = trainer.step, []

    def interrupted_step():
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return step()

    trainer.step = interrupted_step
    with pytest.raises(KeyboardInterrupt):
        fit(trainer, steps=50, seed=0, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["method"] == "rl"


def test_resume_without_checkpoint_is_an_error(small_task, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(
            ReinforceTrainer(small_task, small_task.make_policy(), 8),
            steps=2,
            seed=0,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_write_json_is_atomic_and_spells_infinities_apart_from_null(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": float("inf"), "b": [1.0, float("nan")], "c": None})
    assert json.loads(path.read_text()) == {"a": "inf", "b": [1.0, "nan"], "c": None}

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json(path, {"a": Unserializable()})
    assert json.loads(path.read_text()) == {"a": "inf", "b": [1.0, "nan"], "c": None}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_resume_with_other_settings_is_refused(tmp_path):
    """A checkpoint remembers the settings that define its run; resuming with another lr is a clear error."""
    from bayes_klrl.cli import main

    model = tmp_path / "m.py"
    model.write_text(
        "import torch\nfrom bayes_klrl import MarkovLM, Task\n"
        "def task():\n"
        "    return Task(prior=MarkovLM.random(3, seed=0), reward=lambda x: (x == 0).sum(-1).float(), beta=1.0,"
        " length=3, name='m')\n"
    )
    argv = [
        "compare",
        str(model),
        "--methods",
        "rl",
        "--steps",
        "4",
        "--num-sequences",
        "8",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0
    assert main([*argv[:-2], "--steps", "6", "--resume", "--out", str(tmp_path / "o")]) == 0  # extending is fine
    with pytest.raises(ValueError, match=r"was written with lr=0\.02; this run has lr=0\.05"):
        from bayes_klrl.compare import CompareConfig, run_compare
        from bayes_klrl.modelfile import load_task

        config = CompareConfig(methods=("rl",), steps=8, num_sequences=8, lr=0.05, resume=True)
        run_compare(load_task(model), config, checkpoint_dir=tmp_path / "o")
