r"""Stochastic variational inference on the KL-regularized RL model, with the policy as the guide.

Every token is discrete, so gradients are score-function (REINFORCE) estimates:

.. math::

    \nabla_\theta \mathrm{ELBO} = \mathbb{E}_{q_\theta}\big[f(x)\,\nabla_\theta \log q_\theta(x)\big], \qquad
    f(x) = \log\pi_0(x) + r(x)/\beta - \log q_\theta(x).

With Adam (invariant to the scale of the gradient) and the same seed, ``"loo"`` SVI takes the same steps as
the plain-torch REINFORCE trainer of :mod:`bayes_klrl.rl`, whose signal is :math:`\beta f`.

The ELBO estimators (``estimator=``, ``kl_gradient=``, ``replay=``, ``sites=``) are in :mod:`bayes_klrl.infer.elbo`;
the spread of their gradients is measured by :mod:`bayes_klrl.infer.gradients`.
"""

from __future__ import annotations

import contextlib
import functools

import pyro
import pyro.optim
from pyro.infer.util import is_validation_enabled

from ..lm import AutoregressiveLM
from ..model import PolicyGuide, model
from ..task import Task
from ..training import Trainer
from .elbo import (
    DEFAULT_SITES,
    ESTIMATORS,
    KL_GRADIENTS,
    LeaveOneOutELBO,
    ReplayELBO,
    check_options,
    make_elbo,
    resolve_sites,
    sequence_log_weights,
)
from .gradients import GradientStats, gradient_samples, gradient_variance

__all__ = [
    "DEFAULT_SITES",
    "ESTIMATORS",
    "KL_GRADIENTS",
    "GradientStats",
    "LeaveOneOutELBO",
    "ReplayELBO",
    "SVITrainer",
    "gradient_samples",
    "gradient_variance",
    "check_options",
    "make_elbo",
    "resolve_sites",
    "sequence_log_weights",
]


