r"""The protocol every reference LM and policy in bayes_klrl follows.

An autoregressive LM over a fixed vocabulary of size :math:`V` assigns

.. math:: \log p(x_{1:T}) = \sum_{t=1}^{T} \log p(x_t \mid x_{<t}).

A subclass implements one abstract method pair, :meth:`AutoregressiveLM.start` and
:meth:`AutoregressiveLM.step`, which hand out next-token logits with an incremental
state; sampling and scoring are derived from them. Subclasses override
:meth:`AutoregressiveLM.token_log_probs` when they can score a whole batch at once.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any

import torch
from torch import nn

__all__ = ["AutoregressiveLM", "sample_categorical", "select_rows"]


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of ``logits`` ``(N, V)``; returns a LongTensor ``(N,)``.

    Consumes the random stream exactly as ``torch.distributions.Categorical(logits=logits).sample()``
    (and so Pyro's ``dist.Categorical``) does, so a plain-torch trainer and a Pyro guide seeded alike
    draw the same tokens.

    Example::

        >>> sample_categorical(torch.zeros(3, 4), torch.Generator().manual_seed(0)).shape
        torch.Size([3])
    """
    probs = torch.softmax(logits.detach(), dim=-1)
    return torch.multinomial(probs, 1, replacement=True, generator=generator).squeeze(-1)


def select_rows(value: Any, index: torch.Tensor) -> Any:
    """``value`` with every tensor indexed by ``index`` along dim 0 (nested tuples, lists, dicts walked; 0-dim
    tensors and other values kept as they are)."""
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)] if value.dim() > 0 else value
    if isinstance(value, tuple):
        return tuple(select_rows(v, index) for v in value)
    if isinstance(value, list):
        return [select_rows(v, index) for v in value]
    if isinstance(value, dict):
        return {k: select_rows(v, index) for k, v in value.items()}
    return value


class AutoregressiveLM(nn.Module):
    r"""Base class of autoregressive LMs over ``vocab_size`` tokens.

    Subclasses implement :meth:`start` and :meth:`step`. The state is opaque to callers.

    :param int vocab_size: the vocabulary size :math:`V`.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = int(vocab_size)

    # -- the two methods a subclass writes ---------------------------------------------
    @abstractmethod
    def start(self, num_sequences: int) -> tuple[torch.Tensor, Any]:
        """Logits ``(N, V)`` of the first token and the initial state."""

    @abstractmethod
    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Feed ``tokens`` ``(N,)`` at the next position; return the next logits ``(N, V)`` and state."""

    def select_state(self, state: Any, index: torch.Tensor) -> Any:
        """The state of the sequences ``index`` ``(M,)`` (rows of the batch, repeats allowed): what resampling
        particles needs (:mod:`bayes_klrl.infer.smc`). The default indexes every tensor in the state along its
        first dimension (tuples, lists and dicts are walked; other values are kept); a subclass whose state holds
        something else (a Hugging Face cache object) overrides it.

        Example::

            >>> lm = MarkovLM(torch.zeros(3), torch.zeros(3, 3))
            >>> logits, state = lm.start(4)
            >>> lm.select_state(state, torch.tensor([0, 0, 3])) is None
            True
        """
        return select_rows(state, index)

    # -- derived -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @torch.no_grad()
    def sample(self, num_sequences: int, length: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num_sequences`` sequences of ``length`` tokens: LongTensor ``(N, T)``.

        Example::

            >>> lm = MarkovLM(torch.zeros(3), torch.zeros(3, 3))
            >>> lm.sample(5, 4).shape
            torch.Size([5, 4])
        """
        logits, state = self.start(num_sequences)
        tokens = []
        for t in range(length):
            x_t = sample_categorical(logits, generator)
            tokens.append(x_t)
            if t + 1 < length:
                logits, state = self.step(x_t, state)
        return torch.stack(tokens, dim=-1)

    def token_log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        r"""Per-token :math:`\log p(x_t \mid x_{<t})`, shape ``(N, T)`` (teacher forcing)."""
        sequences = sequences.to(self.device)
        num_sequences, length = sequences.shape
        logits, state = self.start(num_sequences)
        out = []
        for t in range(length):
            out.append(torch.log_softmax(logits, -1).gather(-1, sequences[:, t : t + 1]).squeeze(-1))
            if t + 1 < length:
                logits, state = self.step(sequences[:, t], state)
        return torch.stack(out, dim=-1)

    def next_token_log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        r"""The whole next-token distribution at every position of ``sequences`` ``(N, T)`` (teacher forcing):
        ``out[n, t, v]`` :math:`= \log p(v \mid x_{n,<t})`, shape ``(N, T, V)``, differentiable.

        What an exact per-token KL over the vocabulary, or scoring all continuations of a prefix at once, needs;
        ``token_log_probs(x)`` equals ``next_token_log_probs(x).gather(-1, x[..., None]).squeeze(-1)``.
        Subclasses override it when they can run the batch in one pass.

        Example::

            >>> lm = MarkovLM(torch.zeros(3), torch.zeros(3, 3))
            >>> lm.next_token_log_probs(torch.zeros(2, 4, dtype=torch.long)).shape
            torch.Size([2, 4, 3])
        """
        sequences = sequences.to(self.device)
        num_sequences, length = sequences.shape
        logits, state = self.start(num_sequences)
        out = []
        for t in range(length):
            out.append(torch.log_softmax(logits, -1))
            if t + 1 < length:
                logits, state = self.step(sequences[:, t], state)
        return torch.stack(out, dim=1)

    def next_token_logits(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, V)`` of the token after each prefix ``(N, t)`` (``t`` may be 0)."""
        num_sequences, length = prefixes.shape
        logits, state = self.start(num_sequences)
        for t in range(length):
            logits, state = self.step(prefixes[:, t].to(self.device), state)
        return logits

    def log_prob(self, sequences: torch.Tensor) -> torch.Tensor:
        r"""Sequence log-probability :math:`\log p(x)`, shape ``(N,)``."""
        return self.token_log_probs(sequences).sum(-1)

    def trainable_copy(self) -> AutoregressiveLM:
        """An independent copy whose parameters require gradients: a policy initialized at this LM."""
        policy = copy.deepcopy(self)
        for p in policy.parameters():
            p.requires_grad_(True)
        return policy

    def frozen(self) -> AutoregressiveLM:
        """This LM with gradients switched off (in place); returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self
