r"""A tiny causal transformer LM in the style of nanoGPT: a neural reference LM :math:`\pi_0` small enough to enumerate.

The model reads the inputs :math:`u = (\mathrm{BOS}, x_1, \dots, x_{T-1})` and predicts :math:`x_t` from
position :math:`t`. With learned token and position embeddings :math:`W_e, P` and :math:`L` pre-LayerNorm blocks,

.. math::

    h^{(0)}_t &= W_e[u_t] + P_t, \\
    a^{(l)} &= h^{(l-1)} + \mathrm{Attn}(\mathrm{LN}(h^{(l-1)})), \qquad
    h^{(l)} = a^{(l)} + \mathrm{MLP}(\mathrm{LN}(a^{(l)})), \\
    p(x_t \mid x_{<t}) &= \mathrm{softmax}\big(W_o\,\mathrm{LN}(h^{(L)}_t)\big),

where :math:`\mathrm{Attn}` is multi-head self-attention masked so that position :math:`t` sees positions
:math:`\le t`. BOS is the extra input token with index :math:`V`; it is never an output, so :meth:`start`
hands out the logits of the first token. :meth:`step` keeps the attention keys and values of the positions read
so far (a KV cache) and runs the new position only; :meth:`token_log_probs` scores a batch of whole sequences
in one teacher-forced pass.

A checkpoint (:meth:`TinyTransformerLM.save`, :meth:`TinyTransformerLM.load`) is one small file holding the
config, the ``state_dict`` and optional plain-value metadata.

References:

- A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
- A. Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2: pre-LayerNorm), 2019.
- A. Karpathy, nanoGPT (https://github.com/karpathy/nanoGPT): the layout followed here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import AutoregressiveLM

__all__ = ["TinyTransformerLM", "TransformerConfig"]

#: the ``format`` tag written into checkpoints
CHECKPOINT_FORMAT = "bayes_klrl.TinyTransformerLM/1"


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _unique_rows(rows: torch.Tensor, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows ``(U, t)`` of ``rows`` ``(N, t)`` (entries in ``0 .. base-1``) and ``inverse`` ``(N,)``."""
    width = rows.shape[1]
    if base**width > torch.iinfo(torch.long).max:  # codes would overflow: sort the rows themselves
        return torch.unique(rows, dim=0, return_inverse=True)
    powers = torch.tensor([base ** (width - 1 - s) for s in range(width)], dtype=torch.long, device=rows.device)
    codes, inverse = torch.unique((rows * powers).sum(-1), return_inverse=True)  # (U,), (N,)
    return (codes[:, None] // powers) % base, inverse


def _check_tokens(tokens: torch.Tensor, name: str, vocab_size: int) -> None:
    """``tokens`` must be an integer tensor ``(N, t)`` with entries in ``0 .. vocab_size-1``."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex():
        found = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{name} must be an integer tensor of shape (N, t), got {found}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in 0..{vocab_size - 1}, got {int(tokens.min())}..{int(tokens.max())}")


def _check_plain(value: Any, where: str) -> None:
    """Refuse values ``torch.load(weights_only=True)`` cannot read back: only str, numbers, None, lists, dicts."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} keys must be strings, got {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif value is not None and type(value) not in (str, int, float, bool):
        raise ValueError(f"{where} must hold plain values (str, int, float, bool, None, list, dict), got {value!r}")


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a :class:`TinyTransformerLM`.

    :param int vocab_size: number of output tokens :math:`V` (BOS is an extra input token, index ``V``).
    :param int max_length: the longest sequence :math:`T` the model scores (number of positions).
    :param int d_model: width of the residual stream.
    :param int n_layer: number of transformer blocks.
    :param int n_head: attention heads per block; must divide ``d_model``.
    :param int mlp_ratio: hidden width of the MLP is ``mlp_ratio * d_model``.

    Example::

        >>> TransformerConfig(vocab_size=16, max_length=5).d_model
        32
    """

    vocab_size: int
    max_length: int
    d_model: int = 32
    n_layer: int = 2
    n_head: int = 2
    mlp_ratio: int = 4

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _positive_int(getattr(self, field.name), field.name)
        if self.d_model % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide d_model={self.d_model}")


class CausalSelfAttention(nn.Module):
    r"""Multi-head self-attention, :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h} + M)V` with the causal mask :math:`M`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        causal = torch.ones(config.max_length, config.max_length, dtype=torch.bool).tril()
        self.register_buffer("causal", causal, persistent=False)  # (T_max, T_max)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        H = self.n_head
        q, k, v = self.qkv(h).split(D, dim=-1)  # 3 x (B, T, D)
        q = q.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, D/H)
        k = k.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, D/H)
        v = v.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, D/H)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)  # (B, H, T, T)
        scores = scores.masked_fill(~self.causal[:T, :T], float("-inf"))
        y = scores.softmax(dim=-1) @ v  # (B, H, T, D/H)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y)

    def forward_last(self, h: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None):
        """Attention output at one new position ``h`` ``(B, 1, D)`` given the keys and values of the earlier
        positions ``cache`` (``None`` or two ``(B, H, t, D/H)``); returns the output and the extended cache."""
        B, _, D = h.shape
        H = self.n_head
        q, k, v = (z.view(B, 1, H, D // H).transpose(1, 2) for z in self.qkv(h).split(D, dim=-1))  # (B, H, 1, D/H)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, H, t+1, D/H)
            v = torch.cat([cache[1], v], dim=2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)  # (B, H, 1, t+1): the new position sees all
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, 1, D)  # (B, 1, D)
        return self.proj(y), (k, v)


class MLP(nn.Module):
    r""":math:`W_2\,\mathrm{GELU}(W_1 h)`, position-wise."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(h)))


class Block(nn.Module):
    r"""A pre-LayerNorm block: :math:`a = h + \mathrm{Attn}(\mathrm{LN}(h))`, :math:`a + \mathrm{MLP}(\mathrm{LN}(a))`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln_attn(h))  # (B, T, D)
        return h + self.mlp(self.ln_mlp(h))  # (B, T, D)

    def forward_last(self, h: torch.Tensor, cache):
        """The block at one new position ``h`` ``(B, 1, D)`` with the attention cache of the earlier ones."""
        a, cache = self.attn.forward_last(self.ln_attn(h), cache)
        h = h + a
        return h + self.mlp(self.ln_mlp(h)), cache


class TinyTransformerLM(AutoregressiveLM):
    r"""A small causal transformer over ``config.vocab_size`` tokens, sequences of at most ``config.max_length``.

    Parameters are drawn from ``seed`` alone (normal with s.d. 0.02, residual projections scaled by
    :math:`1/\sqrt{2L}`, as in GPT-2), never from the global RNG.

    :param TransformerConfig config: the shape.
    :param int seed: seed of the initialization.

    Example::

        >>> lm = TinyTransformerLM(TransformerConfig(vocab_size=4, max_length=3), seed=0)
        >>> x = lm.sample(2, 3, generator=torch.Generator().manual_seed(0))
        >>> lm.log_prob(x).shape
        torch.Size([2])
    """

    def __init__(self, config: TransformerConfig, *, seed: int = 0):
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
        super().__init__(config.vocab_size)
        self.config = config
        self.bos = config.vocab_size  # the extra input token
        self.token_embedding = nn.Embedding(config.vocab_size + 1, config.d_model)
        self.position_embedding = nn.Embedding(config.max_length, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.metadata: dict[str, Any] = {}
        self._init_parameters(int(seed))

    @torch.no_grad()
    def _init_parameters(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(".proj") else 0.02
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()

    @property
    def num_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())

    # -- the transformer ---------------------------------------------------------------
    def forward(self, prefixes: torch.Tensor) -> torch.Tensor:
        r"""Next-token logits after every prefix of ``prefixes`` ``(B, t)``: ``(B, t+1, V)``.

        Entry ``[:, s]`` holds the logits of :math:`x_{s+1}` given :math:`x_{1..s}` (``s = 0``: given BOS only).

        :raises ValueError: if ``t + 1 > max_length`` or a token is outside ``0 .. V-1``.
        """
        _check_tokens(prefixes, "prefixes", self.vocab_size)
        B, t = prefixes.shape
        if t + 1 > self.config.max_length:
            raise ValueError(
                f"this TinyTransformerLM scores at most max_length={self.config.max_length} tokens; "
                f"a prefix of {t} tokens asks for position {t + 1}"
            )
        bos = torch.full((B, 1), self.bos, dtype=torch.long, device=self.device)
        inputs = torch.cat([bos, prefixes.to(device=self.device, dtype=torch.long)], dim=1)  # (B, t+1)
        positions = torch.arange(t + 1, device=self.device)  # (t+1,)
        h = self.token_embedding(inputs) + self.position_embedding(positions)  # (B, t+1, D)
        for block in self.blocks:
            h = block(h)  # (B, t+1, D)
        return self.head(self.ln_final(h))  # (B, t+1, V)

    # -- the AutoregressiveLM protocol --------------------------------------------------
    def _advance(self, tokens: torch.Tensor, position: int, caches):
        """Run one input position (``tokens`` ``(N,)`` at ``position``) through every block with the caches."""
        if position >= self.config.max_length:
            raise ValueError(
                f"this TinyTransformerLM scores at most max_length={self.config.max_length} tokens; "
                f"a prefix of {position} tokens asks for position {position + 1}"
            )
        pos = torch.full((1,), position, dtype=torch.long, device=self.device)
        h = self.token_embedding(tokens.reshape(-1, 1)) + self.position_embedding(pos)  # (N, 1, D)
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            h, cache = block.forward_last(h, cache)
            new_caches.append(cache)
        return self.head(self.ln_final(h))[:, -1], (position + 1, tuple(new_caches))  # (N, V)

    def start(self, num_sequences: int) -> tuple[torch.Tensor, tuple]:
        """First-token logits ``(N, V)``; the state holds the number of positions read and, per block, the
        attention keys and values of those positions (a KV cache), so each :meth:`step` costs one position."""
        bos = torch.full((int(num_sequences),), self.bos, dtype=torch.long, device=self.device)
        return self._advance(bos, 0, (None,) * len(self.blocks))

    def step(self, tokens: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """Feed ``tokens`` ``(N,)`` at the next position; logits ``(N, V)`` of the token after it."""
        _check_tokens(tokens.reshape(-1, 1), "tokens", self.vocab_size)
        position, caches = state
        return self._advance(tokens.to(device=self.device, dtype=torch.long), position, caches)

    def next_token_logits(self, prefixes: torch.Tensor) -> torch.Tensor:
        return self.forward(prefixes)[:, -1]  # (N, V)

    def token_log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        r"""Per-token :math:`\log p(x_t \mid x_{<t})` ``(N, T)`` in one teacher-forced forward pass.

        Causality means :math:`x_T` is never an input, so sequences that agree on :math:`x_{<T}` share
        one pass: the pass runs over the distinct prefixes only, which makes exhaustive enumeration
        (``V`` sequences per prefix) ``V`` times cheaper and leaves the result unchanged.
        """
        _check_tokens(sequences, "sequences", self.vocab_size)
        if sequences.shape[1] < 1:
            raise ValueError(f"sequences must have shape (N, T) with T >= 1, got {tuple(sequences.shape)}")
        sequences = sequences.to(device=self.device, dtype=torch.long)
        prefixes, inverse = _unique_rows(sequences[:, :-1], self.vocab_size)  # (U, T-1), (N,)
        log_probs = torch.log_softmax(self.forward(prefixes), dim=-1)  # (U, T, V)
        return log_probs[inverse].gather(-1, sequences[..., None]).squeeze(-1)  # (N, T)

    def next_token_log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        r"""The next-token distribution at every position, :math:`\log p(\cdot \mid x_{<t})`: ``(N, T, V)``, in
        one teacher-forced pass (:math:`x_T` is never read).

        Example::

            >>> lm = TinyTransformerLM(TransformerConfig(vocab_size=4, max_length=3), seed=0)
            >>> lm.next_token_log_probs(torch.zeros(2, 3, dtype=torch.long)).exp().sum(-1).shape
            torch.Size([2, 3])
        """
        _check_tokens(sequences, "sequences", self.vocab_size)
        if sequences.shape[1] < 1:
            raise ValueError(f"sequences must have shape (N, T) with T >= 1, got {tuple(sequences.shape)}")
        return torch.log_softmax(self.forward(sequences[:, :-1]), dim=-1)  # (N, T, V)

    # -- checkpoints --------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write config, ``state_dict`` and ``metadata`` (plain values only) to ``path`` atomically.

        The file is written next to ``path`` under a temporary name and moved into place with
        :func:`os.replace`, so a reader never sees a half-written checkpoint.

        Example::

            >>> lm = TinyTransformerLM(TransformerConfig(vocab_size=16, max_length=5))
            >>> lm.save(tmp_path / "lm.pt", metadata={"seed": 0})
            PosixPath('.../lm.pt')
        """
        path = Path(path)
        metadata = dict(self.metadata if metadata is None else metadata)
        _check_plain(metadata, "metadata")
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.config),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            "metadata": metadata,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> TinyTransformerLM:
        """Read a checkpoint written by :meth:`save`; its metadata is in ``.metadata``.

        :raises FileNotFoundError: if ``path`` does not exist.
        :raises ValueError: if the file is not a TinyTransformerLM checkpoint.

        Example::

            >>> from bayes_klrl.modelfile import models_dir
            >>> TinyTransformerLM.load(models_dir() / "tiny_transformer.pt").vocab_size
            16
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no TinyTransformerLM checkpoint at '{path}'")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise ValueError(f"'{path}' is not a readable torch checkpoint: {type(exc).__name__}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"'{path}' is not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
        model = cls(TransformerConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        model.metadata = dict(payload.get("metadata", {}))
        return model.to(map_location)
