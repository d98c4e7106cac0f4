"""Where bayes_klrl/modelfile.py finds the shipped model files: $BAYES_KLRL_MODELS, the checkout, the packaged copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bayes_klrl import modelfile
from bayes_klrl.modelfile import MODELS_ENV, ModelFileError, load_task, models_dir, shipped_tasks

from .conftest import MODELS

REPO = MODELS.parent
TOY = """from bayes_klrl import MarkovLM, Task


def task(beta=1.0):
    return Task(prior=MarkovLM.random(2, seed=0), reward=lambda x: x.sum(-1).float(), beta=beta, length=2)
"""


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)


def test_the_checkout_models_folder_is_used_by_default(no_env):
    assert models_dir() == MODELS
    assert {"markov", "words_sentiment"} <= set(shipped_tasks())


def test_the_environment_variable_wins(monkeypatch, tmp_path):
    (tmp_path / "toy.py").write_text(TOY)
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert models_dir() == tmp_path
    assert shipped_tasks() == {"toy": tmp_path / "toy.py"}
    assert load_task("toy", beta=0.5).beta == 0.5


def test_an_environment_variable_naming_no_folder_is_a_one_line_error(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(MODELS_ENV, str(missing))
    with pytest.raises(ValueError) as info:
        models_dir()
    assert isinstance(info.value, ModelFileError)
    message = str(info.value)
    assert MODELS_ENV in message and str(missing) in message and "\n" not in message


def test_an_empty_environment_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv(MODELS_ENV, "")
    assert models_dir() == MODELS


def _packaged_copy(monkeypatch, tmp_path, files) -> Path:
    """A package ``fake_models`` holding copies of the shipped ``files``, standing in for ``bayes_klrl._models``."""
    package = tmp_path / "fake_models"
    package.mkdir()
    shutil.copy(MODELS / "__init__.py", package)
    for name in files:
        shutil.copy(MODELS / name, package)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(modelfile, "_PACKAGED_MODELS", "fake_models")
    monkeypatch.setattr(modelfile, "_repository_models", lambda: None)
    return package


def test_the_packaged_copy_is_used_without_a_checkout(no_env, monkeypatch, tmp_path):
    package = _packaged_copy(monkeypatch, tmp_path, ["markov.py", "words_sentiment.py", "tiny_transformer.pt"])
    assert models_dir() == package
    assert shipped_tasks() == {"markov": package / "markov.py", "words_sentiment": package / "words_sentiment.py"}
    # a model file finds its checkpoint beside itself, in the packaged copy too
    task = load_task("words_sentiment")
    assert task.vocab_size == 16 and task.length == 5


def test_no_folder_at_all_lists_no_tasks(no_env, monkeypatch):
    monkeypatch.setattr(modelfile, "_repository_models", lambda: None)
    monkeypatch.setattr(modelfile, "_PACKAGED_MODELS", "no_such_package_of_models")
    assert models_dir() is None and shipped_tasks() == {}
    with pytest.raises(ModelFileError, match="none found"):
        load_task("markov")


@pytest.mark.slow
def test_the_wheel_ships_every_package_and_the_model_files(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ["pyproject.toml", "setup.py", "README.md"]:
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "bayes_klrl", source / "bayes_klrl", ignore=ignore)
    shutil.copytree(MODELS, source / "models", ignore=ignore)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("bayes_klrl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(source).as_posix() for p in (source / "bayes_klrl").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names
    shipped = {f"bayes_klrl/_models/{p.name}" for p in MODELS.iterdir() if p.suffix in (".py", ".pt")}
    assert shipped <= names and "bayes_klrl/_models/tiny_transformer.pt" in names
