r"""A toy grammar of five-token sentences over 16 words, with a sentiment lexicon: an enumerable "language".

The grammar is a probabilistic template grammar. A template :math:`\tau` is drawn with probability
:math:`p(\tau)`, then each slot independently and uniformly from its word class; a sentence shorter than
:math:`T` is padded with the end token ``"."``. The probability of a sentence is the sum over the ways of
deriving it,

.. math:: p(x) = \sum_\tau p(\tau) \prod_{s \in \tau} \frac{1}{|C_s|}\,[x_s \in C_s],
          \qquad H = -\sum_x p(x) \log p(x),

and its 360 sentences are listed exactly by :func:`grammar_distribution`, so the entropy :math:`H` (the best
per-sentence NLL an LM trained on the corpus can reach) is known. With :math:`V = 16` and :math:`T = 5` the
whole sequence space has :math:`16^5 = 1{,}048{,}576` points: a word task that exact enumeration still covers.

Templates (probabilities): ``DET NOUN is ADJ .`` (0.35), ``DET NOUN is very ADJ`` (0.2),
``DET ADJ NOUN is ADJ`` (0.15), ``DET NOUN VERB DET NOUN`` (0.3). Word classes: DET = {the, my},
NOUN = {cat, dog, film}, ADJ = {good, great, bad, awful, big, old}, VERB = {likes, hates}.

The sentiment lexicon scores great +2, good +1, likes +1, hates −1, bad −1, awful −2 (other words 0), so
:math:`r(x) = \sum_t s(x_t)` (:func:`sentiment_reward`) is symmetric under the grammar: :math:`\mathbb{E}_p[r] = 0`.

Example::

    >>> x = sample_corpus(3, seed=0)
    >>> x.shape
    torch.Size([3, 5])
    >>> decode(encode(["the cat is good ."]))
    ['the cat is good .']
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from .rewards import LexiconScore

__all__ = [
    "END",
    "LENGTH",
    "SENTIMENT",
    "TEMPLATES",
    "VOCAB_SIZE",
    "WORDS",
    "GrammarDistribution",
    "decode",
    "encode",
    "grammar_distribution",
    "sample_corpus",
    "sentiment_lexicon",
    "sentiment_reward",
]

#: the vocabulary; token id = position in this tuple. Token 0, ``"."``, ends a sentence and pads it.
WORDS: tuple[str, ...] = (
    ".",
    "the",
    "my",
    "cat",
    "dog",
    "film",
    "good",
    "great",
    "bad",
    "awful",
    "big",
    "old",
    "is",
    "likes",
    "hates",
    "very",
)
VOCAB_SIZE = len(WORDS)
#: the end / padding token
END = 0
#: the sentence length T of the shipped word task (V^T = 16^5 = 1,048,576)
LENGTH = 5

_CLASSES = MappingProxyType(
    {
        "DET": ("the", "my"),
        "NOUN": ("cat", "dog", "film"),
        "ADJ": ("good", "great", "bad", "awful", "big", "old"),
        "VERB": ("likes", "hates"),
    }
)

#: (template, probability); a slot is a word class name or a literal word
TEMPLATES: tuple[tuple[tuple[str, ...], float], ...] = (
    (("DET", "NOUN", "is", "ADJ", "."), 0.35),
    (("DET", "NOUN", "is", "very", "ADJ"), 0.20),
    (("DET", "ADJ", "NOUN", "is", "ADJ"), 0.15),
    (("DET", "NOUN", "VERB", "DET", "NOUN"), 0.30),
)

#: sentiment score per word (words not listed score 0)
SENTIMENT = MappingProxyType({"great": 2.0, "good": 1.0, "likes": 1.0, "hates": -1.0, "bad": -1.0, "awful": -2.0})

_TOKEN = MappingProxyType({word: i for i, word in enumerate(WORDS)})


def _check_length(length: int) -> int:
    shortest = max(len(template) for template, _ in TEMPLATES)
    if isinstance(length, bool) or not isinstance(length, int) or length < shortest:
        raise ValueError(f"length must be an integer >= {shortest} (the longest template), got {length!r}")
    return length


def encode(sentences: Sequence[str], length: int = LENGTH) -> torch.Tensor:
    """Whitespace-separated sentences → LongTensor ``(N, length)``, padded with ``"."``.

    :raises ValueError: on a word outside :data:`WORDS` or a sentence longer than ``length``.

    Example::

        >>> encode(["my dog is bad"])
        tensor([[ 2,  4, 12,  8,  0]])
    """
    if isinstance(sentences, str):
        raise ValueError("encode takes a sequence of sentences, got a single string; wrap it in a list")
    rows = []
    for sentence in sentences:
        words = sentence.split()
        unknown = [w for w in words if w not in _TOKEN]
        if unknown:
            raise ValueError(f"unknown word(s) {unknown} in {sentence!r}; the vocabulary is {list(WORDS)}")
        if len(words) > length:
            raise ValueError(f"sentence {sentence!r} has {len(words)} words, more than length={length}")
        rows.append([_TOKEN[w] for w in words] + [END] * (length - len(words)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)


def decode(tokens: torch.Tensor) -> list[str]:
    """LongTensor ``(N, T)`` → one string per row, the ``T`` words joined by spaces (nothing dropped).

    :raises ValueError: on a tensor that is not 2-d or holds ids outside ``0 .. V-1``.

    Example::

        >>> decode(torch.tensor([[1, 3, 12, 7, 0]]))
        ['the cat is great .']
    """
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (N, T), got {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= VOCAB_SIZE):
        raise ValueError(f"token ids must lie in 0..{VOCAB_SIZE - 1}, got {int(tokens.min())}..{int(tokens.max())}")
    return [" ".join(WORDS[i] for i in row) for row in tokens.tolist()]


@dataclass(frozen=True)
class GrammarDistribution:
    r"""The grammar's exact distribution over its sentences.

    :ivar sentences: LongTensor ``(M, T)``, every sentence of positive probability, in lexicographic order.
    :ivar probs: float64 ``(M,)``, :math:`p(x)`, summing to 1.
    """

    sentences: torch.Tensor
    probs: torch.Tensor

    @property
    def entropy(self) -> float:
        r""":math:`H(p) = -\sum_x p(x)\log p(x)` in nats per sentence."""
        return float(-(self.probs * self.probs.log()).sum())

    def cross_entropy(self, log_q: torch.Tensor) -> float:
        r""":math:`-\sum_x p(x)\log q(x) = H(p) + \mathrm{KL}(p\|q)`, given :math:`\log q` ``(M,)`` on ``sentences``.

        Example::

            >>> g = grammar_distribution()
            >>> abs(g.cross_entropy(g.probs.log()) - g.entropy) < 1e-12
            True
        """
        log_q = torch.as_tensor(log_q).double().reshape(-1)
        if log_q.shape != self.probs.shape:
            raise ValueError(f"log_q must have shape {tuple(self.probs.shape)}, got {tuple(log_q.shape)}")
        return float(-(self.probs * log_q).sum())


def grammar_distribution(length: int = LENGTH) -> GrammarDistribution:
    r"""Enumerate the grammar: every sentence (padded to ``length``) and its probability :math:`p(x)`.

    Example::

        >>> g = grammar_distribution()
        >>> g.sentences.shape, round(float(g.probs.sum()), 12)
        (torch.Size([360, 5]), 1.0)
    """
    length = _check_length(length)
    probs: dict[tuple[int, ...], float] = {}
    for template, p_template in TEMPLATES:
        choices = [_CLASSES.get(slot, (slot,)) for slot in template]
        p_each = p_template / math.prod(len(c) for c in choices)
        for words in itertools.product(*choices):
            key = tuple(_TOKEN[w] for w in words) + (END,) * (length - len(words))
            probs[key] = probs.get(key, 0.0) + p_each
    keys = sorted(probs)
    return GrammarDistribution(
        sentences=torch.tensor(keys, dtype=torch.long),
        probs=torch.tensor([probs[k] for k in keys], dtype=torch.float64),
    )


def sample_corpus(num_sentences: int, *, seed: int, length: int = LENGTH) -> torch.Tensor:
    """Draw ``num_sentences`` i.i.d. sentences from the grammar: LongTensor ``(N, length)``.

    The draw depends only on ``seed`` (a private :class:`torch.Generator`), not on the global RNG.

    Example::

        >>> torch.equal(sample_corpus(10, seed=1), sample_corpus(10, seed=1))
        True
    """
    if isinstance(num_sentences, bool) or not isinstance(num_sentences, int) or num_sentences < 1:
        raise ValueError(f"num_sentences must be an integer >= 1, got {num_sentences!r}")
    grammar = grammar_distribution(length)
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.multinomial(grammar.probs, num_sentences, replacement=True, generator=generator)  # (N,)
    return grammar.sentences[index]  # (N, T)


def sentiment_lexicon() -> dict[int, float]:
    """Token id → sentiment score, for :class:`bayes_klrl.tasks.rewards.LexiconScore`.

    Example::

        >>> sentiment_lexicon()[WORDS.index("great")]
        2.0
    """
    return {_TOKEN[word]: score for word, score in SENTIMENT.items()}


def sentiment_reward(scale: float = 1.0) -> LexiconScore:
    r"""The word task's reward :math:`r(x) = \text{scale}\cdot\sum_t s(x_t)` with the lexicon :data:`SENTIMENT`.

    Example::

        >>> sentiment_reward()(encode(["the good film is great", "my dog hates the cat"]))
        tensor([ 3., -1.])
    """
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return LexiconScore(sentiment_lexicon(), vocab_size=VOCAB_SIZE, scale=scale)
