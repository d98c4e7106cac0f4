r"""One way to configure anything: a frozen dataclass whose fields carry their CLI help and choices.

Every configurable run (``compare``, each experiment of ``analysis/``, the benchmark) is a frozen dataclass
whose fields are declared with :func:`option`. :func:`add_config_arguments` turns the fields into ``--flags``
(help, type and choices from the field), :func:`config_from_args` builds the instance from the flags the user
gave on top of any lower-priority defaults (a preset, a model file's ``COMPARE_DEFAULTS``). The command line
is parsed once: a flag that was not given is ``None`` in the namespace, so "given" needs no second parse.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Run:
    ...     steps: int = option(100, "optimizer steps")
    ...     method: str = option("svi", "what to train", choices=("svi", "rl"))
    >>> parser = argparse.ArgumentParser()
    >>> add_config_arguments(parser, Run)
    >>> config_from_args(Run, parser.parse_args(["--steps", "5"]))
    Run(steps=5, method='svi')
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

__all__ = [
    "Preset",
    "option",
    "add_config_arguments",
    "check_choices",
    "config_from_args",
    "given_options",
    "parse_names",
    "with_fields",
]


def option(default: Any, help: str, *, choices: Iterable[str] | Callable[[], Iterable[str]] | None = None):
    """A config field with its help text and, for names, its choices (a tuple, or a function returning one so
    that the choices can come from a registry filled later)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def with_fields(fields: Callable[[], dict], *, after: str):
    """A class decorator (under ``@dataclass``) adding fields made elsewhere after the field ``after``:
    ``fields()`` returns ``{name: (type, dataclasses.Field)}``, e.g. a record's options turned into flags
    (:func:`bayes_klrl.rl.recipes.recipe_flags`). The order of the fields is that of the command line's help."""

    def add(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        if after not in own:
            raise ValueError(f"{cls.__name__} has no field {after!r} to add fields after")
        extra = fields()
        clash = sorted(set(extra) & set(own))
        if clash:
            raise ValueError(f"{cls.__name__} already has field(s) {', '.join(clash)}")
        annotations = {}
        for name, hint in own.items():
            annotations[name] = hint
            if name == after:
                for new, (kind, value) in extra.items():
                    annotations[new] = kind
                    setattr(cls, new, value)
        cls.__annotations__ = annotations
        return cls

    return add


def check_choices(config, *, nonempty: Iterable[str] = ()) -> None:
    """Refuse (ValueError) a field value outside the field's choices: a name must be one of them, a tuple hold only
    them (and at least one for the fields named in ``nonempty``); ``None`` ("the method's own default") passes.
    Call it from ``__post_init__``."""
    nonempty = set(nonempty)
    for field in dataclasses.fields(config):
        allowed, value = choices_of(field), getattr(config, field.name)
        if allowed is None or value is None:
            continue
        if isinstance(value, tuple):
            if (not value and field.name in nonempty) or any(v not in allowed for v in value):
                raise ValueError(f"{field.name} must be from {', '.join(allowed)}; got {value!r}")
        elif value not in allowed:
            raise ValueError(f"unknown {field.name} {value!r}; choose from {', '.join(allowed)}")


def choices_of(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The field's choices, resolved (``None`` when any value is accepted)."""
    choices = field.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


class Preset:
    """Mixin for configs with a small preset: ``QUICK`` holds the changed fields, :meth:`quick` applies them."""

    QUICK: ClassVar[dict] = {}

    @classmethod
    def quick(cls, **changes):
        """The quick preset (a few seconds to a minute), with ``changes`` applied."""
        return cls(**{**cls.QUICK, **changes})


def parse_names(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` → ``("a", "b", "c")``."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() == "none" else float(text)


def _field_type(cls: type, field: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    hint = hints.get(field.name, type(field.default))
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)] or (str,)
    origin = typing.get_origin(hint)
    if origin is tuple or hint is tuple:
        (element, *_) = typing.get_args(hint) or (str,)
        return (element if element in (int, float) else "names"), optional, True
    if isinstance(hint, type) and issubclass(hint, bool):
        return bool, optional, False
    if origin in (types.UnionType, typing.Union):
        return str, optional, False
    return hint, optional, False


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type,
    *,
    skip: Iterable[str] = (),
    presets: dict | None = None,
) -> None:
    """Add one ``--flag`` per field of ``config_class`` (``snake_case`` → ``--snake-case``).

    Flags default to ``None`` ("not given"); the help shows the dataclass default and, with ``presets``
    (e.g. ``{"quick": cls.QUICK}``), each preset's value. Booleans become ``--flag/--no-flag``; tuples are
    comma-separated names (their choices listed in the help and checked by the config); ``X | None`` accepts
    ``none``. Other choices are checked by argparse.
    """
    skip = set(skip)
    for field in dataclasses.fields(config_class):
        if field.name in skip or not field.init:
            continue
        kind, optional, is_tuple = _field_type(config_class, field)
        choices = choices_of(field)
        flag = f"--{field.name.replace('_', '-')}"
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        extra = "".join(
            f"; {name}: {values[field.name]}" for name, values in (presets or {}).items() if field.name in values
        )
        help_text = f"{field.metadata.get('help', '')} (default: {shown}{extra})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_tuple and kind in (int, float):
            kwargs["type"] = _numbers_type(kind)
            kwargs["metavar"] = "X,Y,..."
        elif kind == "names":  # checked by the config itself, whose error names every unknown entry
            kwargs["type"] = parse_names
            kwargs["metavar"] = "A,B,..."
            if choices is not None:
                kwargs["help"] = help_text.replace(" (default:", f"; from {','.join(choices)} (default:", 1)
        else:
            convert = {int: int, float: float}.get(kind, str)
            if optional and convert is float:
                convert = _optional_float
            kwargs["type"] = convert
            if choices is not None:
                kwargs["choices"] = choices
        parser.add_argument(flag, **kwargs)


def _numbers_type(element: type):
    def parse(text: str) -> tuple:
        return tuple(element(v) for v in parse_names(text))

    parse.__name__ = element.__name__  # argparse names the type in its error messages
    return parse


def given_options(config_class: type, args: argparse.Namespace) -> dict:
    """The fields of ``config_class`` the user gave on the command line (not ``None`` in ``args``)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_class)
        if getattr(args, f.name, None) is not None
    }


def config_from_args(config_class: type, args: argparse.Namespace, *, base: dict | None = None):
    """``config_class`` from its defaults, then ``base`` (a preset, a model file's defaults), then the flags given."""
    return config_class(**{**(base or {}), **given_options(config_class, args)})
