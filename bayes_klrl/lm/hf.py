r"""A Hugging Face causal LM with a fixed prompt, as an :class:`~bayes_klrl.lm.AutoregressiveLM`.

The sequences :math:`x = (x_1..x_T)` are the tokens of the continuation after a fixed prompt :math:`c`:

.. math:: \log \pi(x) = \sum_{t=1}^{T} \log p_\theta(x_t \mid c, x_{<t}),

so a task over a real LM is the same object as a task over a toy one: the prior :math:`\pi_0` is the
pretrained model, the policy :math:`q` the same model with a LoRA adapter (Hu et al., 2021),

.. math:: W \mapsto W + \tfrac{\alpha}{r} B A, \qquad B \in \mathbb{R}^{d_\text{out}\times r},\ A \in \mathbb{R}^{r\times d_\text{in}},\ B_0 = 0,

so :math:`q = \pi_0` at initialization, and only :math:`A, B` (under 1% of the weights) are trained and carry
optimizer state. The policy and the prior share the base weight storage: a second copy of the LM is never made.

A *vocabulary* :math:`\mathcal{V} = (v_0..v_{K-1})` of model token ids restricts the LM to :math:`K` tokens; the
sequences then hold indices :math:`0..K-1` into it and the next-token distribution is renormalized over it,

.. math:: \pi(x_t = k \mid c, x_{<t}) = p_\theta(v_k \mid c, v_{x_{<t}}) \big/ \textstyle\sum_{j<K} p_\theta(v_j \mid c, v_{x_{<t}}),

which makes a task on a real tokenizer enumerable (6 words, :math:`T = 5`: 7,776 sequences), with BOS, EOS and
padding left out. Only the :math:`K` rows of the output head are computed.

Sampling and the Pyro program use :meth:`HFCausalLM.start` / :meth:`HFCausalLM.step` with the KV cache;
:meth:`HFCausalLM.token_log_probs` and :meth:`HFCausalLM.next_token_log_probs` score a whole batch in one
teacher-forced pass on the prompt's shared cache.

The caller's model is never changed: the adapter keeps its own module tree over the caller's weight tensors (its
eval mode, a restricted head and :meth:`HFCausalLM.frozen` touch only that tree), and a LoRA policy's base
weights are its own parameters, without gradients, over the same storage.

This module imports only torch; ``transformers`` and ``peft`` (for :meth:`HFCausalLM.trainable_copy`, through
:mod:`bayes_klrl.lm.lora`) are imported when needed; the SmolLM2 loader is :mod:`bayes_klrl.lm.smollm2`. Install
them with ``pip install 'bayes_klrl[lm]'``.

References:

- E. J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685, 2021.
- T. Korbak, E. Perez, C. Buckley, "RL with KL penalties is better viewed as Bayesian inference", arXiv:2205.11275.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import AutoregressiveLM, sample_categorical
from .lora import LORA_BIAS, LoRASettings, _output_head, inject_lora  # noqa: F401 (LORA_BIAS: re-exported)

__all__ = ["HFCausalLM", "LoRASettings", "chat_prompt"]

#: names that moved to :mod:`bayes_klrl.lm.smollm2`, still importable from here
_SMOLLM2_NAMES = ("SMOLLM2_GGUF", "load_smollm2", "smollm2_path")


def __getattr__(name: str):
    # a real cycle: the SmolLM2 loader builds an HFCausalLM, so this module reaches it only when asked (PEP 562)
    if name in _SMOLLM2_NAMES:
        from . import smollm2

        return getattr(smollm2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class _DecodeState:
    """What :meth:`HFCausalLM.step` carries: the KV cache (updated in place) and the tokens seen so far."""

    cache: Any
    length: int  # prompt + continuation tokens already in the cache


class _RestrictedHead(nn.Module):
    r"""An output head computed at the vocabulary's rows only: logits ``(..., K)``.

    For an ``nn.Linear`` head only the rows :math:`W_{\mathcal V}` are multiplied (:math:`h W_{\mathcal V}^\top +
    b_{\mathcal V}`); any other head runs in full and its logits are taken at the vocabulary's columns. The head
    module is kept, so tied weights stay tied and train as they would.
    """

    def __init__(self, head: nn.Module, ids: torch.Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("ids", ids, persistent=False)  # (K,)
        self.rows_only = isinstance(head, nn.Linear) and type(head).forward is nn.Linear.forward

    @property
    def full_size(self) -> int:
        """Rows of the wrapped head: the model's vocabulary size."""
        return int(self.head.weight.shape[0])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.rows_only:
            bias = None if self.head.bias is None else self.head.bias[self.ids]
            return F.linear(hidden, self.head.weight[self.ids], bias)  # (..., K)
        return self.head(hidden)[..., self.ids]  # (..., K)


