"""Shipped task "markov_constraint": the "markov" prior conditioned on token 5 appearing (a hard constraint).

The reward is 0 when token 5 occurs and −inf otherwise, so π* is the prior conditioned on that event for any β.
"""

from bayes_klrl import MarkovLM, Task
from bayes_klrl.tasks.rewards import KeywordConstraint


def task(beta: float = 1.0, length: int = 6, seed: int = 1) -> Task:
    prior = MarkovLM.random(6, concentration=1.0, seed=seed)
    return Task(
        prior=prior, reward=KeywordConstraint(keywords=(5,)), beta=beta, length=length, name="markov_constraint"
    )
