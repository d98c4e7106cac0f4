r"""REINFORCE with the KL in the reward and a leave-one-out baseline (RLOO), and the recipes built on it, in plain torch.

By default it maximizes :math:`J(q) = \mathbb{E}_q[r] - \beta\,\mathrm{KL}(q\|\pi_0)` with the sequence-level reward
:math:`R(x) = r(x) - \beta(\log q(x) - \log\pi_0(x))` ("k1"), a leave-one-out baseline over the batch, and
the loss :math:`-\frac1N\sum_i (R_i - b_i)\log q(x_i)`. Since :math:`R = \beta f` with :math:`f` the SVI signal,
its gradient is :math:`\beta/N` times the SVI leave-one-out estimate: the same algorithm.

The keyword options are those of :class:`~bayes_klrl.rl.recipes.Recipe` (where the KL goes, its estimator,
the ratio correction, the advantage, the normalization, several epochs of minibatches): GRPO, its
ratio-corrected variant and Dr. GRPO are this trainer with other options (``PRESETS`` in
:mod:`bayes_klrl.rl.recipes`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..lm import AutoregressiveLM
from ..task import Task
from ..training import Trainer
from .recipes import Recipe, advantages, learning_signal, minibatch_indices, recipe_loss

__all__ = ["ReinforceTrainer"]


class ReinforceTrainer(Trainer):
    r"""REINFORCE (RLOO by default) with the recipe options of :class:`~bayes_klrl.rl.recipes.Recipe`.

    :param int num_sequences: sequences sampled (and rewards evaluated) per step.
    :param float lr: Adam learning rate.
    :param str kl_in: ``"reward"`` (default), ``"loss"`` or ``"none"`` (plain reward maximization, whose optimum
        is a point mass on :math:`\arg\max r`: distribution collapse). The reported ``objective_estimate`` is
        always :math:`r - \beta\,\mathrm{KL}` (k1).
    :param options: the other fields of :class:`~bayes_klrl.rl.recipes.Recipe` (``kl_estimator``,
        ``kl_ratio_correction``, ``advantage``, ``group_size``, ``normalization``, ``epochs``, ``minibatches``,
        ``clip``) and of :class:`~bayes_klrl.training.OptimizerSettings` (``optimizer``, ``weight_decay``,
        ``lr_schedule``, ``warmup_steps``, ``max_grad_norm``).

    Example::

        >>> result = fit(ReinforceTrainer(task, task.make_policy(), num_sequences=1024), steps=1500, seed=0)
        >>> grpo = ReinforceTrainer(task, task.make_policy(), 1024, kl_in="loss", kl_estimator="k3",
        ...                         advantage="group-std", normalization="sequence")
    """

    method = "rl"

    def __init__(
        self,
        task: Task,
        policy: AutoregressiveLM,
        num_sequences: int = 1024,
        *,
        lr: float = 0.02,
        **options,
    ):
        recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
        optimizer_options = {k: v for k, v in options.items() if k not in recipe_fields}
        super().__init__(task, policy, num_sequences, lr=lr, **optimizer_options)
        self.recipe = Recipe(**{k: v for k, v in options.items() if k in recipe_fields})
        self.recipe.check_batch(self.num_sequences)

    @property
    def updates_per_step(self) -> int:
        return self.recipe.epochs * self.recipe.minibatches

    def step(self) -> dict[str, float]:
        task, beta, recipe = self.task, self.task.beta, self.recipe
        x = self.policy.sample(self.num_sequences, task.length)  # (N, T)
        token_log_q = self.policy.token_log_probs(x)  # (N, T), differentiable
        with torch.no_grad():
            old_token_log_q = token_log_q.detach()
            token_log_prior = task.prior.token_log_probs(x)  # (N, T)
            r = task.rewards(x)  # (N,)
            kl = old_token_log_q.sum(-1) - token_log_prior.sum(-1)  # k1 per sequence, for reporting
            signal = learning_signal(r, old_token_log_q, token_log_prior, beta, recipe)
            advantage = advantages(signal, recipe.advantage, recipe.group_size)  # (N,)
        if not recipe.reuses_batches:  # one update on this batch: reuse the forward pass that scored it
            self.update(recipe_loss(token_log_q, old_token_log_q, token_log_prior, advantage, beta, recipe))
        else:
            for idx in minibatch_indices(self.num_sequences, recipe.epochs, recipe.minibatches):
                token_log_q = self.policy.token_log_probs(x[idx])
                self.update(
                    recipe_loss(token_log_q, old_token_log_q[idx], token_log_prior[idx], advantage[idx], beta, recipe)
                )
        return {
            "objective_estimate": float((r - beta * kl).mean()),
            "reward_mean": float(r.mean()),
            "kl_estimate": float(kl.mean()),
        }
