"""TinyTransformerLM: exact normalization, vectorized vs step-by-step scoring, causality, sampling, checkpoints."""

import pytest
import torch

from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.lm import AutoregressiveLM, TinyTransformerLM
from bayes_klrl.lm.transformer import TransformerConfig, _unique_rows

NORMALIZATION_TOL = 1e-5  # float32 log-probs summed over V^T sequences
SCORING_TOL = 1e-5  # vectorized pass vs step-by-step recomputation
SAMPLE_TV_TOL = 0.03  # Monte Carlo TV with n = 100k over 81 cells is ~0.01
V, T = 3, 4


def random_lm(seed: int = 0, perturbation: float = 0.5, **config) -> TinyTransformerLM:
    """A small transformer with weights moved far from the near-uniform initialization."""
    lm = TinyTransformerLM(TransformerConfig(vocab_size=V, max_length=T, d_model=16, **config), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(perturbation * torch.randn(p.shape, generator=g))
    return lm.frozen()


def test_probabilities_sum_to_one_and_are_not_uniform():
    lm = random_lm()
    log_p = lm.log_prob(enumerate_sequences(V, T)).double()  # (V^T,)
    assert abs(float(log_p.exp().sum()) - 1.0) < NORMALIZATION_TOL
    assert float(log_p.max() - log_p.min()) > 1.0  # the test would not see a broken mask on a flat model


@pytest.mark.parametrize("length", [1, 2, T], ids=["T=1", "T=2", "T=max"])
def test_marginals_of_prefixes_sum_to_one(length):
    lm = random_lm(seed=1)
    total = lm.log_prob(enumerate_sequences(V, length)).double().exp().sum()
    assert abs(float(total) - 1.0) < NORMALIZATION_TOL


@pytest.mark.parametrize("n_layer, n_head", [(1, 1), (2, 2), (2, 4)], ids=["1x1", "2x2", "2x4"])
def test_vectorized_scoring_matches_step_by_step(n_layer, n_head):
    lm = random_lm(seed=2, n_layer=n_layer, n_head=n_head)
    x = lm.sample(256, T, generator=torch.Generator().manual_seed(0))  # many shared prefixes
    stepwise = AutoregressiveLM.token_log_probs(lm, x)  # the base class's start/step loop
    vectorized = lm.token_log_probs(x)
    assert vectorized.shape == (256, T)
    assert torch.allclose(vectorized, stepwise, atol=SCORING_TOL)
    prefixes = x[:, :2]
    assert torch.allclose(lm.next_token_logits(prefixes), AutoregressiveLM.next_token_logits(lm, prefixes))


def test_causal_mask_hides_later_tokens():
    lm = random_lm(seed=3)
    x = enumerate_sequences(V, T)[::7]  # (12, T)
    y = x.clone()
    y[:, 2:] = (y[:, 2:] + 1) % V  # change tokens 3..T
    logits_x, logits_y = lm(x[:, :-1]), lm(y[:, :-1])  # (N, T, V)
    assert torch.allclose(logits_x[:, :3], logits_y[:, :3])  # predictions of x_1..x_3 see only x_1, x_2
    assert not torch.allclose(logits_x[:, 3:], logits_y[:, 3:])


def test_sample_frequencies_match_probabilities():
    lm = random_lm(seed=4)
    n = 100_000
    x = lm.sample(n, T, generator=torch.Generator().manual_seed(0))
    codes = (x * torch.tensor([V ** (T - 1 - t) for t in range(T)])).sum(-1)
    freq = torch.bincount(codes, minlength=V**T).double() / n
    p = lm.log_prob(enumerate_sequences(V, T)).double().exp()
    assert 0.5 * float((freq - p).abs().sum()) < SAMPLE_TV_TOL


def test_seeded_initialization():
    config = TransformerConfig(vocab_size=V, max_length=T)
    a, b, c = TinyTransformerLM(config, seed=5), TinyTransformerLM(config, seed=5), TinyTransformerLM(config, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_save_load_round_trip(tmp_path):
    lm = random_lm(seed=7, n_layer=2, n_head=2)
    path = lm.save(tmp_path / "lm.pt", metadata={"seed": 7, "note": "test", "losses": [1.0, 0.5]})
    assert [p.name for p in tmp_path.iterdir()] == ["lm.pt"]  # no temporary file left behind
    loaded = TinyTransformerLM.load(path)
    x = enumerate_sequences(V, T)
    assert loaded.config == lm.config
    assert loaded.metadata == {"seed": 7, "note": "test", "losses": [1.0, 0.5]}
    assert torch.equal(loaded.log_prob(x), lm.log_prob(x))
    lm.save(path)  # overwriting in place works too
    assert torch.equal(TinyTransformerLM.load(path).log_prob(x), lm.log_prob(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TinyTransformerLM checkpoint"):
        TinyTransformerLM.load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a bayes_klrl.TinyTransformerLM"):
        TinyTransformerLM.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        TinyTransformerLM.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="plain values"):
        random_lm().save(tmp_path / "bad.pt", metadata={"tensor": torch.zeros(1)})
    assert not (tmp_path / "bad.pt").exists()


def test_gradients_flow_to_a_trainable_copy():
    prior = random_lm(seed=8)
    policy = prior.trainable_copy()
    x = prior.sample(32, T, generator=torch.Generator().manual_seed(0))
    (-policy.log_prob(x).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters())
    assert policy.token_embedding.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in prior.parameters())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TransformerConfig(vocab_size=4, max_length=3, d_model=10, n_head=3), "must divide d_model"),
        (lambda: TransformerConfig(vocab_size=0, max_length=3), "vocab_size must be an integer >= 1"),
        (lambda: TinyTransformerLM({"vocab_size": 3}), "config must be a TransformerConfig"),
        (lambda: random_lm().log_prob(torch.zeros(2, T + 1, dtype=torch.long)), "at most max_length=4"),
        (lambda: random_lm().log_prob(torch.full((2, T), V)), r"token ids must lie in 0\.\.2"),
        (lambda: random_lm().log_prob(torch.zeros(2, T)), "integer tensor"),
        (lambda: random_lm().sample(2, T + 1), "at most max_length"),
    ],
    ids=["n_head", "vocab_size", "config-type", "too-long", "token-range", "float-tokens", "sample-too-long"],
)
def test_bad_input_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unique_rows_both_paths_agree():
    rows = torch.randint(0, 3, (500, 4), generator=torch.Generator().manual_seed(0))
    for base in (3, 2**40):  # integer codes, and the row sort used when codes would overflow
        unique, inverse = _unique_rows(rows, base)
        assert torch.equal(unique[inverse], rows) and len(unique) == len(set(map(tuple, rows.tolist())))
