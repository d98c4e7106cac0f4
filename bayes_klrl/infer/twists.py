r"""Twist functions for twisted SMC: the intermediate targets :math:`\pi_0(x_{\le t})\,e^{\psi_t(x_{\le t})}`.

A twist :math:`\psi_t` says how much posterior mass a prefix leads to. Twisted SMC
(:mod:`bayes_klrl.infer.smc`) targets :math:`\gamma_t(x_{\le t}) = \pi_0(x_{\le t})\,e^{\psi_t(x_{\le t})}` at
step :math:`t` (with :math:`\psi_0 = 0` and the last target :math:`\gamma_T = \pi_0 e^{r/\beta}`), proposing
each token from the prior tilted by the twist,

.. math:: p_t(v \mid x_{<t}) \propto \pi_0(v \mid x_{<t})\, e^{\psi_t(x_{<t}, v)}.

A twist hands out, at each position, the whole vector :math:`\psi_t(x_{<t}, \cdot)` ``(N, V)`` with an
incremental state, like an :class:`~bayes_klrl.lm.AutoregressiveLM` hands out logits. The twists here:

- :class:`ZeroTwist` (``none``): :math:`\psi \equiv 0`, the bootstrap filter (the proposal is the prior);
- :func:`exact_twist` (``exact``): the soft value :math:`\psi^*_t(x_{\le t}) = \log\mathbb{E}_{\pi_0}[e^{r/\beta}
  \mid x_{\le t}]`, by a backward recursion over the enumerated prefixes. With it every incremental weight
  after the first is 1 and the first is :math:`Z`: one particle gives :math:`\log\hat Z = \log Z`;
- :class:`TableTwist` trainable (``learned`` on a tabular task) or :class:`NetTwist` (``learned`` on a neural
  prior: :math:`\psi = L_\phi - L_0`, a trainable copy's logits minus the prior's, zero at the start), fitted by
  contrastive twist learning (:class:`TwistTrainer`);
- :class:`PolicyTwist` (``policy``): :math:`\psi_t = \log q(x_{\le t}) - \log\pi_0(x_{\le t})` of a trained
  policy. Its tilted proposal *is* :math:`q` and every intermediate weight is 1: SMC with it is importance
  sampling with :math:`q` (and conditional SMC with it the IWAE upper bound).

Contrastive twist learning (Zhao, Brekelmans, Makhzani & Grosse 2024) minimizes
:math:`\sum_t \mathrm{KL}(\sigma_t \,\|\, \pi^\psi_t)` with :math:`\sigma_t` the posterior's marginal on
:math:`x_{\le t}` and :math:`\pi^\psi_t \propto \pi_0 e^{\psi_t}`; its gradient is

.. math:: \sum_t \mathbb{E}_{\pi^\psi_t}[\nabla\psi_t(x_{\le t})] - \mathbb{E}_{\sigma}[\nabla\psi_t(x_{\le t})],

both expectations from one batch of the tilted proposal, self-normalized by its intermediate and final weights
(or the second from exact posterior draws).

References:

- Zhao, Brekelmans, Makhzani, Grosse (2024), *Probabilistic inference in language models via twisted sequential
  Monte Carlo*, ICML.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..exact import ExactPosterior, exact_posterior
from ..lm import AutoregressiveLM
from ..lm.base import select_rows
from ..sequences import sequences_from_codes
from ..task import Task, resolve_policy_kind
from ..training import Trainer

__all__ = [
    "TWISTS",
    "NetTwist",
    "PolicyTwist",
    "TableTwist",
    "Twist",
    "TwistTrainer",
    "ZeroTwist",
    "exact_twist",
    "learned_twist",
    "twisted_proposal_log_probs",
]

#: the twist kinds ``compare --twist`` takes
TWISTS = ("none", "exact", "learned", "policy")


class Twist(nn.Module):
    r"""Base class of twists: :meth:`start` and :meth:`step` hand out :math:`\psi_t(x_{<t}, \cdot)` ``(N, V)``.

    Both receive the prior's raw next-token logits at the same position (a twist defined relative to the
    prior, :class:`PolicyTwist` and :class:`NetTwist`, reads them). The values may carry gradients (a learned
    twist); samplers detach them.

    :param int vocab_size: :math:`V`.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = int(vocab_size)

    def start(self, num_sequences: int, prior_logits: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """:math:`\\psi_1(\\cdot)` ``(N, V)`` and the state."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: Any, prior_logits: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Feed ``tokens`` ``(N,)``; :math:`\\psi_{t+1}(x_{\\le t}, \\cdot)` ``(N, V)`` and the state."""
        raise NotImplementedError

    def select_state(self, state: Any, index: torch.Tensor) -> Any:
        """The state of rows ``index`` (resampling); tensors are indexed along dim 0."""
        return select_rows(state, index)

    @property
    def device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def values(self, sequences: torch.Tensor, prior: AutoregressiveLM) -> torch.Tensor:
        r""":math:`\psi_t(x_{\le t})` at every position of ``sequences`` ``(N, T)``: ``(N, T)``, differentiable
        (teacher forcing; the prior runs without gradients)."""
        n, length = sequences.shape
        with torch.no_grad():
            prior_logits, prior_state = prior.start(n)
        psi, state = self.start(n, prior_logits)
        out = []
        for t in range(length):
            x_t = sequences[:, t]
            out.append(psi.gather(-1, x_t[:, None].to(psi.device)).squeeze(-1))
            if t + 1 < length:
                with torch.no_grad():
                    prior_logits, prior_state = prior.step(x_t, prior_state)
                psi, state = self.step(x_t, state, prior_logits)
        return torch.stack(out, dim=-1)


class ZeroTwist(Twist):
    r""":math:`\psi \equiv 0`: no look-ahead (the bootstrap particle filter; its proposal is the prior)."""

    def start(self, num_sequences, prior_logits):
        return torch.zeros_like(prior_logits, dtype=torch.float64), None

    def step(self, tokens, state, prior_logits):
        return torch.zeros_like(prior_logits, dtype=torch.float64), None


class TableTwist(Twist):
    r"""One row of :math:`V` twist values per prefix: ``table[offset[t] + code(x_{<t}), v]``
    :math:`= \psi_{t+1}(x_{<t}, v)`, rows in the layout of :class:`~bayes_klrl.lm.TabularPolicy`
    (:math:`\sum_{t<T} V^t` rows).

    :param int vocab_size: :math:`V`. :param int length: :math:`T`.
    :param table: float64 ``(rows, V)`` fixed values (e.g. :func:`exact_twist`), or ``None`` for a trainable table
        of zeros (``learned``).
    """

    def __init__(self, vocab_size: int, length: int, table: torch.Tensor | None = None):
        super().__init__(vocab_size)
        self.length = int(length)
        rows = sum(self.vocab_size**t for t in range(self.length))
        offsets = [0]
        for t in range(self.length - 1):
            offsets.append(offsets[-1] + self.vocab_size**t)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        if table is None:
            self.table = nn.Parameter(torch.zeros(rows, self.vocab_size))
        else:
            if tuple(table.shape) != (rows, self.vocab_size):
                raise ValueError(f"table must have shape ({rows}, {self.vocab_size}), got {tuple(table.shape)}")
            self.register_buffer("table", table.detach().double().clone())

    def _row(self, codes: torch.Tensor, t: int) -> torch.Tensor:
        if t >= self.length:
            raise ValueError(f"this twist covers {self.length} positions; position {t} is beyond it")
        return self.table[self.offsets[t] + codes]

    def start(self, num_sequences, prior_logits):
        codes = torch.zeros(num_sequences, dtype=torch.long, device=self.table.device)
        return self._row(codes, 0), (codes, 0)

    def step(self, tokens, state, prior_logits):
        codes, t = state
        codes = codes * self.vocab_size + tokens.to(codes.device)
        return self._row(codes, t + 1), (codes, t + 1)

    def values(self, sequences, prior):
        sequences = sequences.to(self.table.device)
        n, length = sequences.shape
        codes = torch.zeros(n, dtype=torch.long, device=sequences.device)
        out = []
        for t in range(length):
            out.append(self._row(codes, t).gather(-1, sequences[:, t : t + 1]).squeeze(-1))
            codes = codes * self.vocab_size + sequences[:, t]
        return torch.stack(out, dim=-1)  # (N, T)


class PolicyTwist(Twist):
    r""":math:`\psi_t(x_{\le t}) = \log q(x_{\le t}) - \log\pi_0(x_{\le t})` of a policy :math:`q`.

    The prior tilted by it is :math:`q` itself, and every intermediate weight is 1: SMC with this twist is
    importance sampling with :math:`q` as the proposal (its conditional run, the IWAE upper bound).
    """

    def __init__(self, policy: AutoregressiveLM):
        super().__init__(policy.vocab_size)
        self.policy = policy

    def _psi(self, cumulative, q_logits, prior_logits):
        delta = torch.log_softmax(q_logits.double(), -1) - torch.log_softmax(prior_logits.double(), -1)
        return cumulative[:, None] + delta  # (N, V)

    def start(self, num_sequences, prior_logits):
        q_logits, q_state = self.policy.start(num_sequences)
        cumulative = torch.zeros(num_sequences, dtype=torch.float64, device=prior_logits.device)
        psi = self._psi(cumulative, q_logits, prior_logits)
        return psi, (q_state, psi)

    def step(self, tokens, state, prior_logits):
        q_state, psi_before = state
        cumulative = psi_before.gather(-1, tokens[:, None].to(psi_before.device)).squeeze(-1)  # ψ_t(x≤t)
        q_logits, q_state = self.policy.step(tokens, q_state)
        psi = self._psi(cumulative, q_logits, prior_logits)
        return psi, (q_state, psi)

    def select_state(self, state, index):
        q_state, psi = state
        return self.policy.select_state(q_state, index), psi[index.to(psi.device)]


class NetTwist(Twist):
    r""":math:`\psi_t(x_{<t}, v) = L_\phi(x_{<t})_v - L_0(x_{<t})_v`: a network's raw next-token logits minus the
    prior's. With ``net`` a trainable copy of the prior (``task.make_policy("full")`` or ``"lora"``) the twist is
    0 at the start, and the tilted proposal is the network's own softmax at every step.
    """

    def __init__(self, net: AutoregressiveLM):
        super().__init__(net.vocab_size)
        self.net = net

    def start(self, num_sequences, prior_logits):
        logits, state = self.net.start(num_sequences)
        return logits - prior_logits.to(logits.dtype), state

    def step(self, tokens, state, prior_logits):
        logits, state = self.net.step(tokens, state)
        return logits - prior_logits.to(logits.dtype), state

    def select_state(self, state, index):
        return self.net.select_state(state, index)


def twisted_proposal_log_probs(prior_log_probs: torch.Tensor, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The tilted proposal :math:`\log p(v) = \log\pi_0(v) + \psi(v) - c` and its log normalizer
    :math:`c = \log\sum_v \pi_0(v)\,e^{\psi(v)}`, float64 ``(N, V)`` and ``(N,)``. A row whose every entry is
    :math:`-\infty` (no mass anywhere) gets :math:`c = -\infty` and a uniform proposal."""
    joint = prior_log_probs + psi  # (N, V)
    c = torch.logsumexp(joint, -1)  # (N,)
    dead = ~torch.isfinite(c)
    log_p = joint - torch.where(dead, torch.zeros_like(c), c)[:, None]
    if dead.any():
        log_p[dead] = -math.log(joint.shape[-1])
    return log_p, c


@torch.no_grad()
def exact_twist(task: Task, posterior: ExactPosterior | None = None, *, batch_size: int = 65_536) -> TableTwist:
    r"""The optimal twist :math:`\psi^*_t(x_{\le t}) = \log\sum_{x_{>t}} \pi_0(x_{>t} \mid x_{\le t})\,e^{r(x)/\beta}`
    of an enumerable task, by the backward recursion

    .. math:: \psi^*_T = r/\beta, \qquad
              \psi^*_t(x_{\le t}) = \log\sum_v \pi_0(v \mid x_{\le t})\, e^{\psi^*_{t+1}(x_{\le t}, v)},

    with :math:`\log Z = \log\sum_v \pi_0(v)\,e^{\psi^*_1(v)}`. Float64; ``-inf`` where a prefix has no feasible
    continuation (hard constraints).

    :raises ValueError: if the task is too large to enumerate.

    Example::

        >>> from bayes_klrl.infer.smc import smc
        >>> result = smc(task, num_particles=1, twist=exact_twist(task))    # one particle
        >>> abs(float(result.log_z[0]) - exact_posterior(task).log_z) < 1e-6
        True
    """
    post = exact_posterior(task) if posterior is None else posterior
    v, length = task.vocab_size, task.length
    prior = task.prior
    # log π0(· | x<t) for every prefix of length t, (V^t, V): one teacher-forced pass over the V^(T-1) sequences
    # x<T (a last token appended and never read); prefix x<t is read off the sequence that continues it with 0s
    conditionals = [[] for _ in range(length)]
    total = v ** (length - 1)
    for start in range(0, total, batch_size):
        codes = torch.arange(start, min(total, start + batch_size), device=prior.device)
        sequences = sequences_from_codes(codes * v, v, length)  # (B, T), last token 0
        log_probs = prior.next_token_log_probs(sequences).double().cpu()  # (B, T, V)
        for t in range(length):
            keep = (codes % (v ** (length - 1 - t)) == 0).cpu()  # the prefix's own row: the rest are 0s
            conditionals[t].append(log_probs[keep, t])
    conditionals = [torch.cat(rows) for rows in conditionals]
    tables = [None] * length
    tables[length - 1] = (post.rewards / task.beta).reshape(v ** (length - 1), v)  # ψ_T(x<T, v) = r/β
    for t in range(length - 1, 0, -1):  # ψ_t(x≤t) from ψ_{t+1}: rows of step t hold ψ_t(x<t, ·)
        values = torch.logsumexp(conditionals[t] + tables[t], -1)  # (V^t,): ψ_t at each prefix of length t
        tables[t - 1] = values.reshape(v ** (t - 1), v)
    return TableTwist(v, length, torch.cat(tables).to(prior.device))


def learned_twist(task: Task, kind: str = "auto") -> Twist:
    """A trainable twist, zero at the start: a :class:`TableTwist` when the policy kind resolves to ``tabular``
    (``kind`` as in :meth:`~bayes_klrl.task.Task.make_policy`), else a :class:`NetTwist` on a trainable copy of
    the prior (``full`` or ``lora``)."""
    resolved = resolve_policy_kind(task, kind)
    if resolved == "tabular":
        return TableTwist(task.vocab_size, task.length).to(task.prior.device)
    return NetTwist(task.make_policy(resolved))


class TwistTrainer(Trainer):
    r"""Contrastive twist learning (CTL) as a :class:`~bayes_klrl.training.Trainer`: each step draws
    ``num_sequences`` particles from the tilted proposal (no resampling) and descends

    .. math:: \sum_t \Big[\sum_i \bar w^{(t)}_i\,\psi_t(x^i_{\le t}) - \sum_i \bar w_i\,\psi_t(x^i_{\le t})\Big],

    with :math:`\bar w^{(t)}` the self-normalized weights of the intermediate target :math:`\pi_0 e^{\psi_t}` and
    :math:`\bar w` those of :math:`\pi^*` (both under stop-gradient). With ``positives`` (a LongTensor
    ``(M, T)`` of exact posterior draws) the second sum is their plain mean instead, a fresh subset of
    ``num_sequences`` rows each step.

    :param twist: a trainable :class:`Twist` (:func:`learned_twist`).
    """

    method = "twist"

    def __init__(
        self,
        task: Task,
        twist: Twist,
        num_sequences: int,
        *,
        lr: float = 0.05,
        positives: torch.Tensor | None = None,
        **optimizer_options,
    ):
        self.twist = twist
        super().__init__(task, twist, num_sequences, lr=lr, **optimizer_options)
        if self.world_size > 1:
            raise ValueError("twist learning runs in one process; it does not run data-parallel")
        if positives is not None and (positives.dim() != 2 or positives.shape[1] != task.length):
            raise ValueError(f"positives must be exact draws of shape (M, {task.length})")
        self.positives = positives

    def step(self) -> dict[str, float]:
        from .smc import smc  # smc imports this module for its twists

        task = self.task
        with torch.no_grad():
            batch = smc(task, num_particles=self.num_sequences, twist=self.twist, resample_threshold=0.0)
        tokens = batch.tokens[0]  # (N, T)
        cumulative = batch.increments[0].cumsum(-1)  # (N, T): log weights of π0 e^{ψ_t}
        final = cumulative[:, -1] + batch.terminal[0]  # (N,): log weights of π*
        negative = torch.nan_to_num(torch.softmax(cumulative, 0), nan=0.0)  # (N, T), columns sum to 1
        psi = self.twist.values(tokens, task.prior).double()  # (N, T)
        loss = (negative * psi).sum()
        if self.positives is not None:
            pick = torch.randint(self.positives.shape[0], (self.num_sequences,), device=self.positives.device)
            loss = loss - self.twist.values(self.positives[pick], task.prior).double().mean(0).sum()
        elif torch.isfinite(final).any():
            positive = torch.softmax(final, 0)  # (N,)
            loss = loss - (positive[:, None] * psi).sum()
        else:  # no particle satisfies a hard constraint: nothing to contrast with this step
            loss = loss * 0.0
        self.update(loss)
        finite = torch.isfinite(final)
        ess = (
            float(torch.exp(2 * torch.logsumexp(final, 0) - torch.logsumexp(2 * final, 0)) / final.numel())
            if finite.any()
            else 0.0
        )
        return {"loss": float(loss.detach()), "ess": ess, "log_z": float(batch.log_z[0])}
