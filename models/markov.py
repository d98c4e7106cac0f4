"""Shipped task "markov": a random first-order Markov prior over 6 tokens, 6 tokens long (46,656 sequences).

The reward counts occurrences of tokens 0 and 1; β = 0.7. The posterior is not Markov, so a policy must be
able to condition on the whole prefix to reach it (``task.make_policy()`` gives a tabular one).
"""

from bayes_klrl import MarkovLM, Task
from bayes_klrl.tasks.rewards import KeywordCount


def task(beta: float = 0.7, length: int = 6, seed: int = 1) -> Task:
    prior = MarkovLM.random(6, concentration=1.0, seed=seed)
    return Task(prior=prior, reward=KeywordCount(keywords=(0, 1)), beta=beta, length=length, name="markov")