def _share_weights_copy(module: nn.Module, *, own_parameters: bool = False) -> nn.Module:
    """A copy of ``module``'s object tree over the same weight storage (no tensor memory).

    :param bool own_parameters: ``False``: the copy holds the *same* parameter objects (their ``requires_grad``
        flags are the caller's). ``True``: new parameter objects over the same storage, without gradients, so
        nothing done to the copy's flags reaches the caller's model (tied weights stay tied).
    """
    memo = {id(t): t for t in module.buffers()}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False) if own_parameters else p
    return copy.deepcopy(module, memo)


def _check_vocabulary(vocabulary, full_size: int) -> torch.Tensor:
    """The vocabulary as a LongTensor ``(K,)`` of distinct model ids in ``0..full_size-1``; else ValueError."""
    ids = vocabulary.tolist() if isinstance(vocabulary, torch.Tensor) else list(vocabulary)
    if not ids:
        raise ValueError("vocabulary must hold at least one token id")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"vocabulary must hold integer token ids, got {ids[:8]!r}")
    outside = [i for i in ids if not 0 <= i < full_size]
    if outside:
        raise ValueError(f"vocabulary ids {outside[:8]} lie outside the model's 0..{full_size - 1}")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"vocabulary ids must be distinct; repeated: {repeated[:8]}")
    return torch.tensor(ids, dtype=torch.long)


