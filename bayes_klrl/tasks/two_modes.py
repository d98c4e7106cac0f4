r"""A toy task whose posterior has two separated modes (the forward- vs reverse-KL experiment, DPG tests)."""

from __future__ import annotations

import torch

from ..lm import CategoricalLM
from ..task import Task

__all__ = ["two_modes_task"]


def two_modes_task(beta: float = 0.35, vocab_size: int = 4, length: int = 6, tilt: float = 0.15) -> Task:
    r"""A small enumerable task whose posterior has two separated modes.

    Prior: i.i.d. tokens, :math:`\pi_0(x) = \prod_t \mathrm{softmax}(\ell)_{x_t}` with :math:`\ell = (\text{tilt},
    0, \dots, 0)`. Reward: :math:`r(x) = \max(\#\{t: x_t = 0\}, \#\{t: x_t = V-1\})`, high for sequences that
    stay with token 0 or with token V−1. With the defaults (V = 4, T = 6, 4,096 sequences, β = 0.35) the
    posterior puts 0.56 of its mass within one token of ``0 0 0 0 0 0`` (mode A), 0.25 within one token of
    ``3 3 3 3 3 3`` (mode B) and 0.19 elsewhere.

    Example::

        >>> task = two_modes_task()
        >>> exact_posterior(task).top_k(2)[0]
        tensor([[0, 0, 0, 0, 0, 0],
                [3, 3, 3, 3, 3, 3]])
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    last = vocab_size - 1

    def reward(x: torch.Tensor) -> torch.Tensor:
        return torch.maximum((x == 0).sum(-1), (x == last).sum(-1)).to(torch.get_default_dtype())

    logits = torch.zeros(vocab_size)
    logits[0] = tilt
    return Task(prior=CategoricalLM(logits), reward=reward, beta=beta, length=length, name="two_modes")
