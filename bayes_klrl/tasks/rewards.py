r"""Reward functions: callables ``LongTensor (N, T) -> FloatTensor (N,)``.

A reward of ``-inf`` is a hard constraint: the likelihood :math:`e^{r/\beta}` is the indicator of an event,
and the posterior is the prior conditioned on it, whatever β is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["KeywordCount", "KeywordConstraint", "LexiconScore", "PatternPresence"]


def _token_set(tokens: Iterable[int] | int) -> tuple[int, ...]:
    tokens = (tokens,) if isinstance(tokens, int) else tuple(int(t) for t in tokens)
    if not tokens:
        raise ValueError("at least one keyword token is needed")
    return tokens


def _is_keyword(sequences: torch.Tensor, keywords: tuple[int, ...]) -> torch.Tensor:
    return torch.isin(sequences, torch.tensor(keywords, device=sequences.device))  # (N, T) bool


@dataclass(frozen=True)
class KeywordCount:
    r""":math:`r(x) = \text{scale} \cdot \#\{t : x_t \in K\}`.

    Example::

        >>> KeywordCount(keywords=(1,))(torch.tensor([[1, 0, 1], [0, 0, 0]]))
        tensor([2., 0.])
    """

    keywords: tuple[int, ...] | int
    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "keywords", _token_set(self.keywords))

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        return self.scale * _is_keyword(sequences, self.keywords).sum(-1).to(torch.get_default_dtype())


@dataclass(frozen=True)
class PatternPresence:
    r""":math:`r(x) = 1` if the tokens ``pattern`` occur consecutively somewhere in :math:`x`, else 0 (a binary reward,
    bounded above by 1: exact posterior draws by rejection need ``Task(..., reward_max=1)``).

    Example::

        >>> PatternPresence(pattern=(3, 4))(torch.tensor([[0, 3, 4], [4, 3, 0]]))
        tensor([1., 0.])
    """

    pattern: tuple[int, ...]

    def __post_init__(self):
        pattern = tuple(int(t) for t in self.pattern)
        if not pattern:
            raise ValueError("pattern must hold at least one token")
        object.__setattr__(self, "pattern", pattern)

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        k = len(self.pattern)
        found = torch.zeros(sequences.shape[0], dtype=torch.bool, device=sequences.device)
        for start in range(sequences.shape[1] - k + 1):
            window = sequences[:, start : start + k]
            found |= (window == torch.tensor(self.pattern, device=sequences.device)).all(-1)
        return found.to(torch.get_default_dtype())


@dataclass(frozen=True)
class KeywordConstraint:
    r""":math:`r(x) = 0` if some :math:`x_t \in K`, else :math:`-\infty`: conditioning on the event.

    Example::

        >>> KeywordConstraint(keywords=(1,))(torch.tensor([[1, 0], [0, 0]]))
        tensor([0., -inf])
    """

    keywords: tuple[int, ...] | int

    def __post_init__(self):
        object.__setattr__(self, "keywords", _token_set(self.keywords))

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        present = _is_keyword(sequences, self.keywords).any(-1)
        zero = torch.zeros(sequences.shape[0], dtype=torch.get_default_dtype(), device=sequences.device)
        return zero.masked_fill(~present, float("-inf"))


class LexiconScore:
    r"""A lexicon "sentiment" score: :math:`r(x) = \text{scale}\cdot\sum_t s(x_t)` with per-token scores :math:`s`.

    :param scores: ``{token_id: score}``; tokens not listed score 0.
    :param int vocab_size: the vocabulary size.

    Example::

        >>> LexiconScore({0: 1.0, 2: -1.0}, vocab_size=3)(torch.tensor([[0, 0, 2]]))
        tensor([1.])
    """

    def __init__(self, scores: Mapping[int, float], vocab_size: int, scale: float = 1.0):
        table = torch.zeros(vocab_size, dtype=torch.get_default_dtype())
        for token, score in scores.items():
            if not 0 <= int(token) < vocab_size:
                raise ValueError(f"lexicon token {token} is outside the vocabulary 0..{vocab_size - 1}")
            table[int(token)] = float(score)
        self.table = table
        self.scale = float(scale)

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        return self.scale * self.table.to(sequences.device)[sequences].sum(-1)
