r"""A task: the prior :math:`\pi_0`, the reward :math:`r`, the KL coefficient :math:`\beta` and the length :math:`T`.

Together they define the target of KL-regularized RL, the posterior

.. math:: \pi^*(x) = \pi_0(x)\, e^{r(x)/\beta} / Z, \qquad x \in \{0..V-1\}^T.

A :class:`Task` is checked when it is made: a bad β, length or reward raises :class:`ValueError`
naming the problem, before any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .lm import AutoregressiveLM, TabularPolicy, num_prefixes
from .lm.hf import HFCausalLM, LoRASettings

__all__ = [
    "Task",
    "RewardError",
    "BayesKLRLWarning",
    "DEFAULT_MAX_ENUMERATION",
    "MAX_TABULAR_LOGITS",
    "POLICY_KINDS",
    "check_rewards",
    "resolve_policy_kind",
]

#: the largest number of sequences exact enumeration visits unless told otherwise (4**11)
DEFAULT_MAX_ENUMERATION = 4_194_304

#: the policy kinds :meth:`Task.make_policy` takes ("copy" is another name for "full")
POLICY_KINDS = ("auto", "tabular", "full", "lora", "copy")

#: the largest table (prefixes × V logits) ``"auto"`` picks a tabular policy for
MAX_TABULAR_LOGITS = 2_000_000

RewardFn = Callable[[torch.Tensor], torch.Tensor]


class BayesKLRLWarning(UserWarning):
    """Warnings this package raises (the test suite turns them into errors)."""


class RewardError(ValueError):
    """The reward function returned something that is not a valid ``(N,)`` float tensor."""


def check_rewards(rewards, num_sequences: int, *, where: str = "reward") -> torch.Tensor:
    """Validate a reward output: a floating tensor ``(N,)`` whose values are finite or −inf.

    :raises RewardError: naming the problem.
    """
    if not isinstance(rewards, torch.Tensor):
        raise RewardError(
            f"{where} must return a torch.Tensor of shape ({num_sequences},), got {type(rewards).__name__}"
        )
    if not rewards.is_floating_point():
        raise RewardError(f"{where} must return a floating-point tensor, got dtype {rewards.dtype}")
    if tuple(rewards.shape) != (num_sequences,):
        raise RewardError(
            f"{where} must return shape ({num_sequences},) for {num_sequences} sequences, got {tuple(rewards.shape)}"
        )
    if torch.isnan(rewards).any():
        raise RewardError(f"{where} returned NaN for {int(torch.isnan(rewards).sum())} of {num_sequences} sequences")
    if (rewards == math.inf).any():
        raise RewardError(f"{where} returned +inf; rewards must be finite or -inf (a hard constraint)")
    return rewards


@dataclass(frozen=True)
class Task:
    r"""The posterior :math:`\pi^* \propto \pi_0 e^{r/\beta}` over sequences of ``length`` tokens.

    :param prior: the reference LM :math:`\pi_0`.
    :param reward: ``LongTensor (N, T) -> FloatTensor (N,)``; values finite or ``-inf`` (a hard constraint).
    :param float beta: the KL coefficient, finite and > 0.
    :param int length: number of tokens :math:`T` per sequence, ≥ 1.
    :param str name: a short name used in outputs.
    :param decode: optional ``LongTensor (N, T) -> list[str]`` for word tasks.
    :param reward_max: optional declared upper bound :math:`r_{\max} \ge r(x)` for every sequence (a binary
        reward: 1; a hard constraint: 0). It makes exact posterior draws possible by rejection from the prior
        (:func:`~bayes_klrl.infer.bounds.exact_posterior_draws`), and so an upper bound on :math:`\log Z` on
        tasks too large to enumerate; a reward above it is an error naming the value.

    Example::

        >>> prior = MarkovLM.random(4, seed=0)
        >>> task = Task(prior=prior, reward=lambda x: (x == 0).sum(-1).float(), beta=0.5, length=3)
        >>> task.num_sequences
        64
    """

    prior: AutoregressiveLM
    reward: RewardFn
    beta: float
    length: int
    name: str = "task"
    decode: Callable[[torch.Tensor], list[str]] | None = None
    reward_max: float | None = None

    def __post_init__(self):
        if not isinstance(self.prior, AutoregressiveLM):
            raise ValueError(f"prior must be a bayes_klrl.lm.AutoregressiveLM, got {type(self.prior).__name__}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)):
            raise ValueError(f"beta must be a number, got {self.beta!r}")
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ValueError(f"beta must be finite and > 0, got {self.beta}")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length must be an integer >= 1, got {self.length!r}")
        if not callable(self.reward):
            raise ValueError(f"reward must be callable, got {type(self.reward).__name__}")
        object.__setattr__(self, "beta", float(self.beta))
        if self.reward_max is not None:
            if isinstance(self.reward_max, bool) or not isinstance(self.reward_max, (int, float)):
                raise ValueError(f"reward_max must be a number or None, got {self.reward_max!r}")
            if not math.isfinite(self.reward_max):
                raise ValueError(f"reward_max must be finite, got {self.reward_max}")
            object.__setattr__(self, "reward_max", float(self.reward_max))
        # the prior is left as given (its requires_grad flags are the caller's): every evaluation of it in the
        # package runs without gradients. One probe call so a wrong shape, dtype or NaN is caught before any run.
        with torch.no_grad():
            probe = self.prior.sample(4, self.length, generator=torch.Generator(self.prior.device).manual_seed(0))
        self.rewards(probe)

    @property
    def vocab_size(self) -> int:
        return self.prior.vocab_size

    @property
    def num_sequences(self) -> int:
        """Size of the sequence space, :math:`V^T` (a Python int, never overflows)."""
        return self.vocab_size**self.length

    def is_enumerable(self, max_sequences: int = DEFAULT_MAX_ENUMERATION) -> bool:
        return self.num_sequences <= max_sequences

    def rewards(self, sequences: torch.Tensor) -> torch.Tensor:
        """:math:`r(x)`, checked: ``(N,)``, floating, finite or −inf."""
        try:
            out = self.reward(sequences)
        except RewardError:
            raise
        except Exception as exc:  # a user's reward raising is reported with its message
            raise RewardError(f"reward function raised {type(exc).__name__}: {exc}") from exc
        out = check_rewards(out, sequences.shape[0])
        if self.reward_max is not None:
            above = out > self.reward_max
            if above.any():
                raise RewardError(
                    f"reward {float(out[above].max()):.6g} exceeds the task's declared reward_max {self.reward_max:g}"
                )
        return out

    def log_likelihood(self, sequences: torch.Tensor) -> torch.Tensor:
        r""":math:`r(x)/\beta`, shape ``(N,)``."""
        return self.rewards(sequences) / self.beta

    def fingerprint(self, num_probes: int = 64) -> str:
        r"""A short hash of :math:`\log\pi_0` and :math:`r` on ``num_probes`` fixed sequences (uniform draws with
        seed 0), rounded to 6 significant digits: a checkpoint records it, so a resume after the prior or the
        reward changed is refused.

        Example::

            >>> task.fingerprint() == task.replace(beta=task.beta).fingerprint()
            True
        """
        generator = torch.Generator().manual_seed(0)
        probes = torch.randint(self.vocab_size, (num_probes, self.length), generator=generator)
        probes = probes.to(self.prior.device)
        with torch.no_grad():
            values = torch.stack([self.prior.log_prob(probes).double().cpu(), self.rewards(probes).double().cpu()])
        digest = hashlib.sha256()
        digest.update(f"{self.vocab_size},{self.length},{self.beta!r}".encode())
        digest.update(" ".join(f"{v:.6g}" for v in values.reshape(-1).tolist()).encode())
        return digest.hexdigest()[:16]

    def replace(self, **changes) -> Task:
        """A copy with some fields changed (validated again), e.g. ``task.replace(beta=0.1)``."""
        return dataclasses.replace(self, **changes)

    def make_policy(self, kind: str = "auto", *, lora: LoRASettings | None = None) -> AutoregressiveLM:
        r"""A trainable policy initialized at the prior (:math:`q = \pi_0` before training).

        :param str kind: one of :data:`POLICY_KINDS`:

            - ``"tabular"``: one row of logits per prefix (:class:`~bayes_klrl.lm.TabularPolicy`): can represent
              :math:`\pi^*` exactly;
            - ``"full"`` (also ``"copy"``): a copy of the prior's own architecture with every weight trainable;
            - ``"lora"``: for a Hugging Face prior (:class:`~bayes_klrl.lm.hf.HFCausalLM`) only, LoRA adapters on
              weights shared with the prior;
            - ``"auto"``: ``"lora"`` for a Hugging Face prior (never a table in place of the model), else
              ``"tabular"`` when its table holds at most :data:`MAX_TABULAR_LOGITS` logits, else ``"full"``.
              :func:`resolve_policy_kind` says which.
        :param lora: the adapter of ``"lora"`` (default: the prior's ``lora`` setting, or
            :class:`~bayes_klrl.lm.hf.LoRASettings` ``()`` when it has none).
        :raises ValueError: one line, for an unknown kind, ``"lora"`` on another prior, or ``lora=`` with another
            kind.

        The prior itself is never changed (its ``requires_grad`` flags stay as the caller set them).

        Example::

            >>> type(task.make_policy()).__name__, resolve_policy_kind(task)
            ('TabularPolicy', 'tabular')
            >>> type(task.make_policy("full")).__name__
            'MarkovLM'
        """
        resolved = resolve_policy_kind(self, kind)
        if lora is not None and resolved != "lora":
            raise ValueError(f"lora= settings apply to the 'lora' policy kind only, not {resolved!r}")
        if resolved == "tabular":
            return TabularPolicy(self.prior, self.length)
        if resolved == "lora":
            settings = lora if lora is not None else (self.prior.lora or LoRASettings())
            return self.prior.trainable_copy(settings)
        if isinstance(self.prior, HFCausalLM):
            return self.prior.trainable_copy(None)  # every weight, no adapter
        return self.prior.trainable_copy()


def resolve_policy_kind(task: Task, kind: str = "auto") -> str:
    """The policy kind :meth:`Task.make_policy` builds for ``kind``: ``"tabular"``, ``"full"`` or ``"lora"``.

    ``"auto"`` gives ``"lora"`` for a Hugging Face prior, else ``"tabular"`` when the table (one row of
    :math:`V` logits per prefix) holds at most :data:`MAX_TABULAR_LOGITS` logits, else ``"full"``; ``"copy"``
    gives ``"full"``.

    :raises ValueError: one line, for a kind not in :data:`POLICY_KINDS`, or ``"lora"`` on a prior that is not
        a Hugging Face LM.

    Example::

        >>> resolve_policy_kind(task, "auto"), resolve_policy_kind(task, "copy")
        ('tabular', 'full')
    """
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy kind {kind!r}; choose one of {', '.join(POLICY_KINDS)}")
    hf = isinstance(task.prior, HFCausalLM)
    if kind == "auto":
        if hf:
            return "lora"
        fits = num_prefixes(task.vocab_size, task.length) * task.vocab_size <= MAX_TABULAR_LOGITS
        return "tabular" if fits else "full"
    if kind == "lora" and not hf:
        raise ValueError(
            f"policy kind 'lora' needs a Hugging Face prior (HFCausalLM), not {type(task.prior).__name__}: "
            "use 'tabular' or 'full'"
        )
    return "full" if kind == "copy" else kind
