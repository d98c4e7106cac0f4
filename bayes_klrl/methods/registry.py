r"""The registry: the :class:`Method` base (a name, a label, ``run``) and :data:`METHODS`, every method
``compare`` can run, in registration order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..lm import AutoregressiveLM
from ..task import Task
from .row import MethodResult, RunContext

__all__ = ["METHODS", "OPTIMIZER_OPTIONS", "Method", "make_trainer", "register", "trained_methods"]


class Method(ABC):
    """A registered method: a name, a label for tables and legends, one line of help, and :meth:`run`."""

    name: str
    label: str
    description: str
    kind: str = "sampler"
    #: the ``compare`` settings this method reads (recorded in its row; a trained method's checkpoint refuses others)
    options: tuple[str, ...] = ()

    @abstractmethod
    def run(self, context: RunContext) -> MethodResult:
        """Run on ``context.task``; return the row and draws, write nothing (checkpoints aside)."""

    def check(self, config: Any) -> None:  # noqa: B027 (a no-op hook, as in Pyro's MCMCKernel)
        """Refuse settings this method cannot run with (hook; called for every method before any runs)."""

    def check_task(self, task: Task, config: Any, enumerable: bool) -> None:  # noqa: B027 (a no-op hook)
        """Refuse a task this method cannot run on with these settings (hook; called for every method with the
        task loaded, before any runs)."""


#: the optimizer settings every trained method takes (:class:`~bayes_klrl.training.OptimizerSettings`)
OPTIMIZER_OPTIONS = ("optimizer", "weight_decay", "lr_schedule", "warmup_steps", "max_grad_norm")

#: every registered method, in registration order (the order of the command line's choices)
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (names are unique) and return it."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def trained_methods() -> tuple[str, ...]:
    """Names of the methods that train a policy."""
    return tuple(name for name, m in METHODS.items() if m.kind == "trained")


def make_trainer(method: str, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float, **options):
    """The trainer of ``method`` (a name from :func:`trained_methods`) on ``policy``.

    :param options: the method's own settings (``estimator`` for SVI, ``kl_estimator`` for PPO, …;
        :attr:`TrainedMethod.options` lists them) and the optimizer's (:data:`OPTIMIZER_OPTIONS`).
    """
    spec = METHODS.get(method)
    if spec is None or spec.kind != "trained":
        raise ValueError(f"unknown trained method {method!r}; choose from {', '.join(trained_methods())}")
    return spec.make_trainer(task, policy, num_sequences, lr=lr, **options)
