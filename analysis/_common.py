r"""What the experiments of ``analysis/`` share: loading a task, training a copy of a policy, checks on configs,
writing ``summary.json``, the two-mode task, and the command line every script has.

The scripts import this file as a sibling (``from _common import …``): run them as ``python analysis/<name>.py``,
or put ``analysis/`` on ``sys.path`` before importing them (as ``tests/analysis/conftest.py`` does).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from bayes_klrl.compare import prepare_output
from bayes_klrl.config import add_config_arguments, config_from_args
from bayes_klrl.lm import AutoregressiveLM
from bayes_klrl.methods import make_trainer
from bayes_klrl.modelfile import load_task
from bayes_klrl.storage import write_json
from bayes_klrl.task import Task
from bayes_klrl.tasks.two_modes import two_modes_task  # noqa: F401  (re-exported for the experiments)
from bayes_klrl.training import FitResult, fit

__all__ = [
    "check_at_least_two",
    "check_positive",
    "expected_distinct",
    "fit_copy",
    "load",
    "mean",
    "script_parser",
    "sequence_labels",
    "two_modes_task",
    "write_summary",
]

#: where the scripts write by default (``runs/report/<experiment>``, as ``analysis/report.py`` does)
DEFAULT_OUT = Path("runs/report")


# -- configs -----------------------------------------------------------------------------------------------------
def check_positive(config, *names: str) -> None:
    """Raise ``ValueError`` unless every field ``names`` of ``config`` is a number > 0."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def check_at_least_two(config, *names: str) -> None:
    """Sizes that must be >= 2 (a leave-one-out baseline needs two sequences in the batch)."""
    if any(getattr(config, name) < 2 for name in names):
        raise ValueError(f"{' and '.join(names)} must be >= 2")


def script_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The flags every experiment script has: ``--out`` (default ``runs/report/<name>``), ``--quick``,
    ``--plot-only`` and ``--no-progress``; the first paragraph of the script's docstring ``doc`` describes it.
    The script adds its config's flags with :func:`bayes_klrl.config.add_config_arguments`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / name, help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def experiment_main(module, argv: list[str] | None = None) -> int:
    """The whole command line of an experiment script ``module`` (its ``__doc__``, ``NAME``, ``Config`` with a
    ``QUICK`` preset, ``run`` and ``plot``): parse once, train and save the data (unless ``--plot-only``), then
    draw from the saved files only and print the figures' paths."""
    parser = script_parser(module.__doc__, module.NAME)
    add_config_arguments(parser, module.Config, presets={"quick": module.Config.QUICK})
    args = parser.parse_args(argv)
    try:  # bad settings, an unusable folder or missing data: one line, before any training
        config = config_from_args(module.Config, args, base=module.Config.QUICK if args.quick else None)
        prepare_output(args.out)
        if args.plot_only and not has_saved_data(args.out):
            raise ValueError(f"--plot-only but no saved data in {args.out}; run without it first")
    except ValueError as exc:
        print(f"{module.NAME}: error: {exc}", file=sys.stderr)
        return 2
    if not args.plot_only:
        module.run(config, args.out, progress=not args.no_progress)
    for path in module.plot(args.out):
        print(path)
    return 0


def has_saved_data(out: str | Path) -> bool:
    """Whether ``out`` holds an experiment's saved data (every experiment writes its ``summary.json`` last)."""
    return (Path(out) / "summary.json").is_file()


# -- tasks and training ------------------------------------------------------------------------------------------
def load(task_spec: str, beta: float | None = None) -> Task:
    """A shipped task or model file (:func:`bayes_klrl.modelfile.load_task`), with β replaced if given."""
    task = load_task(task_spec)
    return task if beta is None else task.replace(beta=beta)


def fit_copy(
    method: str, task: Task, template: AutoregressiveLM, config, seed: int, *, progress: bool, evaluate=None
) -> FitResult:
    """Train a copy of ``template`` with ``method`` (:func:`bayes_klrl.methods.make_trainer`) for ``config.steps``
    steps of ``config.num_sequences`` sequences at ``config.lr`` from ``seed``, logging ``evaluate`` every
    ``config.log_every`` steps (only at the ends when the config has no ``log_every``)."""
    trainer = make_trainer(method, task, copy.deepcopy(template), config.num_sequences, lr=config.lr)
    log_every = getattr(config, "log_every", config.steps)
    return fit(trainer, steps=config.steps, seed=seed, log_every=log_every, evaluate=evaluate, progress=progress)


def expected_distinct(log_probs: torch.Tensor, num_samples: int) -> float:
    r"""Expected number of distinct sequences among ``num_samples`` i.i.d. draws of ``exp(log_probs)``:
    :math:`\sum_x 1 - (1 - p(x))^N`.

    Example::

        >>> expected_distinct(torch.log(torch.tensor([0.5, 0.5])), 2)   # 2 - 2 * 0.25
        1.5
    """
    p = log_probs.double().exp().clamp(max=1.0)
    return float((-torch.expm1(num_samples * torch.log1p(-p.clamp(max=1 - 1e-16)))).sum())


def sequence_labels(task: Task, sequences: torch.Tensor) -> list[str]:
    """Readable labels: the task's ``decode`` (word tasks) or the token ids joined by spaces."""
    if task.decode is not None:
        return list(task.decode(sequences.cpu()))
    return [" ".join(str(int(t)) for t in row) for row in sequences.cpu()]


# -- saving ------------------------------------------------------------------------------------------------------
def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def write_summary(out: Path, config, task: Task | None = None, about: dict | None = None, **fields) -> dict:
    """Write and return ``summary.json``: the task's name and β (with a ``task``), ``about`` it, the config, then
    ``fields``."""
    summary = {} if task is None else {"task": task.name, "beta": task.beta}
    summary.update(about or {})
    summary.update(config=dataclasses.asdict(config), **fields)
    write_json(Path(out) / "summary.json", summary)
    return summary
