r"""Small reference LMs with closed forms: i.i.d. categorical tokens and first-order Markov chains.

.. math::

    \text{CategoricalLM:}\quad p(x) = \prod_t \mathrm{softmax}(\ell)_{x_t}, \qquad
    \text{MarkovLM:}\quad p(x) = \mathrm{softmax}(a)_{x_1} \prod_{t>1} \mathrm{softmax}(A_{x_{t-1}})_{x_t}.

With ``length=1`` a :class:`CategoricalLM` prior makes the bandit case, whose posterior is
:math:`\mathrm{softmax}(\log \pi_0 + r/\beta)` in closed form.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import AutoregressiveLM

__all__ = ["CategoricalLM", "MarkovLM"]


def _as_float_tensor(value, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor


class CategoricalLM(AutoregressiveLM):
    """Tokens drawn i.i.d. from ``softmax(logits)`` at every position.

    :param logits: ``(V,)`` unnormalized log-probabilities.

    Example::

        >>> lm = CategoricalLM(torch.tensor([0.0, 1.0, 2.0]))
        >>> lm.log_prob(torch.tensor([[2]])).exp()   # softmax([0, 1, 2])[2]
        tensor([0.6652])
    """

    def __init__(self, logits):
        logits = _as_float_tensor(logits, "logits")
        if logits.dim() != 1:
            raise ValueError(f"logits must have shape (V,), got {tuple(logits.shape)}")
        super().__init__(logits.shape[0])
        self.logits = nn.Parameter(logits, requires_grad=False)

    def start(self, num_sequences):
        return self.logits.expand(num_sequences, -1), None

    def step(self, tokens, state):
        return self.logits.expand(tokens.shape[0], -1), None

    def token_log_probs(self, sequences):
        return torch.log_softmax(self.logits, -1)[sequences.to(self.device)]  # (N, T)

    def next_token_logits(self, prefixes):
        return self.logits.expand(prefixes.shape[0], -1)

    def next_token_log_probs(self, sequences):
        num_sequences, length = sequences.shape
        return torch.log_softmax(self.logits, -1).expand(num_sequences, length, -1)  # (N, T, V)


class MarkovLM(AutoregressiveLM):
    """First-order Markov chain over ``V`` tokens.

    :param initial_logits: ``(V,)`` logits of the first token.
    :param transition_logits: ``(V, V)``; row ``i`` holds the logits of the token after ``i``.

    Example::

        >>> lm = MarkovLM(torch.zeros(2), torch.tensor([[0.0, -50.0], [-50.0, 0.0]]))
        >>> lm.sample(2, 5, generator=torch.Generator().manual_seed(0)).float().std(dim=1)  # tokens repeat
        tensor([0., 0.])
    """

    def __init__(self, initial_logits, transition_logits):
        initial_logits = _as_float_tensor(initial_logits, "initial_logits")
        transition_logits = _as_float_tensor(transition_logits, "transition_logits")
        if initial_logits.dim() != 1:
            raise ValueError(f"initial_logits must have shape (V,), got {tuple(initial_logits.shape)}")
        v = initial_logits.shape[0]
        if tuple(transition_logits.shape) != (v, v):
            raise ValueError(
                f"transition_logits must have shape ({v}, {v}) to match initial_logits, "
                f"got {tuple(transition_logits.shape)}"
            )
        super().__init__(v)
        self.initial_logits = nn.Parameter(initial_logits, requires_grad=False)
        self.transition_logits = nn.Parameter(transition_logits, requires_grad=False)

    @classmethod
    def random(cls, vocab_size: int, *, concentration: float = 1.0, seed: int = 0) -> MarkovLM:
        """A random chain: logits ~ Normal(0, ``concentration``), drawn from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        return cls(
            concentration * torch.randn(vocab_size, generator=g),
            concentration * torch.randn(vocab_size, vocab_size, generator=g),
        )

    def start(self, num_sequences):
        return self.initial_logits.expand(num_sequences, -1), None

    def step(self, tokens, state):
        return self.transition_logits[tokens], None

    def next_token_logits(self, prefixes):
        if prefixes.shape[1] == 0:
            return self.initial_logits.expand(prefixes.shape[0], -1)
        return self.transition_logits[prefixes[:, -1].to(self.device)]

    def next_token_log_probs(self, sequences):
        sequences = sequences.to(self.device)
        first = torch.log_softmax(self.initial_logits, -1).expand(sequences.shape[0], 1, -1)  # (N, 1, V)
        trans = torch.log_softmax(self.transition_logits, -1)  # (V, V)
        return torch.cat([first, trans[sequences[:, :-1]]], dim=1)  # (N, T, V): row x_{t-1} of the transitions

    def token_log_probs(self, sequences):
        sequences = sequences.to(self.device)
        first = torch.log_softmax(self.initial_logits, -1)[sequences[:, :1]]  # (N, 1)
        trans = torch.log_softmax(self.transition_logits, -1)  # (V, V)
        rest = trans[sequences[:, :-1], sequences[:, 1:]]  # (N, T-1)
        return torch.cat([first, rest], dim=-1)
