r"""The sequence space: the :math:`V^T` token sequences and their integer codes (lexicographic order).

A sequence :math:`x = (x_1..x_T)` over a vocabulary of size :math:`V` has the code
:math:`c(x) = \sum_t x_t V^{T-t}`, so codes ``0 .. V^T - 1`` list the sequences in the order
:func:`~bayes_klrl.exact.enumerate_sequences` gives them. This is the one encoding of the package (tabular
policies, exact enumeration, the histograms of MCMC and importance draws); codes are LongTensors, and a space too
large for int64 is refused.

Example::

    >>> sequence_codes(torch.tensor([[1, 0, 2]]), 3)
    tensor([11])
    >>> sequences_from_codes(torch.tensor([11]), 3, 3)
    tensor([[1, 0, 2]])
"""

from __future__ import annotations

import torch

__all__ = ["sequence_codes", "sequences_from_codes"]

#: the largest integer code a LongTensor holds
_MAX_CODE = 2**63 - 1


def _check_code_range(vocab_size: int, length: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length!r}")
    if vocab_size**length - 1 > _MAX_CODE:
        raise ValueError(
            f"V^T = {vocab_size}^{length} sequences do not fit in int64 codes (the largest code is 2^63 - 1)"
        )


def sequence_codes(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    r"""The lexicographic index of each sequence: :math:`c(x) = \sum_{t=1}^T x_t V^{T-t}`, LongTensor ``(N,)``.

    Computed by Horner's rule :math:`c \leftarrow cV + x_t` in exact integer arithmetic; the inverse of
    :func:`sequences_from_codes`.

    :param tokens: LongTensor ``(N, T)`` with entries in ``0..V-1`` (``T = 0`` gives code 0).
    :param int vocab_size: :math:`V`.
    :raises ValueError: if :math:`V^T` codes do not fit in int64, or ``tokens`` is not ``(N, T)`` integers.

    Example::

        >>> sequence_codes(torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]), 2)
        tensor([0, 1, 2, 3])
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError("tokens must be an integer tensor of shape (N, T)")
    length = tokens.shape[1]
    _check_code_range(vocab_size, length)
    codes = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)  # (N,)
    for t in range(length):
        codes = codes * vocab_size + tokens[:, t].long()
    return codes


def sequences_from_codes(codes: torch.Tensor, vocab_size: int, length: int) -> torch.Tensor:
    r"""The sequences of lexicographic indices ``codes`` ``(N,)``: :math:`x_t = \lfloor c / V^{T-t}\rfloor \bmod V`,
    LongTensor ``(N, T)`` on the device of ``codes``; the inverse of :func:`sequence_codes`.

    :raises ValueError: if :math:`V^T` codes do not fit in int64.

    Example::

        >>> sequences_from_codes(torch.arange(4), 2, 2)
        tensor([[0, 0],
                [0, 1],
                [1, 0],
                [1, 1]])
    """
    _check_code_range(vocab_size, length)
    codes = torch.as_tensor(codes, dtype=torch.long)
    powers = torch.tensor([vocab_size ** (length - 1 - t) for t in range(length)], dtype=torch.long)  # (T,)
    return (codes.reshape(-1, 1) // powers.to(codes.device)) % vocab_size  # (N, T)


# -- the record ----------------------------------------------------------------------------------------
