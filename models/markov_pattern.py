r"""Shipped task "markov_pattern": a rare two-token pattern under a Markov prior, a binary reward with a declared bound.

Prior :math:`\pi_0`: a random first-order Markov chain over :math:`V = 8` tokens (logits ~ Normal(0, 1.5²), seed 3),
:math:`T = 6` tokens (:math:`8^6 = 262{,}144` sequences, enumerable). Reward: 1 if token 3 is immediately
followed by token 4 somewhere in :math:`x`, else 0, so :math:`r_{\max} = 1` is declared: exact posterior draws
by rejection from the prior (acceptance :math:`Z e^{-1/\beta}`) give an upper bound on :math:`\log Z` as they would
on a task too large to enumerate, and enumeration checks it. The event is rare under the prior, so the bootstrap
filter wastes most particles and a twist that looks ahead pays.
"""

from bayes_klrl import MarkovLM, Task
from bayes_klrl.tasks.rewards import PatternPresence


def describe() -> dict:
    return {"vocab_size": 8, "length": 6, "beta": 0.25}


def task(beta: float = 0.25, length: int = 6, seed: int = 3) -> Task:
    prior = MarkovLM.random(8, concentration=1.5, seed=seed)
    return Task(
        prior=prior, reward=PatternPresence(pattern=(3, 4)), beta=beta, length=length, name="markov_pattern",
        reward_max=1.0,
    )  # fmt: skip
