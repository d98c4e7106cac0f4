"""The shipped GPT-2 task (models/gpt2_words.py) through the command line: full fine-tuning and LoRA without
hand-written code, and its exact posterior against the numbers stated in the model file."""

import json

import pytest

pytest.importorskip("transformers")

from bayes_klrl.cli import main  # noqa: E402
from bayes_klrl.exact import exact_posterior  # noqa: E402
from bayes_klrl.modelfile import load_task  # noqa: E402


@pytest.mark.parametrize("policy", ["full", "lora"])
def test_compare_trains_the_gpt2_task_with_either_policy(tmp_path, capsys, policy):
    out = tmp_path / policy
    argv = ["compare", "gpt2_words", "--methods", "exact,svi,rl", "--policy", policy, "--steps", "3",
            "--num-sequences", "16", "--eval-samples", "32", "--lr", "1e-3", "--optimizer", "adamw",
            "--lr-schedule", "linear", "--max-grad-norm", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"policy: {policy}" in printed
    rows = {row["method"]: row for row in json.loads((out / "metrics.json").read_text())["methods"]}
    assert rows["exact"]["kl_q_to_posterior"] == 0
    for method in ("svi", "rl"):  # the same steps under the same settings (SVI's gradient is RL's)
        assert rows[method]["kl_q_to_posterior"] > 0
        assert rows[method]["lr_schedule"] == "linear" and rows[method]["optimizer"] == "adamw"
    assert rows["svi"]["kl_q_to_posterior"] == pytest.approx(rows["rl"]["kl_q_to_posterior"], rel=1e-4)


def test_the_auto_policy_of_a_hugging_face_prior_is_lora(tmp_path, capsys):
    assert main(["compare", "gpt2_words", "--methods", "rl", "--steps", "1", "--num-sequences", "4",
                 "--eval-samples", "8", "--out", str(tmp_path), "--no-progress"]) == 0  # fmt: skip
    assert "policy: lora (auto)" in capsys.readouterr().out


def test_the_restricted_vocabulary_makes_an_enumerable_posterior():
    task = load_task("gpt2_words")
    assert (task.vocab_size, task.length, task.num_sequences) == (6, 5, 7776)
    post = exact_posterior(task)
    assert float(post.log_probs.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    assert post.expected_reward > float((post.log_prior.exp() * post.rewards).sum())  # the reward pulls up
