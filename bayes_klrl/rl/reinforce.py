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

import collections
import dataclasses

import torch

from ..estimators import per_token_kl, rao_blackwell_surrogate, replay_advantages
from ..lm import AutoregressiveLM
from ..task import Task
from ..training import Trainer
from .recipes import Recipe, advantages, learning_signal, minibatch_indices, recipe_loss

__all__ = ["ReinforceTrainer"]


class ReinforceTrainer(Trainer):
    r"""REINFORCE (RLOO by default) with the recipe options of :class:`~bayes_klrl.rl.recipes.Recipe`.

    :param int num_sequences: sequences sampled (and rewards evaluated) per step.
    :param float lr: the (peak) learning rate (the optimizer and its schedule: ``options`` below).
    :param str kl_in: ``"reward"`` (default), ``"loss"`` or ``"none"`` (plain reward maximization, whose optimum
        is a point mass on :math:`\arg\max r`: distribution collapse). The reported ``objective_estimate`` is
        always :math:`r - \beta\,\mathrm{KL}` (k1).
    :param str kl_gradient: ``"sampled"`` (default) or ``"analytic"``: with the KL in the reward, the exact
        per-token KL over the vocabulary at every sampled prefix, differentiated directly, and each token scored by
        the reward and the later positions' exact KLs (:func:`~bayes_klrl.estimators.rao_blackwell_surrogate`):
        unbiased for :math:`\nabla J`, one ``next_token_log_probs`` pass per LM; lower variance only while the sampled
        log-ratio's noise dominates (see :class:`~bayes_klrl.infer.svi.LeaveOneOutELBO`). Refused (one line)
        for ``kl_in="loss"``/``"none"``, another ``kl_estimator``, group advantages and batch reuse.
    :param int replay: batches each gradient uses, this one included (default 1: on-policy RLOO). Earlier batches
        are rescored by the current policy and importance-weighted, :math:`w_i \propto q(x_i)/q_{\text{behaviour}}(x_i)`
        (self-normalized), their signals recomputed and centred by the weighted leave-one-out mean: a consistent
        estimate of :math:`\nabla J` from ``replay`` times the sequences, with the same fixed point :math:`\pi^*`.
        The weights' effective sample size is reported as ``replay_ess``; the batches kept are in checkpoints.
        Each step scores all ``replay × num_sequences`` sequences in one differentiable pass: on a large LM its
        activation memory grows with ``replay``.
    :param options: the other fields of :class:`~bayes_klrl.rl.recipes.Recipe` (``kl_estimator``,
        ``kl_ratio_correction``, ``advantage``, ``group_size``, ``normalization``, ``epochs``, ``minibatches``,
        ``clip``, ``kl_gradient``) and of :class:`~bayes_klrl.training.OptimizerSettings` (``optimizer``, ``weight_decay``,
        ``lr_schedule``, ``warmup_steps``, ``max_grad_norm``).

    Example::

        >>> result = fit(ReinforceTrainer(task, task.make_policy(), num_sequences=1024), steps=1500, seed=0)
        >>> grpo = ReinforceTrainer(task, task.make_policy(), 1024, kl_in="loss", kl_estimator="k3",
        ...                         advantage="group-std", normalization="sequence")
        >>> rb = ReinforceTrainer(task, task.make_policy(), 1024, kl_gradient="analytic")
        >>> replayed = ReinforceTrainer(task, task.make_policy(), 16, replay=32)   # the last 32 batches
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
        if self.world_size > 1 and self.recipe.kl_gradient == "analytic":
            raise ValueError("kl_gradient='analytic' does not run data-parallel yet; use the sampled KL under torchrun")
        # the earlier batches each update reuses, oldest first: (x, behaviour log q(x), per-token log π0, reward),
        # this rank's rows; the step's own batch joins after its update
        self.replay_buffer: collections.deque = collections.deque(maxlen=self.recipe.replay - 1)

    @property
    def updates_per_step(self) -> int:
        return self.recipe.epochs * self.recipe.minibatches

    def step(self) -> dict[str, float]:
        task, beta, recipe = self.task, self.task.beta, self.recipe
        x = self.sample_batch()  # (N, T): this rank's share under data parallelism
        if recipe.kl_gradient == "analytic":
            return self._analytic_kl_step(x)
        if recipe.replay > 1:
            return self._replay_step(x)
        token_log_q = self.policy.token_log_probs(x)  # (N, T), differentiable
        with torch.no_grad():
            old_token_log_q = token_log_q.detach()
            token_log_prior = task.prior.token_log_probs(x)  # (N, T)
            r = task.rewards(x)  # (N,)
            kl = old_token_log_q.sum(-1) - token_log_prior.sum(-1)  # k1 per sequence, for reporting
            signal = learning_signal(r, old_token_log_q, token_log_prior, beta, recipe)
            # over the whole batch (gathered from every rank under data parallelism), then this rank's rows
            advantage = self.shard(advantages(self.gather(signal), recipe.advantage, recipe.group_size))  # (N,)
        if not recipe.reuses_batches:  # one update on this batch: reuse the forward pass that scored it
            self.update(recipe_loss(token_log_q, old_token_log_q, token_log_prior, advantage, beta, recipe))
        else:
            for idx in minibatch_indices(x.shape[0], recipe.epochs, recipe.minibatches):
                token_log_q = self.policy.token_log_probs(x[idx])
                self.update(
                    recipe_loss(token_log_q, old_token_log_q[idx], token_log_prior[idx], advantage[idx], beta, recipe)
                )
        return {
            "objective_estimate": float((r - beta * kl).mean()),
            "reward_mean": float(r.mean()),
            "kl_estimate": float(kl.mean()),
        }

    def _replay_step(self, x: torch.Tensor) -> dict[str, float]:
        r"""One update on this batch and the kept earlier ones (``replay > 1``): the loss is
        :math:`-\sum_i w_i (R_i - b_i)\log q(x_i)` over every kept sequence, :math:`R_i` the signal under the
        current policy, :math:`w_i` and :math:`b_i` from :func:`~bayes_klrl.estimators.weighted_leave_one_out`
        with log-weights :math:`\log q(x_i) - \log q_{\text{behaviour}}(x_i)`; over the gathered buffers of every
        rank under data parallelism."""
        task, beta, recipe = self.task, self.task.beta, self.recipe
        n = x.shape[0]
        with torch.no_grad():
            token_log_prior = task.prior.token_log_probs(x)  # (N, T)
            r = task.rewards(x)  # (N,)
        kept = list(self.replay_buffer)  # earlier batches; this one joins the buffer only once its update is taken
        xs = [*(k[0] for k in kept), x]
        token_log_q = self.policy.token_log_probs(torch.cat(xs))  # (M, T), differentiable: one pass over all
        log_q = token_log_q.detach().sum(-1)
        with torch.no_grad():
            log_weight = log_q - torch.cat([*(k[1] for k in kept), log_q[-n:]])  # this batch: drawn by this policy
            rewards = torch.cat([*(k[3] for k in kept), r])
            log_prior = torch.cat([*(k[2] for k in kept), token_log_prior])
            signal = learning_signal(rewards, token_log_q, log_prior, beta, recipe)
            weight, advantage, ess, _ = replay_advantages(signal, log_weight, self.gather, self.shard)
        per_sequence = -(weight * advantage) * token_log_q.sum(-1)
        if recipe.normalization == "sequence":
            per_sequence = per_sequence / x.shape[-1]
        self.update(per_sequence.sum() * self.world_size)  # weights sum to 1 over every rank: update averages
        self.replay_buffer.append((x.clone(), log_q[-n:].clone(), token_log_prior, r))
        kl = log_q[-n:] - token_log_prior.sum(-1)
        return {
            "objective_estimate": float((r - beta * kl).mean()),
            "reward_mean": float(r.mean()),
            "kl_estimate": float(kl.mean()),
            "replay_ess": ess,
        }

    def state_dict(self) -> dict:
        """The base's state and the kept replay batches, one list per data-parallel rank (gathered, so rank 0's
        checkpoint holds every rank's rows and a resume continues with the same weights)."""
        state = super().state_dict()
        if self.recipe.replay > 1:
            state["replay_buffer"] = self.kept_state(self.replay_buffer)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.restore_kept(state.get("replay_buffer"), self.replay_buffer)

    def _analytic_kl_step(self, x: torch.Tensor) -> dict[str, float]:
        r"""One update with the exact per-token KL (``kl_gradient="analytic"``): the loss is
        :math:`-\frac{1}{N}\sum_i \frac{1}{n_i}\big[\sum_s (R_{is} - b_{is})\log q(x_{is}|x_{i,<s})
        - \beta\sum_t \mathrm{KL}_t(x_{i,<t})\big]`, :math:`R_{is} = r_i - \beta\sum_{t>s}\mathrm{KL}_t`
        (:func:`~bayes_klrl.estimators.rao_blackwell_surrogate`); :math:`\beta/N` times SVI's analytic estimate."""
        task, beta = self.task, self.task.beta
        log_q_next = self.policy.next_token_log_probs(x)  # (N, T, V), differentiable, one pass where available
        token_log_q = log_q_next.gather(-1, x[..., None]).squeeze(-1)  # (N, T)
        with torch.no_grad():
            log_prior_next = task.prior.next_token_log_probs(x).detach()  # (N, T, V)
            token_log_prior = log_prior_next.gather(-1, x[..., None]).squeeze(-1)
            r = task.rewards(x)  # (N,)
            kl = token_log_q.detach().sum(-1) - token_log_prior.sum(-1)  # k1 per sequence, for reporting
        token_kl = per_token_kl(log_q_next, log_prior_next)  # (N, T)
        per_sequence = rao_blackwell_surrogate(token_log_q, beta * token_kl, r)  # (N,), to maximize
        if self.recipe.normalization == "sequence":
            per_sequence = per_sequence / x.shape[-1]
        self.update(-per_sequence.mean())
        return {
            "objective_estimate": float((r - beta * kl).mean()),
            "reward_mean": float(r.mean()),
            "kl_estimate": float(kl.mean()),
            "exact_kl_estimate": float(token_kl.detach().sum(-1).mean()),
        }
