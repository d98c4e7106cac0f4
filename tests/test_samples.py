"""The scored-sample record (bayes_klrl/samples.py) against independent computations: hand formulas, closed forms,
exact enumeration."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayes_klrl import CategoricalLM, Task, exact_posterior
from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.samples import (
    ScoredSamples,
    WeightSummary,
    score,
    weight_summary,
)
from bayes_klrl.sequences import sequence_codes, sequences_from_codes

from .conftest import perturbed_policy, small_markov_task

LM_TOL = 1e-5  # the LMs compute log-probabilities in float32
SUMMARY_TOL = 1e-12  # float64 sums of a few hundred terms
LOG_Z_SIGMAS = 4.0  # |log Ẑ − log Z| within this many standard errors

PRIOR_LOGITS = [0.3, -1.0, 0.5]
PROPOSAL_LOGITS = [-0.2, 0.7, 0.1]
REWARDS = [1.5, -0.5, -math.inf]  # per token, summed over positions; token 2 is forbidden
BETA = 0.7


def _iid_task() -> Task:
    weights = torch.tensor(REWARDS)
    return Task(
        prior=CategoricalLM(torch.tensor(PRIOR_LOGITS)), reward=lambda x: weights[x].sum(-1), beta=BETA, length=2
    )


def _log_softmax(logits: list[float]) -> list[float]:
    log_norm = math.log(sum(math.exp(v) for v in logits))
    return [v - log_norm for v in logits]


# -- the record ---------------------------------------------------------------------------------------------


def test_log_weight_matches_a_hand_formula():
    task = _iid_task()
    proposal = CategoricalLM(torch.tensor(PROPOSAL_LOGITS))
    x = enumerate_sequences(3, 2)  # all 9 sequences
    s = score(task, x, log_q=proposal)
    log_p0, log_q0 = _log_softmax(PRIOR_LOGITS), _log_softmax(PROPOSAL_LOGITS)
    for i, (a, b) in enumerate(x.tolist()):
        reward = REWARDS[a] + REWARDS[b]
        log_prior = log_p0[a] + log_p0[b]
        log_q = log_q0[a] + log_q0[b]
        assert float(s.log_prior[i]) == pytest.approx(log_prior, abs=LM_TOL)
        assert float(s.log_q[i]) == pytest.approx(log_q, abs=LM_TOL)
        assert float(s.reward[i]) == reward
        if math.isinf(reward):
            assert s.log_likelihood[i] == -math.inf and s.log_target[i] == -math.inf and s.log_weight[i] == -math.inf
        else:
            assert float(s.log_likelihood[i]) == pytest.approx(reward / BETA, abs=SUMMARY_TOL)
            assert float(s.log_target[i]) == pytest.approx(log_prior + reward / BETA, abs=LM_TOL)
            assert float(s.log_weight[i]) == pytest.approx(log_prior + reward / BETA - log_q, abs=LM_TOL)
    assert s.log_prior.dtype == s.reward.dtype == s.log_q.dtype == torch.float64
    assert s.num_samples == len(s) == 9 and s.length == 2 and s.beta == BETA


def test_prior_as_proposal_reuses_log_prior_and_weights_are_reward_over_beta(small_task):
    x = small_task.prior.sample(50, small_task.length, generator=torch.Generator().manual_seed(0))
    s = score(small_task, x, log_q=small_task.prior)
    assert s.log_q is s.log_prior
    torch.testing.assert_close(s.log_weight, small_task.rewards(x).double() / small_task.beta)


def test_log_weight_needs_log_q(small_task):
    s = score(small_task, enumerate_sequences(3, 3))
    assert s.log_q is None
    with pytest.raises(ValueError, match="log_q"):
        _ = s.log_weight


def test_a_differentiable_log_q_stays_differentiable(small_task):
    policy = perturbed_policy(small_task)
    x = enumerate_sequences(3, 3)
    s = score(small_task, x, log_q=policy.log_prob(x))
    assert s.log_q.requires_grad and not s.log_prior.requires_grad and not s.reward.requires_grad
    (grad,) = torch.autograd.grad(s.log_weight.sum(), policy.logits)
    assert grad.abs().max() > 0


@pytest.mark.parametrize(
    "tokens",
    [torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), [[0, 1, 2]]],
    ids=["float", "one-dim", "list"],
)
def test_score_refuses_bad_tokens(small_task, tokens):
    with pytest.raises(ValueError, match="LongTensor"):
        score(small_task, tokens)


def test_record_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="reward must have shape"):
        ScoredSamples(
            tokens=torch.zeros(3, 2, dtype=torch.long), log_prior=torch.zeros(3), reward=torch.zeros(2), beta=1.0
        )


def test_rows_select_concatenate_and_merge(small_task):
    x = enumerate_sequences(3, 3)
    s = score(small_task, x, log_q=perturbed_policy(small_task).log_prob(x).detach())
    whole = ScoredSamples.cat([s[:10], s[10:20], s[20:]])
    for name in ("tokens", "log_prior", "reward", "log_q"):
        assert torch.equal(getattr(whole, name), getattr(s, name))
    assert s[3].num_samples == 1 and torch.equal(s[3].tokens, x[3:4])
    assert torch.equal(s[-1].tokens, x[-1:])
    mask = s.reward > 0
    assert torch.equal(s[mask].tokens, x[mask])
    reversed_rows = s[torch.arange(26, -1, -1)]
    merged = s.where(mask, reversed_rows)
    assert torch.equal(merged.tokens, torch.where(mask[:, None], x.flip(0), x))
    assert torch.equal(merged.log_weight, torch.where(mask, s.log_weight.flip(0), s.log_weight))
    with pytest.raises(ValueError, match="log_q"):
        ScoredSamples.cat([s, score(small_task, x)])
    with pytest.raises(ValueError, match="beta"):
        ScoredSamples.cat([s, score(small_task.replace(beta=2.0), x, log_q=s.log_q)])


# -- the sequence <-> code encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size,length", [(2, 1), (3, 3), (4, 2), (5, 0)])
def test_codes_are_lexicographic_ranks(vocab_size, length):
    x = enumerate_sequences(vocab_size, length)  # (V^T, T)
    assert x.shape == (vocab_size**length, length)
    assert [tuple(row) for row in x.tolist()] == sorted(tuple(row) for row in x.tolist())
    assert torch.equal(sequence_codes(x, vocab_size), torch.arange(vocab_size**length))
    assert torch.equal(sequences_from_codes(torch.arange(vocab_size**length), vocab_size, length), x)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), vocab_size=st.integers(1, 50), num=st.integers(1, 8))
def test_codes_round_trip_and_match_python_integers(data, vocab_size, num):
    max_length = int(math.floor(63 * math.log(2) / math.log(vocab_size))) if vocab_size > 1 else 100
    length = data.draw(st.integers(0, min(max_length, 40)))
    rows = data.draw(
        st.lists(st.lists(st.integers(0, vocab_size - 1), min_size=length, max_size=length), min_size=num, max_size=num)
    )
    tokens = torch.tensor(rows, dtype=torch.long).reshape(num, length)
    codes = sequence_codes(tokens, vocab_size)
    expected = [sum(tok * vocab_size ** (length - 1 - t) for t, tok in enumerate(row)) for row in rows]  # exact ints
    assert codes.dtype == torch.long and codes.tolist() == expected
    assert torch.equal(sequences_from_codes(codes, vocab_size, length), tokens)


@pytest.mark.parametrize("vocab_size,length", [(2, 64), (3, 40), (50_257, 5)], ids=["2^64", "3^40", "gpt2-5"])
def test_codes_refuse_int64_overflow(vocab_size, length):
    with pytest.raises(ValueError, match="int64"):
        sequence_codes(torch.zeros(1, length, dtype=torch.long), vocab_size)
    with pytest.raises(ValueError, match="int64"):
        sequences_from_codes(torch.zeros(1, dtype=torch.long), vocab_size, length)


def test_largest_int64_code_still_fits():
    tokens = torch.ones(1, 63, dtype=torch.long)  # 2^63 − 1, the largest int64
    assert int(sequence_codes(tokens, 2)) == 2**63 - 1
    assert torch.equal(sequences_from_codes(sequence_codes(tokens, 2), 2, 63), tokens)


# -- the weight summary ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_equal_weights_give_full_ess(n):
    s = weight_summary(torch.full((n,), 2.5, dtype=torch.float64))
    assert isinstance(s, WeightSummary) and s.num_samples == n
    assert s.effective_samples == pytest.approx(n, rel=SUMMARY_TOL)
    assert s.ess == pytest.approx(1.0, rel=SUMMARY_TOL)
    assert s.max_weight_ratio == pytest.approx(1.0, rel=SUMMARY_TOL)
    assert s.log_z == pytest.approx(2.5, abs=SUMMARY_TOL) and s.mean_log_weight == pytest.approx(2.5)
    if n > 1:
        assert s.log_z_se == pytest.approx(0.0, abs=SUMMARY_TOL)


@pytest.mark.parametrize("n", [2, 10, 500])
def test_one_nonzero_weight_gives_one_effective_sample(n):
    log_w = torch.full((n,), -math.inf, dtype=torch.float64)
    log_w[n // 2] = 1.0
    s = weight_summary(log_w)
    assert s.effective_samples == pytest.approx(1.0, rel=SUMMARY_TOL)
    assert s.ess == pytest.approx(1.0 / n, rel=SUMMARY_TOL)
    assert s.max_weight_ratio == pytest.approx(n, rel=SUMMARY_TOL)
    assert s.log_z == pytest.approx(1.0 - math.log(n), abs=SUMMARY_TOL)
    assert s.mean_log_weight == -math.inf


def test_summary_matches_numpy_reference():
    log_w = torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0
    w = np.exp(log_w.numpy())
    s = weight_summary(log_w)
    z_hat = w.mean()
    assert s.log_z == pytest.approx(math.log(z_hat), abs=SUMMARY_TOL)
    assert s.ess == pytest.approx(w.sum() ** 2 / (w.size * (w**2).sum()), rel=SUMMARY_TOL)
    assert s.log_z_se == pytest.approx(np.std(w / z_hat, ddof=1) / math.sqrt(w.size), rel=1e-10)
    assert s.max_weight_ratio == pytest.approx(w.max() / w.mean(), rel=SUMMARY_TOL)
    assert s.mean_log_weight == pytest.approx(float(log_w.numpy().mean()), abs=SUMMARY_TOL)


@pytest.mark.parametrize(
    "log_w,match",
    [
        (torch.full((4,), -math.inf), "no support"),
        (torch.tensor([0.0, math.nan]), "NaN"),
        (torch.tensor([0.0, math.inf]), r"\+inf"),
        (torch.zeros(2, 2), "shape"),
        (torch.zeros(0), "shape"),
    ],
    ids=["all-zero", "nan", "plus-inf", "two-dim", "empty"],
)
def test_summary_refuses_bad_weights(log_w, match):
    with pytest.raises(ValueError, match=match):
        weight_summary(log_w)


@pytest.mark.parametrize("proposal", ["prior", "policy"])
def test_log_z_estimate_brackets_exact_log_z(proposal):
    task = small_markov_task(vocab_size=3, length=4, beta=0.5, seed=1)
    q = task.prior if proposal == "prior" else perturbed_policy(task, scale=0.3, seed=2)
    x = q.sample(20_000, task.length, generator=torch.Generator().manual_seed(3))
    s = weight_summary(score(task, x, log_q=q).log_weight)
    log_z = exact_posterior(task).log_z
    assert abs(s.log_z - log_z) < LOG_Z_SIGMAS * s.log_z_se
    assert s.mean_log_weight <= log_z  # E_q[log w] = ELBO ≤ log Z, here with room to spare