class SVITrainer(Trainer):
    r"""SVI on :func:`~bayes_klrl.model.model` with :class:`~bayes_klrl.model.PolicyGuide`: Pyro's ELBO computes the
    gradient, the trainer's optimizer (:class:`~bayes_klrl.training.OptimizerSettings`, the same as every RL
    trainer's) takes the step.

    This is ``pyro.infer.SVI.step`` written out — ``elbo.loss_and_grads(model, guide, ...)`` then one optimizer
    step on the parameters ``pyro.module`` registered — so that learning-rate schedules, AdamW and gradient-norm
    clipping act exactly as in the RL trainers. The gradient is taken on :math:`\beta\,\mathrm{ELBO}` per sequence,
    which is :math:`J` per sequence (the ELBO identity): with the ``"loo"`` estimator it equals the REINFORCE
    trainer's gradient, so a clipping threshold or a weight decay means the same thing in both.

    :param task: the task.
    :param policy: a trainable policy (e.g. ``task.make_policy()``).
    :param int num_sequences: sequences (particles) per step.
    :param float lr: the (peak) learning rate.
    :param str estimator: ``"loo"``, ``"trace"`` or ``"tracegraph"``.
    :param str kl_gradient: ``"sampled"`` (default) or ``"analytic"`` (the exact per-token KL, Rao-Blackwellized;
        ``"loo"`` only): see :class:`LeaveOneOutELBO`.
    :param str sites: the site layout of the model and guide, ``"sequence"`` or ``"tokens"``; ``None``: the
        estimator's :data:`DEFAULT_SITES` (``"sequence"`` but for ``"tracegraph"``).
    :param int replay: steps whose sequences each gradient uses, this one included (default 1); ``> 1`` needs
        ``estimator="loo"``, the sampled KL gradient and the sequence layout (:class:`ReplayELBO`: the same
        estimator, and the same steps, as :class:`~bayes_klrl.rl.ReinforceTrainer`'s ``replay``). The kept
        sequences are in checkpoints; ``replay_ess`` is reported.
    :param bool validate_every_step: run Pyro's validation (argument, support and site checks) on every step;
        by default only the first step is validated, which removes most of Pyro's per-step overhead.
    :param optimizer_options: optimizer, schedule and clipping (:class:`~bayes_klrl.training.OptimizerSettings`).

    Example::

        >>> result = fit(SVITrainer(task, task.make_policy(), num_sequences=1024), steps=1500, seed=0)
        >>> trainer = SVITrainer(task, task.make_policy(), 256, optimizer="adamw", lr_schedule="cosine", max_grad_norm=1.0)
    """

    method = "svi"

    def __init__(
        self,
        task: Task,
        policy: AutoregressiveLM,
        num_sequences: int = 1024,
        *,
        lr: float = 0.02,
        estimator: str = "loo",
        kl_gradient: str = "sampled",
        sites: str | None = None,
        replay: int = 1,
        validate_every_step: bool = False,
        **optimizer_options,
    ):
        super().__init__(task, policy, num_sequences, lr=lr, **optimizer_options)
        elbo, infer = make_elbo(estimator, kl_gradient, replay)
        pyro.clear_param_store()
        self.estimator = estimator
        self.kl_gradient = kl_gradient
        self.sites = resolve_sites(estimator, sites, replay)
        self.replay = replay
        self.elbo = elbo
        self.model = functools.partial(model, sites=self.sites)
        self.guide = PolicyGuide(policy, infer, sites=self.sites)
        if self.world_size > 1:  # the leave-one-out baseline over the whole batch, across ranks
            if kl_gradient == "analytic":
                raise ValueError("kl_gradient='analytic' does not run data-parallel yet; use the sampled KL")
            elbo.gather, elbo.shard = self.gather, self.shard
        self.validate_every_step = validate_every_step
        self._validated = False

    def step(self) -> dict[str, float]:
        validate = self.validate_every_step or not self._validated
        self.optimizer.zero_grad(set_to_none=True)
        n = self.local_num_sequences  # this rank's share of the batch (all of it on one process)
        presampled = self._presampled() if self.world_size > 1 else contextlib.nullcontext()
        with pyro.validation_enabled(validate and is_validation_enabled()), presampled:
            loss = self.elbo.loss_and_grads(self.model, self.guide, self.task, n)  # -ELBO, summed over the share
        self._validated = True
        scale = self.task.beta / n  # d(-ELBO summed) -> d(-J per sequence); update() averages over ranks
        for p in self.parameters:
            if p.grad is not None:
                p.grad.mul_(scale)
        self.update()
        stats = {"elbo_estimate": -loss / n}
        if self.replay > 1:
            stats["replay_ess"] = self.elbo.last_ess
        return stats

    def state_dict(self) -> dict:
        """The base's state and, with ``replay``, the kept draws of every rank (so a resume is exact)."""
        state = super().state_dict()
        if self.replay > 1:
            state["replay_buffer"] = self.kept_state(self.elbo.kept)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.replay > 1:
            self.restore_kept(state.get("replay_buffer"), self.elbo.kept)

    @contextlib.contextmanager
    def _presampled(self):
        """Data parallel with ``identical_sampling``: the guide's draw is this rank's rows of the whole batch drawn
        from the shared stream (:meth:`~bayes_klrl.training.Trainer.sample_batch`), so the run repeats a
        one-process run; otherwise nothing changes."""
        if self.world_size == 1 or not self.identical_sampling:
            yield
            return
        if self.sites != "sequence":
            raise ValueError("identical data-parallel sampling needs the sequence site layout")
        x = self.sample_batch()
        policy, draw = self.policy, self.policy.sample
        policy.sample = lambda num_sequences, length, **kwargs: x  # the guide's one sequence-level draw
        try:
            yield
        finally:
            del policy.sample  # back to the class's method
            assert policy.sample == draw
