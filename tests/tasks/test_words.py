"""The toy grammar, its corpus and lexicon; the transformer training script; the shipped "words_sentiment" task."""

import importlib.util
import math
import sys

import pytest
import torch

from bayes_klrl import exact_posterior
from bayes_klrl.lm import TinyTransformerLM
from bayes_klrl.modelfile import load_task
from bayes_klrl.tasks.words import (
    LENGTH,
    SENTIMENT,
    TEMPLATES,
    VOCAB_SIZE,
    WORDS,
    decode,
    encode,
    grammar_distribution,
    sample_corpus,
    sentiment_reward,
)

from ..conftest import MODELS

PROB_TOL = 1e-12  # float64 sums over 360 sentences
CORPUS_TV_TOL = 0.05  # Monte Carlo TV with n = 50k over 360 cells is ~0.03
GRAMMAR_MASS_MIN = 0.99  # the shipped prior's mass on the grammar's sentences


def test_grammar_probabilities_and_entropy_match_the_templates():
    g = grammar_distribution()
    assert g.sentences.shape == (360, LENGTH) and len(set(map(tuple, g.sentences.tolist()))) == 360
    assert abs(float(g.probs.sum()) - 1.0) < PROB_TOL
    # independent reference: templates produce disjoint sets of uniformly chosen words, so
    # H = H(template) + sum_tau p(tau) log(number of sentences of tau)
    sizes = {"DET": 2, "NOUN": 3, "ADJ": 6, "VERB": 2}
    reference = sum(-p * math.log(p) + p * math.log(math.prod(sizes.get(s, 1) for s in t)) for t, p in TEMPLATES)
    assert abs(g.entropy - reference) < PROB_TOL
    assert abs(g.cross_entropy(g.probs.log()) - g.entropy) < PROB_TOL


def test_grammar_pads_longer_sentences_and_refuses_short_lengths():
    g = grammar_distribution(7)
    assert g.sentences.shape == (360, 7) and (g.sentences[:, 5:] == 0).all()
    with pytest.raises(ValueError, match="length must be an integer >= 5"):
        grammar_distribution(4)


def test_corpus_is_seeded_and_follows_the_grammar():
    x = sample_corpus(50_000, seed=3)
    assert torch.equal(x, sample_corpus(50_000, seed=3))
    assert not torch.equal(x[:100], sample_corpus(100, seed=4))
    g = grammar_distribution()
    match = (x[:, None, :] == g.sentences[None]).all(-1)  # (N, 360)
    assert match.any(-1).all()  # every sentence is grammatical
    freq = match.double().mean(0)
    assert 0.5 * float((freq - g.probs).abs().sum()) < CORPUS_TV_TOL
    with pytest.raises(ValueError, match="num_sentences"):
        sample_corpus(0, seed=0)


def test_encode_decode():
    x = encode(["the cat is good", "my great film is awful"])
    assert x.tolist() == [[1, 3, 12, 6, 0], [2, 7, 5, 12, 9]]
    assert decode(x) == ["the cat is good .", "my great film is awful"]
    assert decode(torch.tensor([[15, 15, 15, 15, 15]])) == ["very very very very very"]
    assert VOCAB_SIZE == len(WORDS) == 16 and VOCAB_SIZE**LENGTH <= 4_194_304


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: encode(["the cow is good"]), "unknown word"),
        (lambda: encode(["the cat is very very good"]), "more than length=5"),
        (lambda: encode("the cat is good"), "single string"),
        (lambda: decode(torch.tensor([[0, 16, 0, 0, 0]])), "token ids must lie in 0..15"),
        (lambda: decode(torch.zeros(5, dtype=torch.long)), r"shape \(N, T\)"),
    ],
    ids=["unknown-word", "too-long", "bare-string", "bad-id", "1d"],
)
def test_encode_decode_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_sentiment_reward():
    r = sentiment_reward()
    x = encode(["the good film is great", "my dog hates the cat", "the cat is very awful", "the old dog is big"])
    assert r(x).tolist() == [3.0, -1.0, -2.0, 0.0]
    assert sentiment_reward(scale=0.5)(x).tolist() == [1.5, -0.5, -1.0, 0.0]
    g = grammar_distribution()
    assert abs(float((g.probs * r(g.sentences).double()).sum())) < PROB_TOL  # symmetric lexicon
    assert set(SENTIMENT) <= set(WORDS)


def _training_script(monkeypatch):
    name = "train_tiny_transformer_under_test"
    spec = importlib.util.spec_from_file_location(name, MODELS / "train_tiny_transformer.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_training_script_runs_and_lowers_the_loss(tmp_path, capsys, monkeypatch):
    out = tmp_path / "lm.pt"
    argv = ["--steps", "20", "--out", str(out), "--num-train", "500", "--num-heldout", "200", "--seed", "1"]
    threads = torch.get_num_threads()
    result = _training_script(monkeypatch).main(argv)
    assert torch.get_num_threads() == threads  # the script restores the thread count
    assert result.heldout_nll < result.initial_heldout_nll - 1.0  # from ~ 5 log 16 = 13.9 nats
    assert result.cross_entropy >= result.grammar_entropy - 1e-9  # Gibbs' inequality
    assert "wrote" in capsys.readouterr().out
    lm = TinyTransformerLM.load(out)
    assert lm.metadata["training"]["steps"] == 20 and out.stat().st_size < 1_000_000
    with pytest.raises(SystemExit):
        _training_script(monkeypatch).main(["--steps", "0", "--out", str(out)])


@pytest.fixture(scope="module")
def word_task():
    return load_task("words_sentiment")


def test_shipped_word_task_constructs(word_task):
    task = word_task
    assert (task.name, task.vocab_size, task.length, task.beta) == ("words_sentiment", 16, 5, 1.0)
    assert isinstance(task.prior, TinyTransformerLM) and 10_000 <= task.prior.num_parameters <= 100_000
    assert (MODELS / "tiny_transformer.pt").stat().st_size < 1_000_000
    x = task.prior.sample(4, task.length, generator=torch.Generator().manual_seed(0))
    assert all(len(s.split()) == 5 for s in task.decode(x))
    g = grammar_distribution()
    assert float(task.prior.log_prob(g.sentences).exp().sum()) > GRAMMAR_MASS_MIN
    assert load_task("words_sentiment", beta=0.5).beta == 0.5


def test_shipped_word_task_posterior_is_tilted(word_task):
    post = exact_posterior(word_task)
    prior_reward = float((post.log_prior.exp() * post.rewards).sum())
    assert abs(float(post.log_probs.exp().sum()) - 1.0) < 1e-9
    assert post.expected_reward > prior_reward + 1.0  # the posterior visibly prefers positive sentences
    # Jensen: log Z = log E_pi0[exp(r/beta)] >= E_pi0[r]/beta
    assert post.log_z >= prior_reward / word_task.beta
