"""Every docstring example of the library runs, in a namespace with the names the examples assume.

The examples may use ``task`` (the shipped ``markov`` task), ``policy`` (a trainable policy at the prior),
``x`` (eight sequences drawn from the prior), ``tmp_path`` and the public names of :mod:`bayes_klrl`. Modules of
the optional ``[lm]`` extra are checked only when it is installed.
"""

import doctest
import importlib
import pkgutil
import warnings

import pytest
import torch

import bayes_klrl

OPTIONAL = (
    "bayes_klrl.lm.hf",
    "bayes_klrl.lm.lora",
    "bayes_klrl.lm.smollm2",
    "bayes_klrl.tasks.text_rewards",
    "bayes_klrl.__main__",
)
MODULES = ["bayes_klrl"] + [
    m.name for m in pkgutil.walk_packages(bayes_klrl.__path__, "bayes_klrl.") if m.name not in OPTIONAL
]


@pytest.fixture(scope="module")
def namespace():
    task = bayes_klrl.load_task("markov")
    return {
        **{name: getattr(bayes_klrl, name) for name in bayes_klrl.__all__},
        "bk": bayes_klrl,
        "torch": torch,
        "task": task,
        "x": task.prior.sample(8, task.length, generator=torch.Generator().manual_seed(0)),
    }


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, namespace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write, write here
    module = importlib.import_module(name)
    task = namespace["task"]
    globs = {**vars(module), **namespace, "policy": task.make_policy(), "tmp_path": tmp_path}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for test in doctest.DocTestFinder().find(module, name, globs=dict(globs)):
            if test.examples:
                torch.manual_seed(0)
                report = []
                if runner.run(test, out=report.append).failed:
                    failures.append("".join(report))
    assert not failures, "\n".join(failures)
