"""The LM protocol: normalization by enumeration, vectorized vs step-by-step scoring, sampling frequencies."""

import pytest
import torch

from bayes_klrl import CategoricalLM, MarkovLM, TabularPolicy
from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.lm import AutoregressiveLM

NORMALIZATION_TOL = 1e-5
SCORING_TOL = 1e-5
V, T = 3, 4


def lms():
    prior = MarkovLM.random(V, seed=3)
    tab = TabularPolicy(prior, T)
    with torch.no_grad():
        tab.logits.add_(torch.randn(tab.logits.shape, generator=torch.Generator().manual_seed(1)))
    return {"categorical": CategoricalLM(torch.tensor([0.1, -0.5, 1.0])), "markov": prior, "tabular": tab}


@pytest.mark.parametrize("name", ["categorical", "markov", "tabular"])
def test_probabilities_sum_to_one(name):
    lm = lms()[name]
    total = lm.log_prob(enumerate_sequences(V, T)).detach().double().exp().sum()
    assert abs(float(total) - 1.0) < NORMALIZATION_TOL


@pytest.mark.parametrize("name", ["categorical", "markov", "tabular"])
def test_vectorized_scoring_matches_step_by_step(name):
    lm = lms()[name]
    x = lm.sample(64, T, generator=torch.Generator().manual_seed(0))
    stepwise = AutoregressiveLM.token_log_probs(lm, x)  # the base class's step loop
    assert torch.allclose(lm.token_log_probs(x), stepwise, atol=SCORING_TOL)


@pytest.mark.parametrize("name", ["markov", "tabular"])
def test_sample_frequencies_match_probabilities(name):
    lm = lms()[name]
    n = 200_000
    x = lm.sample(n, T, generator=torch.Generator().manual_seed(0))
    codes = (x * torch.tensor([V**3, V**2, V, 1])).sum(-1)
    freq = torch.bincount(codes, minlength=V**T).double() / n
    p = lm.log_prob(enumerate_sequences(V, T)).detach().double().exp()
    # total variation between empirical and true; its MC size here is ~ sqrt(V^T / n) / 2 ~ 0.01
    assert 0.5 * float((freq - p).abs().sum()) < 0.03


def test_tabular_starts_at_prior_and_refuses_large_tables():
    prior = MarkovLM.random(V, seed=3)
    x = enumerate_sequences(V, T)
    assert torch.allclose(TabularPolicy(prior, T).log_prob(x), prior.log_prob(x), atol=SCORING_TOL)
    with pytest.raises(ValueError, match="above the limit"):
        TabularPolicy(MarkovLM.random(50, seed=0), 6)


def test_trainable_copy_is_independent():
    prior = MarkovLM.random(V, seed=3).frozen()
    policy = prior.trainable_copy()
    assert all(p.requires_grad for p in policy.parameters())
    with torch.no_grad():
        policy.transition_logits.add_(1.0)
    assert not torch.equal(policy.transition_logits, prior.transition_logits)


def test_markov_shape_errors():
    with pytest.raises(ValueError, match="transition_logits must have shape"):
        MarkovLM(torch.zeros(3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        MarkovLM(torch.tensor([0.0, float("nan")]), torch.zeros(2, 2))
