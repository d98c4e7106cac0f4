"""The method registry: every trained method builds its trainer, recipe options override presets, rows are typed."""

import math

import pytest
import torch

from bayes_klrl.compare import CompareConfig, Comparison, run_compare, save_comparison
from bayes_klrl.methods import METHODS, Row, make_trainer, trained_methods
from bayes_klrl.rl import ReinforceTrainer
from bayes_klrl.rl.recipes import PRESETS

from .conftest import small_markov_task


@pytest.mark.parametrize("name", trained_methods())
def test_every_trained_method_builds_and_steps(name):
    task = small_markov_task()
    trainer = make_trainer(name, task, task.make_policy(), 32, lr=0.01)
    assert trainer.method == name
    stats = trainer.step()
    assert all(math.isfinite(v) for v in stats.values() if isinstance(v, float))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_recipe_presets_are_registered_with_their_options(name):
    task = small_markov_task()
    trainer = make_trainer(name, task, task.make_policy(), 32, lr=0.01, group_size=8)
    assert isinstance(trainer, ReinforceTrainer)
    assert trainer.recipe == PRESETS[name].__class__(**{**PRESETS[name].as_dict(), "group_size": 8})


def test_unknown_options_and_methods_are_refused():
    task = small_markov_task()
    with pytest.raises(ValueError, match="takes no option"):
        make_trainer("svi", task, task.make_policy(), 32, lr=0.01, group_size=4)
    with pytest.raises(ValueError, match="unknown trained method"):
        make_trainer("exact", task, task.make_policy(), 32, lr=0.01)


def test_settings_merge_preset_and_given_options():
    config = CompareConfig(methods=("grpo",), group_size=4, num_sequences=8)
    settings = METHODS["grpo"].settings(config)
    assert settings["group_size"] == 4 and settings["kl_estimator"] == "k3" and settings["advantage"] == "group-std"
    assert METHODS["rl"].settings(CompareConfig())["kl_in"] == "reward"


def test_row_documents_every_column_and_keeps_the_shared_ones():
    row = Row(method="x", elbo=1.0, settings={"kernel": "gibbs"})
    record = row.to_dict()
    assert list(record)[: len(Row.SHARED)] == list(Row.SHARED)
    assert record["kernel"] == "gibbs" and "rhat" not in record
    assert set(Row.columns()) >= set(record) - {"kernel"}
    assert all(Row.columns().values())


def test_run_compare_writes_nothing_and_save_comparison_writes_every_file(tmp_path):
    task = small_markov_task()
    config = CompareConfig(methods=("exact", "rl", "grpo", "is"), steps=4, num_sequences=32, log_every=2)
    comparison = run_compare(task, config)
    assert isinstance(comparison, Comparison) and not any(tmp_path.iterdir())
    rows = {row.method: row for row in comparison.rows}
    assert rows["exact"].scored == "exact" and rows["rl"].scored == "exact" and rows["is"].scored == "monte carlo"
    assert rows["grpo"].settings["kl_estimator"] == "k3"
    assert rows["exact"].log_z == pytest.approx(comparison.posterior.log_z)
    save_comparison(comparison, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.json", "metrics.csv", "history_rl.csv", "history_grpo.csv", "rl.nc", "grpo.nc", "is.nc"} <= names
    assert comparison.fits["rl"].steps == 4 and torch.is_tensor(next(comparison.fits["rl"].policy.parameters()))


def test_infinite_figures_stay_distinct_from_not_computed(tmp_path):
    import json

    from bayes_klrl.storage import write_json

    row = Row(method="rl", elbo=-math.inf, kl_q_to_posterior=math.inf, kl_posterior_to_q=None)
    record = json.loads(write_json(tmp_path / "m.json", row.to_dict()).read_text())
    assert record["elbo"] == "-inf" and record["kl_q_to_posterior"] == "inf" and record["kl_posterior_to_q"] is None
    assert float(record["kl_q_to_posterior"]) == math.inf  # float() reads the spelling back
