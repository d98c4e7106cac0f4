"""Shipped task "bandit": one token out of 10 (length 1), whose posterior is softmax(log π0 + r/β) in closed form."""

import torch

from bayes_klrl import CategoricalLM, Task
from bayes_klrl.tasks.rewards import LexiconScore


def task(beta: float = 0.5, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    prior = CategoricalLM(torch.randn(10, generator=g))
    scores = {token: float(s) for token, s in enumerate(torch.linspace(-1.0, 1.0, 10))}
    return Task(prior=prior, reward=LexiconScore(scores, vocab_size=10), beta=beta, length=1, name="bandit")
