r"""The trained-method adapter: :class:`TrainedMethod` runs a :class:`~bayes_klrl.training.Trainer` under
:func:`~bayes_klrl.training.fit` and :func:`score_policy` scores the policy it trained against :math:`\pi^*`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import importance_inference_data
from ..exact import ExactPosterior, policy_metrics
from ..infer.importance import NoSupportError, importance_sample
from ..lm import AutoregressiveLM
from ..task import Task
from ..training import fit
from .registry import OPTIMIZER_OPTIONS, Method
from .row import _ROW_COLUMNS, EXACT, MONTE_CARLO, MethodResult, Row, RunContext, _importance_columns

__all__ = ["TrainedMethod", "score_policy"]


def score_policy(
    task: Task,
    policy: AutoregressiveLM,
    posterior: ExactPosterior | None,
    *,
    num_samples: int,
    chunk_size: int,
    seed: int,
) -> tuple[dict, Any]:
    r"""A policy's row columns and its draws: exact divergences when ``posterior`` is given, and always
    importance sampling with the policy as the proposal for :math:`\pi^*` (:math:`\hat Z`, ESS, :math:`\hat k`).
    Without a posterior, ELBO, :math:`\mathbb{E}_q[r]` and :math:`\mathrm{KL}(q\|\pi_0) = \mathbb{E}_q[\log q - \log\pi_0]`
    are Monte Carlo averages over the same draws.

    :returns: ``(columns, importance_result)``; the result is ``None`` (and ``importance_failed`` says why)
        when every draw has weight 0.
    """
    try:
        imp = importance_sample(task, policy, num_samples=num_samples, chunk_size=chunk_size, seed=seed)
    except NoSupportError as exc:  # the exact figures still stand; the row says why its Monte Carlo ones are empty
        imp, columns = None, {"importance_failed": str(exc)}
    else:
        columns = _importance_columns(imp)
    if posterior is not None:
        exact = dataclasses.asdict(policy_metrics(task, policy, posterior))  # every figure the Row has a column for
        columns.update(scored=EXACT, **{k: v for k, v in exact.items() if k in _ROW_COLUMNS})
    elif imp is None:
        columns.update(scored=MONTE_CARLO)
    else:  # E_q[log w] = ELBO(q); E_q[r]; KL(q‖π0)
        draws = imp.samples
        columns.update(
            scored=MONTE_CARLO,
            elbo=imp.elbo,
            expected_reward=float(draws.reward.mean()),
            kl_to_prior=float((draws.log_q - draws.log_prior).mean()),  # KL(q‖π0) = E_q[log q − log π0]
        )
    return columns, imp


# ---------------------------------------------------------------------------------------------------------------
# trained methods


def fit_in_context(
    trainer, context: RunContext, name: str, *, steps: int, lr: float, settings: dict | None = None, evaluate=None
):
    """:func:`~bayes_klrl.training.fit` a trainer of a comparison: checkpoints in ``<checkpoint_dir>/<name>``,
    resumed when asked and one is there, and the run's defining settings (the task and its fingerprint, batch,
    ``lr``, seed, policy kind, and ``settings``) recorded, so a resume with others is refused."""
    task, config = context.task, context.config
    checkpoint_dir = context.checkpoint_dir / name if context.checkpoint_dir is not None else None
    return fit(
        trainer,
        steps=steps,
        seed=config.seed,
        log_every=config.log_every,
        evaluate=evaluate,
        progress=context.progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=config.checkpoint_every,
        resume=config.resume and checkpoint_dir is not None and (checkpoint_dir / "checkpoint.pt").exists(),
        settings={
            "task": task.name,
            "beta": task.beta,
            "length": task.length,
            "vocab_size": task.vocab_size,
            "task_fingerprint": task.fingerprint(),
            "num_sequences": config.num_sequences,
            "lr": lr,
            "seed": config.seed,
            "policy": config.policy,
            **(settings or {}),
        },
    )


@dataclass(frozen=True)
class TrainedMethod(Method):
    """A method that trains a policy with a :class:`~bayes_klrl.training.Trainer`.

    :ivar name: the name used on the command line and in metrics.json.
    :ivar label: a short human name for tables and figure legends.
    :ivar description: one line for ``--help``.
    :ivar factory: ``factory(task, policy, num_sequences, *, lr, **options) -> Trainer``.
    :ivar options: names of the ``compare`` settings passed to ``factory`` as keywords (recorded in the
        method's row and checkpoint).
    :ivar fixed: keyword arguments always passed (what makes a preset, e.g. a recipe's options), recorded too.
    :ivar validate: ``validate(num_sequences, **settings)`` raising ValueError on options the trainer refuses.
    """

    name: str
    label: str
    description: str
    factory: Callable[..., Any]
    options: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "trained"

    validate: Callable[..., None] | None = None

    def make_trainer(self, task: Task, policy: AutoregressiveLM, num_sequences: int, *, lr: float, **options):
        unknown = sorted(set(options) - set(self.options) - set(OPTIMIZER_OPTIONS))
        if unknown:
            raise ValueError(f"method {self.name!r} takes no option(s) {', '.join(unknown)}")
        trainer = self.factory(task, policy, num_sequences, lr=lr, **{**self.fixed, **options})
        trainer.method = self.name  # checkpoints and progress bars carry the registered name
        return trainer

    def settings(self, config) -> dict:
        """The method's effective options: its fixed (preset) ones, overridden by those ``config`` sets (not None),
        and the optimizer's (:data:`OPTIMIZER_OPTIONS`, the same for every trained method)."""
        given = {k: getattr(config, k) for k in self.options if getattr(config, k, None) is not None}
        optimizer = {k: getattr(config, k) for k in OPTIMIZER_OPTIONS if hasattr(config, k)}
        return {**self.fixed, **given, **optimizer}

    def check(self, config) -> None:
        """Refuse options this method cannot run with, before any method runs (``validate`` hook)."""
        if self.validate is not None:
            own = {k: v for k, v in self.settings(config).items() if k not in OPTIMIZER_OPTIONS}
            self.validate(config.num_sequences, **own)

    def run(self, context: RunContext) -> MethodResult:
        task, config = context.task, context.config
        settings = self.settings(config)
        own = {k: v for k, v in settings.items() if k in self.options or k in OPTIMIZER_OPTIONS}  # (+ fixed ones)
        trainer = self.make_trainer(task, task.make_policy(config.policy), config.num_sequences, lr=config.lr, **own)
        posterior = context.posterior

        def evaluate(policy: AutoregressiveLM) -> dict:  # exact learning curves
            m = policy_metrics(task, policy, posterior)
            return {
                "exact_elbo": m.elbo,
                "kl_q_to_posterior": m.kl_q_to_posterior,
                "expected_reward": m.expected_reward,
            }

        result = fit_in_context(
            trainer,
            context,
            self.name,
            steps=config.steps,
            lr=config.lr,
            settings=settings,
            evaluate=evaluate if posterior is not None else None,
        )
        columns, imp = score_policy(
            task,
            result.policy,
            posterior,
            num_samples=config.eval_samples,
            chunk_size=config.num_sequences,
            seed=config.seed,
        )
        row = Row(
            method=self.name,
            reward_evaluations=result.reward_evaluations,
            wall_seconds=result.wall_seconds,
            settings=settings,
            **columns,
        )
        idata = importance_inference_data(task, imp, self.name) if imp is not None else None
        draws = imp.samples if imp is not None else None
        return MethodResult(row=row, inference_data=idata, fit=result, draws=draws)
