"""bayes_klrl.config: dataclass fields become flags with their help, types and choices; one parse."""

import argparse
from dataclasses import dataclass

import pytest

from bayes_klrl.compare import CompareConfig
from bayes_klrl.config import Preset, add_config_arguments, config_from_args, given_options, option


@dataclass(frozen=True)
class Example(Preset):
    steps: int = option(100, "optimizer steps")
    lr: float = option(0.02, "learning rate")
    names: tuple[str, ...] = option(("a",), "which names", choices=("a", "b"))
    target: float | None = option(None, "a target or none")
    flag: bool = option(False, "a switch")
    kind: str = option("x", "a kind", choices=lambda: ("x", "y"))

    QUICK = {"steps": 3}


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Example, presets={"quick": Example.QUICK})
    return parser, parser.parse_args(list(argv))


def test_flags_parse_to_typed_fields():
    _, args = parse("--steps", "5", "--lr", "0.5", "--names", "a, b", "--target", "0.3", "--flag", "--kind", "y")
    assert config_from_args(Example, args) == Example(5, 0.5, ("a", "b"), 0.3, True, "y")


def test_flags_not_given_are_absent_so_lower_defaults_apply():
    _, args = parse("--steps", "9")
    assert given_options(Example, args) == {"steps": 9}
    assert config_from_args(Example, args, base=Example.QUICK | {"lr": 0.1}) == Example(steps=9, lr=0.1)
    assert Example.quick() == Example(steps=3)


def test_optional_float_accepts_none_and_booleans_negate():
    _, args = parse("--target", "none", "--no-flag")
    assert given_options(Example, args) == {"flag": False}


def test_help_shows_field_help_defaults_presets_and_choices():
    parser, _ = parse()
    text = parser.format_help()
    for piece in ("optimizer steps (default: 100; quick: 3)", "from a,b", "{x,y}", "--flag, --no-flag"):
        assert piece in " ".join(text.split())


def test_argparse_refuses_a_choice_the_field_does_not_allow():
    parser, _ = parse()
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "z"])


def test_mutable_default_is_refused():
    with pytest.raises(TypeError, match="immutable"):
        option([1], "a list")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"methods": ("exact", "rl", "rl")}, "more than once"),
        ({"methods": ("exact", "nope")}, "unknown method"),
        ({"lr": -1.0}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"kl_target": -3.0}, "kl_target"),
        ({"methods": ("grpo",), "num_sequences": 100}, "multiple of group_size 16"),
        ({"methods": ("rl",), "kl_ratio_correction": True}, "kl_in='loss'"),
        ({"methods": ("mcmc",), "mcmc_proposal": "rl"}, "before mcmc"),
        ({"advantage": "median"}, "unknown advantage"),
    ],
    ids=[
        "repeated",
        "unknown",
        "lr-negative",
        "lr-nan",
        "checkpoint",
        "kl-target",
        "group",
        "ratio",
        "proposal",
        "adv",
    ],
)
def test_compare_config_refuses_bad_settings_before_any_run(changes, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(**changes)


def test_number_tuples_parse_their_elements():
    @dataclass(frozen=True)
    class Sweep:
        betas: tuple[float, ...] = option((0.5,), "betas")
        seeds: tuple[int, ...] = option((0,), "seeds")

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Sweep)
    assert config_from_args(Sweep, parser.parse_args(["--betas", "0.3,0.7", "--seeds", "1,2"])) == Sweep(
        (0.3, 0.7), (1, 2)
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "1,x"])