class HFCausalLM(AutoregressiveLM):
    r"""A ``transformers`` causal LM continuing a fixed prompt: :math:`\pi(x) = \prod_t p(x_t \mid c, x_{<t})`.

    :param model: a causal LM (``AutoModelForCausalLM``: ``LlamaForCausalLM``, ``GPT2LMHeadModel`` …). It is
        not changed: the adapter runs its own module tree (in eval mode) over the model's weight tensors.
    :param tokenizer: its tokenizer (encodes a string prompt; used by :meth:`decode` and :attr:`prompt`), or
        ``None`` when the prompt is token ids.
    :param prompt: the prompt :math:`c`: a string (encoded without adding special tokens; put them in the
        string, e.g. with ``tokenizer.apply_chat_template``) or model token ids. At least one token.
    :param vocabulary: model token ids :math:`v_0..v_{K-1}` (distinct) the sequences are restricted to:
        ``vocab_size`` is then :math:`K`, sequences hold indices ``0..K-1`` into it and the next-token
        distribution is renormalized over it. ``None``: the model's whole vocabulary.
    :param device: where the model and prompt live (``"cpu"``, ``"cuda"``); ``None`` keeps the model's device
        (another device moves the model's tensors there).
    :param lora: the adapter of :meth:`trainable_copy`; ``None`` makes :meth:`trainable_copy` a full copy with
        every weight trainable (memory: the whole model again, plus its optimizer state).

    Sequences are LongTensors ``(N, T)`` of continuation tokens (model ids, or vocabulary indices); the prompt is
    not part of them.

    Example::

        >>> model, tokenizer = load_smollm2("cpu")
        >>> prior = HFCausalLM(model, tokenizer, "The movie was")
        >>> x = prior.sample(4, 8, generator=torch.Generator().manual_seed(0))
        >>> x.shape, len(prior.decode(x))
        (torch.Size([4, 8]), 4)
        >>> policy = prior.trainable_copy()   # LoRA; policy.log_prob(x) == prior.log_prob(x) at first
        >>> ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" good", " bad", " fine")]
        >>> words = HFCausalLM(model, None, [tokenizer.bos_token_id], vocabulary=ids)   # sequences over 3 words
        >>> words.vocab_size
        3
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        prompt: str | Sequence[int] | torch.Tensor | None = None,
        *,
        vocabulary: Sequence[int] | torch.Tensor | None = None,
        device: str | torch.device | None = None,
        lora: LoRASettings | None = LoRASettings(),  # noqa: B008 (frozen: one immutable default)
    ):
        head = _output_head(model)
        if isinstance(head, _RestrictedHead):  # the model of another restricted HFCausalLM: same vocabulary
            if vocabulary is not None and not torch.equal(torch.as_tensor(list(vocabulary)), head.ids.cpu()):
                raise ValueError("this model is already restricted to another vocabulary: pass the original model")
            view, full_size, ids = _share_weights_copy(model), head.full_size, head.ids.cpu()
        else:
            if not hasattr(head, "weight") or getattr(head.weight, "dim", lambda: 0)() != 2:
                raise ValueError(f"the output head of {type(model).__name__} has no (V, d) weight matrix")
            full_size = int(head.weight.shape[0])
            ids = None if vocabulary is None else _check_vocabulary(vocabulary, full_size)
            view = _share_weights_copy(model)
            if ids is not None:
                view.set_output_embeddings(_RestrictedHead(_output_head(view), ids))
                if not isinstance(_output_head(view), _RestrictedHead):
                    raise ValueError(f"{type(model).__name__} does not let its output head be replaced: no vocabulary=")
        super().__init__(full_size if ids is None else int(ids.numel()))
        self.full_vocab_size = full_size
        if prompt is None:
            raise ValueError("HFCausalLM needs a prompt: a string (with a tokenizer) or token ids, e.g. [bos_token_id]")
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError("a string prompt needs a tokenizer: pass tokenizer=, or give the prompt as token ids")
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
        if prompt_ids.numel() == 0:
            raise ValueError("the prompt must have at least one token (e.g. the tokenizer's BOS token)")
        if int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= full_size:
            raise ValueError(f"prompt token ids must lie in 0..{full_size - 1}")
        self.model = view
        self.tokenizer = tokenizer
        self.lora = lora
        self.register_buffer("prompt_ids", prompt_ids, persistent=False)  # (P,) model ids
        self.register_buffer("vocabulary_ids", ids, persistent=False)  # (K,) model ids, or None
        forward_parameters = inspect.signature(view.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"  # transformers 5.x
        if device is None:  # keep the model where it is and bring the prompt there
            device = next(iter(view.parameters()), prompt_ids).device
        self.to(device)
        self.eval()  # no dropout: sampling and scoring must see the same distribution (the adapter's tree only)

    @property
    def device(self) -> torch.device:
        return self.prompt_ids.device

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_ids.numel())

    @property
    def vocabulary(self) -> tuple[int, ...] | None:
        """The model token ids the sequences index (``None``: the whole vocabulary, sequences hold model ids)."""
        return None if self.vocabulary_ids is None else tuple(self.vocabulary_ids.tolist())

    @property
    def prompt(self) -> str:
        """The prompt as text (special tokens kept).

        :raises ValueError: without a tokenizer.
        """
        self._need_tokenizer("prompt")
        return self.tokenizer.decode(self.prompt_ids.tolist())

    def _need_tokenizer(self, what: str) -> None:
        if self.tokenizer is None:
            raise ValueError(f"HFCausalLM.{what} needs a tokenizer: pass tokenizer= when making the HFCausalLM")

    def model_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model token ids of ``tokens`` (vocabulary indices mapped through the vocabulary), same shape.

        Example::

            >>> words.model_ids(torch.tensor([[2, 0]])).tolist() == [[ids[2], ids[0]]]
            True
        """
        tokens = tokens.to(self.device)
        return tokens if self.vocabulary_ids is None else self.vocabulary_ids[tokens]

    # -- the protocol ------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, cache: Any, past_length: int) -> tuple[torch.Tensor, Any]:
        """Logits ``(N, L, V)`` of model ids ``input_ids`` ``(N, L)`` after ``past_length`` cached tokens, and the
        cache (``V``: the vocabulary's size)."""
        num_sequences, new = input_ids.shape
        attention_mask = torch.ones(num_sequences, past_length + new, dtype=torch.long, device=input_ids.device)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **{self._cache_argument: cache}
        )
        return out.logits, getattr(out, self._cache_argument)

    def start(self, num_sequences: int) -> tuple[torch.Tensor, _DecodeState]:
        """Run the prompt once (batch 1), repeat its KV cache ``N`` times; logits ``(N, V)`` of :math:`x_1`."""
        logits, cache = self._forward(self.prompt_ids[None, :], None, 0)  # (1, P, V)
        if num_sequences > 1:
            cache.batch_repeat_interleave(num_sequences)
        return logits[:, -1].expand(num_sequences, -1), _DecodeState(cache, self.prompt_length)

    def select_state(self, state: _DecodeState, index: torch.Tensor) -> _DecodeState:
        """The decoding state of rows ``index`` ``(M,)`` (resampling SMC particles): the KV cache is reordered in
        place (``Cache.reorder_cache``), so the state given is not to be used again."""
        state.cache.reorder_cache(index.to(self.device))
        return _DecodeState(state.cache, state.length)

    def step(self, tokens: torch.Tensor, state: _DecodeState) -> tuple[torch.Tensor, _DecodeState]:
        """Feed ``tokens`` ``(N,)``; logits ``(N, V)`` of the next one. The state's cache is updated in place."""
        logits, cache = self._forward(self.model_ids(tokens)[:, None], state.cache, state.length)  # (N, 1, V)
        return logits[:, -1], _DecodeState(cache, state.length + 1)

    # -- fast paths --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_sequences: int, length: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling with the KV cache: LongTensor ``(N, T)`` of continuation tokens.

        Draws exactly as :meth:`AutoregressiveLM.sample` (and a Pyro guide over :meth:`start`/:meth:`step`)
        would with the same generator; no graph is built.

        Example::

            >>> prior.sample(16, 16, generator=torch.Generator().manual_seed(0)).shape
            torch.Size([16, 16])
        """
        if int(num_sequences) < 1 or int(length) < 1:
            raise ValueError(f"num_sequences and length must be >= 1, got {num_sequences} and {length}")
        logits, state = self.start(num_sequences)
        out = torch.empty(num_sequences, length, dtype=torch.long, device=self.device)
        for t in range(length):
            out[:, t] = sample_categorical(logits, generator)
            if t + 1 < length:
                logits, state = self.step(out[:, t], state)
        return out

    def _teacher_forced_logits(self, sequences: torch.Tensor, share_prompt: bool) -> torch.Tensor:
        """Logits ``(N, T, V)`` of every position of ``sequences`` ``(N, T)``: entry ``t`` predicts ``x_t``."""
        if sequences.dim() != 2 or sequences.shape[1] < 1:
            raise ValueError(f"sequences must be (N, T) with T >= 1, got shape {tuple(sequences.shape)}")
        ids = self.model_ids(sequences)  # (N, T) model ids
        num_sequences, length = ids.shape
        if share_prompt:
            first, cache = self._forward(self.prompt_ids[None, :], None, 0)  # (1, P, V)
            first = first[:, -1:].expand(num_sequences, 1, -1)  # (N, 1, V)
            if length == 1:
                return first
            if num_sequences > 1:
                cache.batch_repeat_interleave(num_sequences)
            rest, _ = self._forward(ids[:, :-1], cache, self.prompt_length)  # (N, T-1, V)
            return torch.cat([first, rest], dim=1)
        full = torch.cat([self.prompt_ids.expand(num_sequences, -1), ids], dim=1)  # (N, P+T)
        logits, _ = self._forward(full, None, 0)  # (N, P+T, V)
        return logits[:, self.prompt_length - 1 : -1]  # (N, T, V): position i predicts token i+1

    def token_log_probs(self, sequences: torch.Tensor, *, share_prompt: bool = True) -> torch.Tensor:
        r"""Per-token :math:`\log p(x_t \mid c, x_{<t})` of continuations ``(N, T)``: shape ``(N, T)``.

        One forward pass over the batch (teacher forcing), differentiable.

        :param bool share_prompt: run the prompt once at batch 1 and the continuations on its repeated KV cache
            (default, cheaper); ``False`` runs one pass over ``[prompt; x]`` for every row. Equal up to float
            rounding.

        Example::

            >>> prior.token_log_probs(x).shape == x.shape
            True
        """
        logits = self._teacher_forced_logits(sequences, share_prompt)  # (N, T, V)
        x = sequences.to(self.device)
        # log softmax at the chosen token only: logit - logsumexp
        return logits.gather(-1, x[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (N, T)

    def next_token_log_probs(self, sequences: torch.Tensor, *, share_prompt: bool = True) -> torch.Tensor:
        r"""The next-token distribution at every position, :math:`\log p(\cdot \mid c, x_{<t})`: ``(N, T, V)``.

        One teacher-forced pass on the prompt's shared cache (as :meth:`token_log_probs`), differentiable; the
        last token of each row is never read.

        Example::

            >>> words.next_token_log_probs(torch.tensor([[0, 1, 2]])).exp().sum(-1)   # renormalized over K = 3
            tensor([[1.0000, 1.0000, 1.0000]])
        """
        return torch.log_softmax(self._teacher_forced_logits(sequences, share_prompt), dim=-1)  # (N, T, V)

    # -- text --------------------------------------------------------------------------
    def decode(self, sequences: torch.Tensor, *, stop_at_eos: bool = True) -> list[str]:
        """Continuations ``(N, T)`` as text, special tokens dropped (vocabulary indices are mapped to model ids).

        :param bool stop_at_eos: cut each continuation at its first end-of-sequence token, so text the model
            writes after ending its answer does not count.
        :raises ValueError: without a tokenizer.

        Example::

            >>> ids = tokenizer(" the movie", add_special_tokens=False)["input_ids"]
            >>> prior.decode(torch.tensor([ids + [tokenizer.eos_token_id] + ids]))
            [' the movie']
        """
        self._need_tokenizer("decode")
        eos = getattr(self.tokenizer, "eos_token_id", None)
        rows = []
        for row in self.model_ids(sequences.detach()).cpu().tolist():
            if stop_at_eos and eos is not None and eos in row:
                row = row[: row.index(eos)]
            rows.append(row)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    # -- policies ----------------------------------------------------------------------
    def frozen(self) -> HFCausalLM:
        """This LM with gradients switched off; returns ``self``.

        The adapter's weights become its own parameter objects over the same storage, without gradients: the
        caller's model keeps its ``requires_grad`` flags.
        """
        memo: dict[int, nn.Parameter] = {}
        for module in self.model.modules():
            for key, p in list(module.named_parameters(recurse=False)):
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
                setattr(module, key, memo[id(p)])
        return self

    def trainable_copy(self, lora: LoRASettings | None | str = "default", *, seed: int = 0) -> HFCausalLM:
        r"""A policy initialized at this LM: LoRA adapters on the shared base weights (or a full copy).

        The copy's module tree and parameter objects are new, but every base weight is a view of this LM's
        storage (no memory is duplicated) that does not require gradients; only the adapters' :math:`A, B` (and
        what ``bias`` / ``modules_to_save`` ask for, as the policy's own copies) require gradients. The caller's
        model and its ``requires_grad`` flags are untouched. :math:`B = 0` at first, so the policy's
        log-probabilities equal the prior's. The vocabulary and prompt are the same.

        :param lora: the adapter; ``"default"`` uses this LM's ``lora`` setting. ``None``: a full deep copy with
            every weight trainable.
        :param int seed: seeds the adapters' :math:`A` (uniform on :math:`\pm 1/\sqrt{d_\text{in}}`, peft's
            default law); the global RNG streams are left untouched, so two copies are identical.
        :raises ImportError: one line, when ``peft`` is not installed.
        :raises ValueError: one line, when no adapter fits the settings (names what was tried and the fix).

        Example::

            >>> attention = ("q_proj", "k_proj", "v_proj", "o_proj")
            >>> policy = prior.trainable_copy(LoRASettings(rank=4, target_modules=attention))
            >>> sum(p.numel() for p in policy.parameters() if p.requires_grad)
            460800
        """
        lora = self.lora if isinstance(lora, str) and lora == "default" else lora
        if lora is None:
            policy = HFCausalLM(copy.deepcopy(self.model), self.tokenizer, self.prompt_ids.cpu(), lora=None)
            policy.to(self.device)
            for p in policy.parameters():
                p.requires_grad_(True)
            return policy
        if not isinstance(lora, LoRASettings):
            raise ValueError(f"lora must be a LoRASettings, None or 'default', got {type(lora).__name__}")
        base = _share_weights_copy(self.model, own_parameters=True)  # views of our storage, no gradients
        adapted = inject_lora(base, lora, device=self.device, seed=seed)
        return HFCausalLM(adapted, self.tokenizer, self.prompt_ids.cpu(), device=self.device, lora=lora)


def chat_prompt(tokenizer, question: str) -> str:
    """``question`` in the tokenizer's chat template, ending where the assistant's answer begins."""
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
