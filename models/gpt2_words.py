r"""Shipped task "gpt2_words": a 2-layer GPT-2 over 6 words, the same checkpoint TRL trains, tilted to one word.

Prior :math:`\pi_0`: ``tiny_gpt2/`` next to this file (rebuilt by ``python models/train_tiny_gpt2.py``), a
``transformers`` GPT-2 of 2 layers (26,016 parameters) fitted by maximum likelihood to sentences of a random
Markov source over the words ``the cat dog sees runs big``. Its tokenizer has 9 ids: ``<pad>`` (0), ``<bos>``
(1), ``<eos>`` (2) and the six words (3..8). Sequences :math:`x` are the :math:`T = 5` tokens after the prompt
``<bos>``; our view restricts the model to the six word ids (:math:`6^5 = 7{,}776` sequences), so a sequence
holds indices 0..5 into :data:`WORDS`.

The model never emits a special token: :class:`WordsGPT2LMHeadModel` adds ``-1e4`` to their logits inside its
LM head (its ``bias``), so :math:`p(\text{special}) = e^{-10^4} = 0` exactly in float32, and the softmax over
all 9 ids (what TRL samples from and scores) equals the softmax over the 6 words (what this package
enumerates):

.. math:: \log\pi_0^{\text{TRL}}(x) = \sum_t \log \frac{e^{z_{x_t}}}{\sum_{v=1}^{9} e^{z_v}}
          = \sum_t \log \frac{e^{z_{x_t}}}{\sum_{v \in \text{words}} e^{z_v}} = \log\pi_0(x).

A bias, not a mask in ``forward``: TRL's trainers score completions with a fused LM head that reads the head's
``weight`` and ``bias`` and never calls the model's ``forward``; generation calls ``forward``; both see the bias.

Reward: :math:`r(x) = \#\{t : x_t = \text{"cat"}\}` (``word=`` picks another), :math:`\beta = 0.5`, so
:math:`\pi^*(x) \propto \pi_0(x)\,e^{2\,r(x)}`. Exactly (enumeration): :math:`\mathbb{E}_{\pi_0}[r] ≈ 0.675`,
:math:`\mathbb{E}_{\pi^*}[r] ≈ 1.574`, :math:`\log Z ≈ 2.211` and :math:`\mathrm{KL}(\pi_0\|\pi^*) ≈ 0.861` nats, the
starting KL of a policy initialized at the prior.

Loading reads ``config.json`` + ``model.safetensors`` (no pickle) offline; the model class is registered with
``AutoConfig`` / ``AutoModelForCausalLM`` under the model type ``words_gpt2`` by :func:`model_classes` (which
:func:`task` and :func:`load_model` call), so after it ``AutoModelForCausalLM.from_pretrained(CHECKPOINT)`` (and TRL given the path)
builds it. Needs the ``[lm]`` extra.
"""

from __future__ import annotations

import functools
from pathlib import Path

from bayes_klrl import Task
from bayes_klrl.tasks.rewards import KeywordCount

CHECKPOINT = Path(__file__).resolve().parent / "tiny_gpt2"
#: the six words, in the order of the task's token indices 0..5 (their tokenizer ids are 3..8)
WORDS = ("the", "cat", "dog", "sees", "runs", "big")
#: the special tokens, tokenizer ids 0, 1, 2
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
LENGTH = 5
BETA = 0.5
REWARD_WORD = "cat"
#: the ``model_type`` the model class is registered under
MODEL_TYPE = "words_gpt2"
#: added to the special tokens' logits: exp(-1e4) underflows to exactly 0 in float32 and float64, and unlike
#: -inf it keeps p * log p = 0 (TRL's entropy) and p = 0 without NaN in every softmax
SUPPRESSED_LOGIT = -1e4
#: ``bayes-klrl compare`` settings where the command line gives none: a rate for full fine-tuning of the GPT-2
COMPARE_DEFAULTS = {"lr": 1e-3, "num_sequences": 16}


def describe() -> dict:
    return {"vocab_size": len(WORDS), "length": LENGTH, "beta": BETA}


