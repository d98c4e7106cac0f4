r"""Shipped task "words_sentiment": a tiny transformer prior over toy sentences, tilted towards positive sentiment.

Prior :math:`\pi_0`: the 26,688-parameter :class:`~bayes_klrl.lm.TinyTransformerLM` in ``tiny_transformer.pt``
(next to this file; rebuilt by ``python models/train_tiny_transformer.py``), trained by maximum likelihood on the
toy grammar of :mod:`bayes_klrl.tasks.words`: 16 words, :math:`T = 5`, so :math:`V^T = 1{,}048{,}576` sequences and
exact enumeration takes about a second. The model puts 99.7% of its mass on the grammar's 360 sentences
(KL(grammar ‖ model) ≈ 0.005 nats).

Reward: :math:`r(x) = \text{scale}\cdot\sum_t s(x_t)` with the lexicon great +2, good +1, likes +1, hates −1,
bad −1, awful −2. Under the prior :math:`\mathbb{E}_{\pi_0}[r] ≈ 0.009`; at the default :math:`\beta = 1` the
posterior has :math:`\log Z ≈ 0.839`, :math:`\mathbb{E}_{\pi^*}[r] ≈ 1.63` and
:math:`\mathrm{KL}(\pi^*\|\pi_0) ≈ 0.79` nats; its most probable sentences are "the dog is great ." and the like.
At :math:`\beta = 0.5` the posterior concentrates on "DET great NOUN is great" (:math:`\mathbb{E}[r] ≈ 3.08`).
"""

from __future__ import annotations

from pathlib import Path

from bayes_klrl import Task
from bayes_klrl.lm import TinyTransformerLM
from bayes_klrl.tasks.words import LENGTH, VOCAB_SIZE, decode, sentiment_reward

CHECKPOINT = Path(__file__).resolve().parent / "tiny_transformer.pt"
BETA = 1.0
#: ``bayes-klrl compare`` settings where the command line gives none: the tabular policy converges in 400 steps
#: at this rate (KL(q‖π*) ≈ 0.003 nats), so the default comparison stays near a minute on 2 cores
COMPARE_DEFAULTS = {"steps": 400, "lr": 0.05}


def describe() -> dict:
    return {"vocab_size": VOCAB_SIZE, "length": LENGTH, "beta": BETA}


def task(beta: float = BETA, scale: float = 1.0, checkpoint: str | Path = CHECKPOINT) -> Task:
    """The word-sentiment task; ``checkpoint`` may point at another run of ``train_tiny_transformer.py``."""
    prior = TinyTransformerLM.load(checkpoint).frozen()  # this file made it: no gradients into the prior
    if prior.vocab_size != VOCAB_SIZE or prior.config.max_length < LENGTH:
        raise ValueError(
            f"checkpoint '{checkpoint}' has vocab_size={prior.vocab_size}, max_length={prior.config.max_length}; "
            f"the word task needs vocab_size={VOCAB_SIZE} and max_length >= {LENGTH}"
        )
    return Task(
        prior=prior,
        reward=sentiment_reward(scale),
        beta=beta,
        length=LENGTH,
        name="words_sentiment",
        decode=decode,
    )
