"""Model files: Python files defining ``task(**overrides) -> bayes_klrl.Task``; how users bring their own task.

The shipped tasks under the repository's ``models/`` folder follow the same convention and are found by
name (``"markov"`` is ``models/markov.py``). The same files are packaged as ``bayes_klrl._models`` (see
``pyproject.toml``), so an installed wheel runs them without a checkout; :func:`models_dir` says which folder is
used. A model file loads its own data relative to its file (``Path(__file__).parent``), which holds in either
place. A model file may also define ``describe() -> dict`` with
``vocab_size``, ``length`` and ``beta`` so that listing it does not have to load a large LM, and
``COMPARE_DEFAULTS``, a dict of :class:`~bayes_klrl.compare.CompareConfig` fields (``steps``, ``lr``, …) that
``bayes-klrl compare`` uses where the command line gives none (a real LM wants a smaller learning rate).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import sys
from pathlib import Path

from .task import Task

__all__ = [
    "MODELS_ENV",
    "ModelFileError",
    "describe_model",
    "load_model",
    "load_task",
    "models_dir",
    "resolve_model",
    "shipped_tasks",
]


class ModelFileError(ValueError):
    """A model file is missing, fails to import, or its ``task()`` does not give a valid Task."""


#: environment variable naming a folder of model files to use instead of the shipped ones
MODELS_ENV = "BAYES_KLRL_MODELS"
#: the package that holds the installed copy of ``models/`` (``[tool.setuptools.package-dir]`` in pyproject.toml)
_PACKAGED_MODELS = "bayes_klrl._models"


def models_dir() -> Path | None:
    """The folder of shipped model files, the first of:

    1. ``$BAYES_KLRL_MODELS`` if set (it must be an existing folder);
    2. the repository's ``models/``, when the package runs from a checkout (an editable install);
    3. the copy installed with the package (``bayes_klrl._models``), for a wheel install.

    :returns: the folder, or ``None`` if there is none (a package built without its model files).
    :raises ModelFileError: ``$BAYES_KLRL_MODELS`` names no existing folder.

    Example::

        >>> models_dir().joinpath("markov.py").is_file()
        True
    """
    env = os.environ.get(MODELS_ENV)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise ModelFileError(f"{MODELS_ENV}={env}: no such folder (unset it to use the shipped model files)")
        return folder
    return _repository_models() or _packaged_models()


def _repository_models() -> Path | None:
    """``<checkout>/models`` when this package sits in a checkout (beside ``pyproject.toml``), else ``None``."""
    root = Path(__file__).resolve().parents[1]
    folder = root / "models"
    return folder if folder.is_dir() and (root / "pyproject.toml").is_file() else None


def _packaged_models() -> Path | None:
    """The installed copy of ``models/`` (package data of ``bayes_klrl._models``), else ``None``."""
    try:
        folder = Path(str(importlib.resources.files(_PACKAGED_MODELS)))
    except ModuleNotFoundError:  # an editable install made before the package existed, or a build without it
        return None
    return folder if folder.is_dir() else None


def shipped_tasks() -> dict[str, Path]:
    """Shipped task names and their files (files starting with ``_`` or ``train`` are not tasks)."""
    folder = models_dir()
    if folder is None:
        return {}
    return {
        p.stem: p
        for p in sorted(folder.glob("*.py"))
        if not p.stem.startswith(("_", "train")) and "def task(" in p.read_text(encoding="utf-8")
    }


def resolve_model(spec: str) -> Path:
    """A shipped task's name or a path to a model file → the file's path."""
    path = Path(spec)
    if path.is_dir():
        raise ModelFileError(
            f"MODEL '{spec}' is a folder, not a model file: give a shipped task's name (bayes-klrl tasks) or a .py "
            "file (an output folder goes after --out)"
        )
    if path.suffix == ".py" or os.sep in spec or "/" in spec:
        if not path.is_file():
            raise ModelFileError(f"model file '{spec}' not found")
        return path
    shipped = shipped_tasks()
    if spec not in shipped:
        names = ", ".join(shipped) or "none found"
        raise ModelFileError(f"unknown task '{spec}': not a shipped task ({names}) nor a .py model file")
    return shipped[spec]


def _import(path: Path):
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"bayes_klrl_model_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"model file '{path}' cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelFileError(f"model file '{path}' failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def load_task(spec: str | Path, **overrides) -> Task:
    """Load a task from a shipped name or a model file, calling ``task(**overrides)``.

    :raises ModelFileError: one line naming the file and the problem.

    Example::

        >>> load_task("markov", beta=0.5).beta
        0.5
    """
    path = resolve_model(str(spec))
    return _call_task(_import(path), path, overrides)


def _call_task(module, path: Path, overrides: dict) -> Task:
    factory = getattr(module, "task", None)
    if not callable(factory):
        raise ModelFileError(f"model file '{path}' defines no task() function returning a bayes_klrl.Task")
    try:
        task = factory(**overrides)
    except Exception as exc:
        raise ModelFileError(f"model file '{path}': task() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise ModelFileError(f"model file '{path}': task() returned {type(task).__name__}, not a bayes_klrl.Task")
    return task


def describe_model(path: Path) -> dict:
    """``describe()`` of a model file if it has one, else figures read off its loaded task."""
    module = _import(path)
    if callable(getattr(module, "describe", None)):
        return dict(module.describe())
    task = _call_task(module, path, {})
    return {"vocab_size": task.vocab_size, "length": task.length, "beta": task.beta}


def load_model(spec: str | Path, **overrides) -> tuple[Task, dict, Path]:
    """Import a model file once: its task (``task(**overrides)``), its ``COMPARE_DEFAULTS`` and its path.

    :raises ModelFileError: one line naming the file and the problem.
    """
    path = resolve_model(str(spec))
    module = _import(path)
    return _call_task(module, path, overrides), _compare_defaults(module, path), path


def _compare_defaults(module, path: Path) -> dict:
    """The module's ``COMPARE_DEFAULTS`` (``{}`` if it has none), a dict; its names are checked against the compare
    settings where compare reads them (:func:`bayes_klrl.compare.check_compare_defaults`)."""
    value = getattr(module, "COMPARE_DEFAULTS", {})
    if not isinstance(value, dict):
        raise ModelFileError(f"model file '{path}': COMPARE_DEFAULTS must be a dict, got {type(value).__name__}")
    return dict(value)
