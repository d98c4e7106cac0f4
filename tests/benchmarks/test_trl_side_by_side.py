"""``benchmarks/trl_side_by_side.py`` and the gpt2_words task it trains.

- The task's exact log-probabilities (6-word vocabulary, renormalized) equal TRL's view of the same checkpoint
  (TRL's fused LM head and the model's full 9-id softmax) on all 7,776 sequences.
- ``--quick --side both`` writes results files of the documented structure, with finite, non-negative KLs.
- The summary's counting rules, and one-line refusals of bad settings (no TRL needed).

Skipped without ``transformers`` (and, for the TRL parts, ``trl`` and ``datasets``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

import trl_side_by_side as sbs  # noqa: E402  (benchmarks/ is on sys.path: tests/benchmarks/conftest.py)

from bayes_klrl.exact import enumerate_sequences  # noqa: E402

#: float32 forward passes of the same weights, summed over 5 tokens
LOG_PROB_TOLERANCE = 1e-5


def _need_trl():
    pytest.importorskip("trl")
    pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def words():
    return sbs.load_words_module()


@pytest.fixture(scope="module")
def gpt2_task(words):
    return words.task()


# -- the task against TRL's view -----------------------------------------------------------------------------------
def test_task_log_probs_equal_trl_fused_head_on_every_sequence(words, gpt2_task):
    """TRL loads the checkpoint by path and scores completions with its fused LM head over all 9 ids."""
    _need_trl()
    from trl.trainer.utils import add_fused_lm_head, create_model_from_path

    words.model_classes()  # registers the model type, as loading the task does
    model = create_model_from_path(str(words.CHECKPOINT))
    model.eval()
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(words.CHECKPOINT))
    word_ids = torch.tensor(words.word_ids(tokenizer))

    x = enumerate_sequences(gpt2_task.vocab_size, gpt2_task.length)  # (7776, 5) word indices
    assert x.shape == (6**5, 5)
    inputs = torch.cat([torch.full((len(x), 1), tokenizer.bos_token_id), word_ids[x]], dim=1)  # (N, 6) model ids
    labels = inputs.clone()
    labels[:, :1] = -100  # as TRL: only the completion is scored
    with torch.no_grad():
        out = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=labels, fused_lm_head=True)
        trl_log_probs = out.log_probs[:, -gpt2_task.length :].sum(-1).double()  # (N,)
        ours = gpt2_task.prior.log_prob(x).double()  # (N,)
    assert torch.isfinite(out.entropy).all()  # the suppressed ids do not turn p log p into NaN
    assert float((trl_log_probs - ours).abs().max()) <= LOG_PROB_TOLERANCE
    assert float(ours.exp().sum()) == pytest.approx(1.0, abs=1e-6)  # the 7,776 sequences hold all of TRL's mass


def test_task_log_probs_equal_full_vocabulary_softmax(words, gpt2_task):
    """The model's own logits over all 9 ids (what ``generate`` samples from) give the same sequence log-probs."""
    model, tokenizer = words.load_model()
    word_ids = torch.tensor(words.word_ids(tokenizer))
    x = enumerate_sequences(gpt2_task.vocab_size, gpt2_task.length)
    inputs = torch.cat([torch.full((len(x), 1), tokenizer.bos_token_id), word_ids[x]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=inputs).logits[:, :-1].double()  # (N, 5, 9)
        full = torch.log_softmax(logits, -1).gather(-1, word_ids[x][..., None]).squeeze(-1).sum(-1)
        special = torch.softmax(logits, -1)[
            ..., [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
        ]
        ours = gpt2_task.prior.log_prob(x).double()
    assert float(special.max()) == 0.0
    assert float((full - ours).abs().max()) <= LOG_PROB_TOLERANCE


# -- the runner ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    _need_trl()
    out = tmp_path_factory.mktemp("side_by_side")
    assert sbs.main(["--quick", "--side", "both", "--out", str(out)]) == 0
    return {
        "trl": json.loads((out / "trl_rloo.json").read_text()),
        "ours": json.loads((out / "ours_rl.json").read_text()),
    }


@pytest.mark.parametrize("side", ["trl", "ours"])
def test_quick_results_structure(quick_results, side):
    document = quick_results[side]
    assert {"description", "task", "kl_goals", "machine", "summary", "runs"} <= set(document)
    assert document["task"]["num_sequences"] == 6**5 and document["task"]["beta"] == 0.5
    assert len(document["runs"]) == 1
    run = document["runs"][0]
    assert run["side"] == side and run["lr"] == 1e-3 and run["seed"] == 0
    assert run["settings"]  # every setting of the side written out
    assert set(run["code"]) == {"commit", "library_changed"}
    if side == "trl":
        config = run["settings"]["rloo_config"]
        assert config["num_generations"] == config["per_device_train_batch_size"] == 16
        assert config["beta"] == 0.5 and config["max_completion_length"] == 5 and config["max_grad_norm"] == 1.0
        assert config["lr_scheduler_type"] == "linear"
    else:
        assert run["settings"]["options"]["lr_schedule"] == "linear"
    curve = run["curve"]
    sequences = [p["sequences"] for p in curve]
    assert sequences[0] == 0 and sequences[-1] == run["sequences"] and sequences == sorted(set(sequences))
    for point in curve:
        assert set(point) == {"sequences", "wall_seconds", "kl_q_to_posterior"}
        assert math.isfinite(point["kl_q_to_posterior"]) and point["kl_q_to_posterior"] >= 0
        assert math.isfinite(point["wall_seconds"]) and point["wall_seconds"] >= 0
    # the first check is the prior: KL(pi0 || pi*)
    assert curve[0]["kl_q_to_posterior"] == pytest.approx(document["task"]["kl_prior_to_posterior"], rel=1e-6)
    final = run["final"]
    assert final["kl_q_to_posterior"] == pytest.approx(curve[-1]["kl_q_to_posterior"], rel=1e-6)
    assert math.isfinite(final["kl_posterior_to_q"]) and final["kl_posterior_to_q"] >= 0
    (row,) = document["summary"]
    assert row["seeds"] == [0]
    assert row["kl_after_sequences"] == curve[-1]["kl_q_to_posterior"]
    assert row["seconds_per_1000_sequences"] > 0
    for goal in document["kl_goals"]:
        assert f"sequences_to_kl_{goal:g}" in row


def test_merge_replaces_the_same_run_and_keeps_others():
    """A results file accumulates runs; a rerun of the same side, method, lr, seed and length replaces its run."""
    runs = [_run(0, [0.9, 0.1]), _run(1, [0.9, 0.2])]
    again = dict(_run(0, [0.9, 0.05]), marker=True)
    merged = sbs.merge_runs(runs, again)
    assert [(r["seed"], r.get("marker", False)) for r in merged] == [(1, False), (0, True)]
    other_lr = sbs.merge_runs(merged, _run(0, [0.9, 0.3], lr=3e-3))
    assert len(other_lr) == 3


# -- the summary -----------------------------------------------------------------------------------------------------
def _run(seed, kls, lr=1e-3, wall=1.0):
    curve = [{"sequences": 16 * i, "wall_seconds": wall * i, "kl_q_to_posterior": kl} for i, kl in enumerate(kls)]
    return {
        "side": "trl",
        "method": "trl_rloo",
        "lr": lr,
        "seed": seed,
        "sequences": 16 * (len(kls) - 1),
        "num_sequences": 16,
        "curve": curve,
        "seconds_per_1000_sequences": 1000 * curve[-1]["wall_seconds"] / curve[-1]["sequences"],
    }


def test_summary_counts_first_check_below_each_goal_and_medians_misses_as_infinite():
    runs = [_run(0, [0.9, 0.04, 0.004]), _run(1, [0.9, 0.3, 0.04]), _run(2, [0.9, 0.5, 0.2])]
    (row,) = sbs.summarize(runs, (0.05, 0.005))
    assert row["sequences_to_kl_0.05_per_seed"] == [16, 32, None]
    assert row["sequences_to_kl_0.05"] == 32  # median of 16, 32, +inf
    assert row["sequences_to_kl_0.005_per_seed"] == [32, None, None]
    assert row["sequences_to_kl_0.005"] is None  # the median is a miss
    assert row["kl_after_sequences"] == 0.04
    assert row["seconds_per_1000_sequences"] == pytest.approx(1000 * 2 / 32)


def test_summary_groups_seeds_whose_settings_name_their_seed():
    """TRL's config carries seed and data_seed: the seeds of one setting still form one row; other options do not."""
    runs = [
        dict(_run(s, [0.9, 0.01]), settings={"rloo_config": {"seed": s, "data_seed": s, "beta": 0.5}}) for s in (0, 1)
    ]
    other = dict(_run(2, [0.9, 0.01]), settings={"rloo_config": {"seed": 2, "data_seed": 2, "beta": 0.7}})
    rows = sbs.summarize([*runs, other], (0.05,))
    assert [r["seeds"] for r in rows] == [[0, 1], [2]]


def test_summary_groups_by_learning_rate():
    rows = sbs.summarize([_run(0, [0.9, 0.1], lr=3e-4), _run(0, [0.9, 0.01], lr=1e-3)], (0.05,))
    assert [r["lr"] for r in rows] == [3e-4, 1e-3]
    assert [r["sequences_to_kl_0.05"] for r in rows] == [None, 16]


# -- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lrs", "-1"], "lrs must be"),
        (["--sequences", "20"], "multiple of num_sequences"),
        (["--ours-options", "[1]"], "JSON object"),
        (["--ours-options", "{"], "not JSON"),
        (["--lrs", "a,b"], "comma-separated"),
    ],
    ids=["negative-lr", "partial-batch", "options-not-dict", "options-not-json", "lrs-not-numbers"],
)
def test_bad_settings_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sbs.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_unknown_method_is_one_line_error(tmp_path, capsys):
    assert sbs.main(["--quick", "--side", "ours", "--method", "nope", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown trained method 'nope'" in err[0]