@functools.lru_cache(maxsize=1)
def model_classes() -> tuple[type, type]:
    """``(WordsGPT2Config, WordsGPT2LMHeadModel)``, registered with ``AutoConfig`` and ``AutoModelForCausalLM``.

    Built on first use so that listing the task does not import ``transformers``.

    :raises ImportError: one line with the install command, when ``transformers`` is absent.

    Example::

        >>> config_class, model_class = model_classes()
        >>> config_class.model_type
        'words_gpt2'
    """
    try:
        import torch
        from torch import nn
        from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
    except ImportError as exc:
        raise ImportError("the gpt2_words task needs transformers: pip install 'bayes_klrl[lm]'") from exc

    class WordsGPT2Config(GPT2Config):
        """A :class:`~transformers.GPT2Config` whose model never emits its ``bos``/``eos``/``pad`` tokens."""

        model_type = MODEL_TYPE

    class SuppressingLMHead(nn.Module):
        r"""The LM head :math:`z = W h + b` with :math:`b_v = -10^4` on the suppressed ids and 0 elsewhere.

        ``weight`` is a parameter (tied to the input embeddings); ``bias`` is computed on access, so it is
        never stored, loaded, trained or decayed, and fused heads that read ``lm_head.bias`` apply it too.
        """

        def __init__(self, in_features: int, out_features: int, suppressed: tuple[int, ...]):
            super().__init__()
            self.in_features, self.out_features = int(in_features), int(out_features)
            self.suppressed = tuple(sorted({int(i) for i in suppressed}))
            if any(not 0 <= i < self.out_features for i in self.suppressed):
                raise ValueError(f"suppressed token ids {self.suppressed} outside 0..{self.out_features - 1}")
            self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))  # (V, d)
            nn.init.normal_(self.weight, std=0.02)

        @property
        def bias(self) -> torch.Tensor:
            """``(V,)``: 0 on allowed ids, :data:`SUPPRESSED_LOGIT` on suppressed ones (no gradient)."""
            bias = torch.zeros(self.out_features, dtype=self.weight.dtype, device=self.weight.device)
            bias[list(self.suppressed)] = SUPPRESSED_LOGIT
            return bias

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(hidden, self.weight, self.bias)  # (..., V)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, suppressed={self.suppressed}"

    class WordsGPT2LMHeadModel(GPT2LMHeadModel):
        """:class:`~transformers.GPT2LMHeadModel` with a :class:`SuppressingLMHead`: its distribution (sampling,
        ``forward`` logits, TRL's fused log-probabilities) puts probability 0 on the config's bos, eos and pad."""

        config_class = WordsGPT2Config

        def __init__(self, config):
            super().__init__(config)
            suppressed = [i for i in (config.bos_token_id, config.eos_token_id, config.pad_token_id) if i is not None]
            self.lm_head = SuppressingLMHead(config.n_embd, config.vocab_size, tuple(suppressed))
            self.post_init()  # ties lm_head.weight to the input embeddings again

    AutoConfig.register(MODEL_TYPE, WordsGPT2Config, exist_ok=True)
    AutoModelForCausalLM.register(WordsGPT2Config, WordsGPT2LMHeadModel, exist_ok=True)
    return WordsGPT2Config, WordsGPT2LMHeadModel


def load_model(checkpoint: str | Path = CHECKPOINT):
    """``(model, tokenizer)`` from ``checkpoint`` (safetensors, offline), the model in eval mode without gradients.

    :raises FileNotFoundError: one line naming the folder and how to rebuild it.
    """
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no GPT-2 checkpoint in '{folder}' (config.json + model.safetensors): run python models/train_tiny_gpt2.py"
        )
    _, model_class = model_classes()
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 106 KB checkpoint needs no "Loading weights" bar
    try:
        model = model_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def word_ids(tokenizer) -> list[int]:
    """The tokenizer ids of :data:`WORDS`, in order (the task's vocabulary)."""
    vocab = tokenizer.get_vocab()
    missing = [w for w in WORDS if w not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the word(s) {missing}; rebuild it with models/train_tiny_gpt2.py")
    return [int(vocab[w]) for w in WORDS]


def task(
    beta: float = BETA,
    length: int = LENGTH,
    word: str = REWARD_WORD,
    lora_rank: int = 8,
    checkpoint: str | Path = CHECKPOINT,
    device: str = "cpu",
) -> Task:
    """The GPT-2 word task.

    :param str word: the word whose occurrences the reward counts (one of :data:`WORDS`).
    :param int lora_rank: the rank of the prior's LoRA setting (:math:`\\alpha = 2r`, on the blocks' projections),
        the adapter of ``task.make_policy("lora")`` (and of ``"auto"`` on a Hugging Face prior).
        ``task.make_policy("copy")`` fine-tunes every weight instead, as TRL's full fine-tuning does.
    :param checkpoint: another run of ``train_tiny_gpt2.py``.
    """
    from bayes_klrl.lm.hf import HFCausalLM, LoRASettings

    if word not in WORDS:
        raise ValueError(f"word {word!r} is not in the vocabulary {WORDS}")
    model, tokenizer = load_model(checkpoint)
    max_length = int(model.config.n_positions) - 1  # the prompt takes one position
    if not 1 <= int(length) <= max_length:
        raise ValueError(f"length must be in 1..{max_length} for this checkpoint, got {length}")
    lora = LoRASettings(rank=int(lora_rank), alpha=2.0 * int(lora_rank))  # every Conv1D of the blocks
    prior = HFCausalLM(
        model,
        tokenizer,
        prompt=[tokenizer.bos_token_id],
        vocabulary=word_ids(tokenizer),
        device=device,
        lora=lora,
    )
    return Task(
        prior=prior,
        reward=KeywordCount(keywords=(WORDS.index(word),)),
        beta=beta,
        length=int(length),
        name="gpt2_words",
        decode=prior.decode,
    )
