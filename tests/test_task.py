"""Task validation: every bad input is a ValueError naming the problem."""

import math

import pytest
import torch

from bayes_klrl import MarkovLM, RewardError, Task

PRIOR = MarkovLM.random(3, seed=0)


def count_zero(x):
    return (x == 0).sum(-1).float()


def make(**changes):
    fields = {"prior": PRIOR, "reward": count_zero, "beta": 1.0, "length": 3}
    fields.update(changes)
    return Task(**fields)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"beta": 0.0}, "beta must be finite and > 0"),
        ({"beta": -1.0}, "beta must be finite and > 0"),
        ({"beta": math.nan}, "beta must be finite and > 0"),
        ({"beta": math.inf}, "beta must be finite and > 0"),
        ({"beta": "1"}, "beta must be a number"),
        ({"length": 0}, "length must be an integer >= 1"),
        ({"length": 2.5}, "length must be an integer >= 1"),
        ({"prior": "gpt2"}, "prior must be a bayes_klrl.lm.AutoregressiveLM"),
        ({"reward": 3}, "reward must be callable"),
        ({"reward": lambda x: x.float()}, r"must return shape \(4,\)"),
        ({"reward": lambda x: (x == 0).sum(-1)}, "floating-point"),
        ({"reward": lambda x: torch.full((x.shape[0],), math.nan)}, "NaN"),
        ({"reward": lambda x: torch.full((x.shape[0],), math.inf)}, r"\+inf"),
        ({"reward": lambda x: [0.0] * x.shape[0]}, "must return a torch.Tensor"),
        ({"reward": lambda x: 1 / 0}, "reward function raised ZeroDivisionError"),
    ],
    ids=[
        "beta0",
        "beta-neg",
        "beta-nan",
        "beta-inf",
        "beta-str",
        "length0",
        "length-float",
        "prior",
        "reward-not-callable",
        "reward-shape",
        "reward-int",
        "reward-nan",
        "reward-posinf",
        "reward-list",
        "reward-raises",
    ],
)
def test_bad_task_raises_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        make(**changes)


def test_reward_error_is_value_error():
    assert issubclass(RewardError, ValueError)


def test_minus_inf_reward_is_allowed_and_log_likelihood_divides_by_beta():
    task = make(reward=lambda x: torch.where((x == 0).any(-1), 0.0, -math.inf), beta=2.0)
    x = torch.tensor([[0, 1, 2], [1, 1, 1]])
    assert torch.equal(task.log_likelihood(x), torch.tensor([0.0, -math.inf]))
    assert make(beta=2.0).log_likelihood(x).tolist() == [0.5, 0.0]


def test_replace_validates_again():
    task = make()
    assert task.replace(beta=0.25).beta == 0.25
    with pytest.raises(ValueError, match="beta"):
        task.replace(beta=-2)


def test_num_sequences_and_policy_kinds():
    task = make()
    assert task.num_sequences == 27 and task.is_enumerable() and not task.is_enumerable(10)
    assert type(task.make_policy()).__name__ == "TabularPolicy"
    assert type(task.make_policy("copy")).__name__ == "MarkovLM"
    with pytest.raises(ValueError, match="unknown policy kind"):
        task.make_policy("lstm")


def test_policy_kinds_resolve_and_name_bad_choices():
    from bayes_klrl.lm import TinyTransformerLM
    from bayes_klrl.lm.transformer import TransformerConfig
    from bayes_klrl.task import MAX_TABULAR_LOGITS, POLICY_KINDS, resolve_policy_kind

    task = make()
    assert POLICY_KINDS == ("auto", "tabular", "full", "lora", "copy")
    assert [resolve_policy_kind(task, k) for k in ("auto", "tabular", "full", "copy")] == ["tabular"] * 2 + ["full"] * 2
    full = task.make_policy("full")
    assert type(full) is MarkovLM and all(p.requires_grad for p in full.parameters())
    assert not any(p.requires_grad for p in PRIOR.parameters())  # the prior is left as it was
    big = make(length=14)  # 3^13 prefix rows × 3 logits: above the table limit
    assert big.vocab_size * sum(3**t for t in range(14)) > MAX_TABULAR_LOGITS
    assert resolve_policy_kind(big) == "full"
    with pytest.raises(ValueError, match="policy kind 'lora' needs a Hugging Face prior") as info:
        task.make_policy("lora")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown policy kind 'lstm'; choose one of auto, tabular, full, lora, copy"):
        resolve_policy_kind(task, "lstm")
    lm = TinyTransformerLM(TransformerConfig(vocab_size=3, max_length=3), seed=0)
    flags = [p.requires_grad for p in lm.parameters()]
    make(prior=lm)  # Task no longer switches the prior's gradients off in place
    assert [p.requires_grad for p in lm.parameters()] == flags and all(flags)
