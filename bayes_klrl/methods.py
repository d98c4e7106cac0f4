r"""The method registry: every inference method the package can run, one entry each.

A method is one of

- :class:`TrainedMethod`: a :class:`~bayes_klrl.training.Trainer` factory (SVI, the RL trainers and their
  recipes, DPG); the policy it trains is scored against the posterior;
- a sampler or the exact posterior (``exact``, ``is``, ``mcmc``), registered by :mod:`bayes_klrl.compare`.

Adding a trainer is one :func:`register` call here (and the trainer's own file); every command line choice,
figure label and checkpoint setting comes from this table.

Example::

    >>> trainer = make_trainer("rl", task, task.make_policy(), num_sequences=256, lr=0.02)
    >>> METHODS["rl"].label
    'REINFORCE (RLOO)'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .lm import AutoregressiveLM
from .task import Task

__all__ = ["METHODS", "TrainedMethod", "register", "make_trainer", "trained_methods"]


@dataclass(frozen=True)
class TrainedMethod:
    """A method that trains a policy.

    :ivar name: the name used on the command line and in metrics.json.
    :ivar label: a short human name for tables and figure legends.
    :ivar description: one line for ``--help``.
    :ivar factory: ``factory(task, policy, num_sequences, *, lr, **options) -> Trainer``.
    :ivar options: names of the ``compare`` settings passed to ``factory`` as keywords (and recorded in the
        method's row and checkpoint).
    :ivar fixed: keyword arguments always passed (what makes a preset, e.g. ``kl_penalty=False``).
    """

    name: str
    label: str
    description: str
    factory: Callable[..., Any]
    options: tuple[str, ...] = ()
    fixed: dict = field(default_factory=dict)
    kind: str = "trained"

    def make_trainer(self, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"method {self.name!r} takes no option(s) {', '.join(unknown)}")
        return self.factory(task, policy, num_sequences, lr=lr, **self.fixed, **options)


#: every registered method, in registration order (the order of the command line's choices)
METHODS: dict[str, Any] = {}


def register(method):
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

    :param options: the method's own settings (``estimator`` for SVI, ``kl_estimator`` for PPO, …);
        :attr:`TrainedMethod.options` lists them.
    """
    spec = METHODS.get(method)
    if spec is None or spec.kind != "trained":
        raise ValueError(f"unknown trained method {method!r}; choose from {', '.join(trained_methods())}")
    return spec.make_trainer(task, policy, num_sequences, lr=lr, **options)


# ---------------------------------------------------------------------------------------------------------------
# the trainers


def _svi(task, policy, num_sequences, **kwargs):
    from .infer.svi import SVITrainer

    return SVITrainer(task, policy, num_sequences, **kwargs)


def _reinforce(task, policy, num_sequences, **kwargs):
    from .rl import ReinforceTrainer

    return ReinforceTrainer(task, policy, num_sequences, **kwargs)


def _ppo(task, policy, num_sequences, **kwargs):
    from .rl import PPOTrainer

    return PPOTrainer(task, policy, num_sequences, **kwargs)


def _dpg(task, policy, num_sequences, **kwargs):
    from .rl import DPGTrainer

    return DPGTrainer(task, policy, num_sequences, **kwargs)


register(
    TrainedMethod("svi", "SVI (Pyro)", "stochastic variational inference, the policy as guide", _svi, ("estimator",))
)
register(TrainedMethod("rl", "REINFORCE (RLOO)", "REINFORCE, k1 KL in the reward, leave-one-out baseline", _reinforce))
register(
    TrainedMethod(
        "ppo",
        "PPO",
        "PPO-clip, per-token KL in the reward, optional adaptive KL controller",
        _ppo,
        ("kl_estimator", "kl_target"),
    )
)
register(TrainedMethod("dpg", "DPG", "distributional policy gradient: forward KL(pi*||q)", _dpg))
register(
    TrainedMethod(
        "rl_no_kl",
        "REINFORCE without KL",
        "plain reward maximization (no KL term): collapses onto argmax r",
        _reinforce,
        fixed={"kl_penalty": False},
    )
)
register(
    TrainedMethod(
        "dpg_batch",
        "DPG (batch-normalized)",
        "DPG with weights self-normalized within each batch",
        _dpg,
        fixed={"normalize": "batch"},
    )
)
