"""The token-id rewards of bayes_klrl/tasks/rewards.py, against plain-Python reference scores on every sequence."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_klrl import MarkovLM, Task, exact_posterior
from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.tasks import KeywordConstraint, KeywordCount, LexiconScore

V, T = 3, 3
#: rewards are sums of a few small floats: exact up to float32 rounding
REWARD_TOL = 1e-6
#: probabilities from the float64 enumeration
PROB_TOL = 1e-9

ALL = enumerate_sequences(V, T)  # (V^T, T)


def _rows():
    return [[int(t) for t in row] for row in ALL]


@pytest.mark.parametrize(
    "keywords, scale",
    [((0,), 1.0), (2, 0.5), ((0, 2), -1.5)],
    ids=["one-keyword", "int-keyword", "two-keywords-negative-scale"],
)
def test_keyword_count_counts_keyword_positions(keywords, scale):
    reward = KeywordCount(keywords=keywords, scale=scale)
    wanted = {keywords} if isinstance(keywords, int) else set(keywords)
    expected = torch.tensor([scale * sum(t in wanted for t in row) for row in _rows()])
    got = reward(ALL)
    assert got.shape == (V**T,) and got.dtype == torch.get_default_dtype()
    torch.testing.assert_close(got, expected.to(got.dtype), atol=REWARD_TOL, rtol=0)


def test_keyword_constraint_is_zero_on_the_event_and_minus_infinity_off_it():
    got = KeywordConstraint(keywords=(1,))(ALL)
    expected = torch.tensor([0.0 if 1 in row else -math.inf for row in _rows()])
    assert torch.equal(got, expected.to(got.dtype))


@pytest.mark.parametrize("beta", [0.3, 2.0], ids=["beta-0.3", "beta-2"])
def test_hard_constraint_posterior_is_the_prior_conditioned_on_the_event(beta):
    prior = MarkovLM.random(V, seed=4)
    task = Task(prior=prior, reward=KeywordConstraint(keywords=(1,)), beta=beta, length=T)
    posterior = exact_posterior(task)
    p0 = prior.log_prob(ALL).double().exp()
    event = torch.tensor([1 in row for row in _rows()])
    conditioned = torch.where(event, p0, torch.zeros_like(p0)) / p0[event].sum()  # pi0(x | event), whatever beta
    torch.testing.assert_close(posterior.log_probs.exp(), conditioned, atol=PROB_TOL, rtol=0)
    assert posterior.log_z == pytest.approx(math.log(float(p0[event].sum())), abs=PROB_TOL)


def test_lexicon_score_sums_token_scores():
    scores = {0: 2.0, 2: -1.0}
    reward = LexiconScore(scores, vocab_size=V, scale=0.5)
    expected = torch.tensor([0.5 * sum(scores.get(t, 0.0) for t in row) for row in _rows()])
    torch.testing.assert_close(reward(ALL), expected.to(torch.get_default_dtype()), atol=REWARD_TOL, rtol=0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: KeywordCount(keywords=()), "at least one keyword"),
        (lambda: KeywordConstraint(keywords=[]), "at least one keyword"),
        (lambda: LexiconScore({V: 1.0}, vocab_size=V), "outside the vocabulary"),
        (lambda: LexiconScore({-1: 1.0}, vocab_size=V), "outside the vocabulary"),
    ],
    ids=["count-no-keywords", "constraint-no-keywords", "lexicon-token-too-large", "lexicon-token-negative"],
)
def test_bad_arguments_are_refused_early(build, message):
    with pytest.raises(ValueError, match=message):
        build()
