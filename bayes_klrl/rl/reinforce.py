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
import copy
import dataclasses

import torch

from ..estimators import per_token_kl
from ..lm import AutoregressiveLM
from ..task import Task
from ..training import Trainer
from .recipes import Recipe, TokenBatch, build_pipeline

__all__ = ["ReinforceTrainer", "TemperedLM"]


class TemperedLM(AutoregressiveLM):
    r"""An LM sampled at temperature :math:`\tau`: :math:`\mu(x_t|x_{<t}) \propto q(x_t|x_{<t})^{1/\tau}`
    (a behaviour policy that differs from the trained one, as a vLLM sampler at another temperature does).

    Example::

        >>> mu = TemperedLM(task.make_policy(), 1.5)
        >>> x = mu.sample(8, task.length); mu.token_log_probs(x).shape == x.shape
        True
    """

    def __init__(self, lm: AutoregressiveLM, temperature: float):
        super().__init__(lm.vocab_size)
        self.lm, self.temperature = lm, float(temperature)

    def start(self, num_sequences):
        logits, state = self.lm.start(num_sequences)
        return logits / self.temperature, state

    def step(self, tokens, state):
        logits, state = self.lm.step(tokens, state)
        return logits / self.temperature, state


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
        self.pipeline = build_pipeline(self.recipe, task.beta)
        # the earlier batches each update reuses, oldest first: (x, behaviour log q(x), per-token log π0, reward),
        # this rank's rows; the step's own batch joins after its update
        self.replay_buffer: collections.deque = collections.deque(maxlen=self.recipe.replay - 1)
        self.reference: AutoregressiveLM = task.prior  # π0, until a reset replaces it by a copy of the policy
        if self.recipe.off_policy and self.world_size > 1:
            raise ValueError("behaviour_lag and behaviour_temperature do not run data-parallel yet")
        # the source: the current policy, or a behaviour policy (the policy of behaviour_lag steps before, at
        # behaviour_temperature) whose per-token log-probabilities go with the batch
        self._sample = self._sample_behaviour if self.recipe.off_policy else self._sample_current
        self.behaviour_snapshots: collections.deque = collections.deque(maxlen=self.recipe.behaviour_lag + 1)
        self._behaviour = self._frozen_policy() if self.recipe.off_policy else None

    @property
    def updates_per_step(self) -> int:
        return self.recipe.epochs * self.recipe.minibatches

    def _score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(token_log_q (N, T), log_q_next (N, T, V) or None)`` under the current policy, differentiable: one
        ``next_token_log_probs`` pass when a piece needs the whole distributions, else ``token_log_probs``."""
        if self.pipeline.needs_vocab:
            log_q_next = self.policy.next_token_log_probs(x)  # (N, T, V)
            return log_q_next.gather(-1, x[..., None]).squeeze(-1), log_q_next
        return self.policy.token_log_probs(x), None

    def _draw(self) -> tuple[TokenBatch, int, dict]:
        """The source piece: this step's batch (this rank's share), after the kept earlier batches under replay
        (oldest first), scored in one differentiable pass; the reference scores it. Returns the batch, the number
        of this step's rows (the last ones) and what to report."""
        x, behaviour_token_log_q = self._sample()  # (n, T), this rank's share; μ's (n, T) or None
        n, kept = x.shape[0], list(self.replay_buffer)
        with torch.no_grad():
            if self.pipeline.needs_token_kl:
                log_prior_next = self.reference.next_token_log_probs(x).detach()  # (n, T, V)
                token_log_prior = log_prior_next.gather(-1, x[..., None]).squeeze(-1)
            else:
                token_log_prior = self.reference.token_log_probs(x)  # (n, T)
            r = self.task.rewards(x)  # (n,)
        token_log_q, log_q_next = self._score(torch.cat([*(k[0] for k in kept), x]) if kept else x)
        extra = {}
        token_kl = None
        if self.pipeline.needs_token_kl:
            token_kl = per_token_kl(log_q_next, log_prior_next)  # (n, T), differentiable
            extra["exact_kl_estimate"] = float(token_kl.detach().sum(-1).mean())
        log_q = token_log_q.detach().sum(-1)  # (M,)
        batch = TokenBatch(
            x=torch.cat([*(k[0] for k in kept), x]) if kept else x,
            token_log_q=token_log_q,
            old_token_log_q=token_log_q.detach(),
            token_log_prior=torch.cat([*(k[2] for k in kept), token_log_prior]) if kept else token_log_prior,
            rewards=torch.cat([*(k[3] for k in kept), r]) if kept else r,
            log_q_next=log_q_next,
            token_kl=token_kl,
            # q(x)/q_behaviour(x): this batch was drawn by this policy
            log_weight=log_q - torch.cat([*(k[1] for k in kept), log_q[-n:]]),
            behaviour_token_log_q=behaviour_token_log_q,
        )
        if self.replay_buffer.maxlen:
            self.replay_buffer.append((x.clone(), log_q[-n:].clone(), token_log_prior, r))
        return batch, n, extra

    def step(self) -> dict[str, float]:
        """One step: draw (the source), then signal, advantage and the loss's updates, each a piece of
        :attr:`pipeline` (:func:`~bayes_klrl.rl.recipes.build_pipeline`)."""
        p = self.pipeline
        if p.reset_due(self.steps_taken // self.updates_per_step):
            self.reference = self._frozen_policy()
        batch, n, stats = self._draw()
        with torch.no_grad():
            rewards = p.reward_transform(batch.rewards, self.gather, self.shard)
            signal = p.signal(rewards, batch)
            batch.advantage, batch.weight, extra = p.advantage(signal, batch, self.gather, self.shard)
        for idx in p.updates(batch.x.shape[0]):
            self.update(p.loss(batch if idx is None else batch.rows(idx, *self._score(batch.x[idx]))))
        r = batch.rewards[-n:]
        kl = batch.old_token_log_q[-n:].sum(-1) - batch.token_log_prior[-n:].sum(-1)  # k1 per sequence
        return {
            "objective_estimate": float((r - self.task.beta * kl).mean()),
            "reward_mean": float(r.mean()),
            "kl_estimate": float(kl.mean()),
            **extra,
            **stats,
        }

    def _sample_current(self) -> tuple[torch.Tensor, None]:
        return self.sample_batch(), None

    def _sample_behaviour(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Draw with the policy of ``behaviour_lag`` steps before (the oldest kept, while fewer are kept) at
        ``behaviour_temperature``; return the batch and its per-token :math:`\log\mu` ``(N, T)``."""
        self.behaviour_snapshots.append(_trainable_copy(self.policy))  # the policy before this step's updates
        _load_parameters(self._behaviour, self.behaviour_snapshots[0])
        tau = self.recipe.behaviour_temperature
        behaviour = self._behaviour if tau == 1.0 else TemperedLM(self._behaviour, tau)
        with torch.no_grad():
            x = behaviour.sample(self.num_sequences, self.task.length)  # (N, T)
            return x, behaviour.token_log_probs(x).detach()

    def _frozen_policy(self) -> AutoregressiveLM:
        """A copy of the current policy that training does not move (the new reference after a reset)."""
        reference = copy.deepcopy(self.policy)
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
        return reference

    def state_dict(self) -> dict:
        """The base's state, the kept replay batches, one list per data-parallel rank (gathered, so rank 0's
        checkpoint holds every rank's rows and a resume continues with the same weights), and the reference's
        parameters once it has been reset."""
        state = super().state_dict()
        if self.recipe.replay > 1:
            state["replay_buffer"] = self.kept_state(self.replay_buffer)
        if self.reference is not self.task.prior:
            state["reference"] = {k: v.detach().cpu().clone() for k, v in self.reference.state_dict().items()}
        if self.recipe.behaviour_lag:
            state["behaviour_snapshots"] = [{k: v.cpu() for k, v in s.items()} for s in self.behaviour_snapshots]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.restore_kept(state.get("replay_buffer"), self.replay_buffer)
        if "reference" in state:
            self.reference = self._frozen_policy()
            self.reference.load_state_dict(state["reference"])
        self.behaviour_snapshots.clear()
        for snapshot in state.get("behaviour_snapshots", []):
            self.behaviour_snapshots.append({k: v.to(self.policy.device) for k, v in snapshot.items()})


def _trainable_copy(policy: AutoregressiveLM) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}


def _load_parameters(module: AutoregressiveLM, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in values:
                p.copy_(values[name])
