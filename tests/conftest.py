"""Shared fixtures: small enumerable tasks and a loader for model files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bayes_klrl import CategoricalLM, MarkovLM, Task
from bayes_klrl.tasks.rewards import KeywordConstraint, KeywordCount

MODELS = Path(__file__).resolve().parents[1] / "models"


def small_markov_task(vocab_size=3, length=3, beta=0.8, seed=0) -> Task:
    """A V^T = 27 task whose posterior is not Markov."""
    return Task(
        prior=MarkovLM.random(vocab_size, seed=seed),
        reward=KeywordCount(keywords=(0,), scale=1.0),
        beta=beta,
        length=length,
        name="small",
    )


def perturbed_policy(task: Task, scale: float = 0.5, seed: int = 0):
    """A tabular policy moved away from the prior by random logits, so gradients are far from zero."""
    policy = task.make_policy("tabular")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        policy.logits.add_(scale * torch.randn(policy.logits.shape, generator=g))
    return policy


@pytest.fixture
def small_task() -> Task:
    return small_markov_task()


@pytest.fixture
def constraint_task() -> Task:
    return Task(prior=MarkovLM.random(3, seed=2), reward=KeywordConstraint(keywords=(2,)), beta=1.0, length=3)


@pytest.fixture
def bandit_task() -> Task:
    prior = CategoricalLM(torch.tensor([0.3, -1.0, 0.5, 2.0, 0.0]))
    return Task(prior=prior, reward=lambda x: torch.linspace(-1, 1, 5)[x[:, 0]], beta=0.4, length=1)
