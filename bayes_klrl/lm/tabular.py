r"""A tabular autoregressive policy over full prefixes: it can represent any distribution on :math:`V^T`.

The posterior :math:`\pi^*(x) \propto \pi_0(x) e^{r(x)/\beta}` is in general not Markov even when
:math:`\pi_0` is, so a policy that must reach it exactly needs one table row of next-token logits
per prefix :math:`x_{<t}`:

.. math:: q(x_t \mid x_{<t}) = \mathrm{softmax}(L[\mathrm{index}(x_{<t})])_{x_t},

with :math:`\sum_{t<T} V^t` rows; the prefixes of length :math:`t` fill rows
:math:`\sum_{s<t} V^s + c(x_{<t})` in the lexicographic order of their code :math:`c`
(:func:`~bayes_klrl.samples.sequence_codes`). Rows start at the prior's log-probabilities, so the policy starts at
:math:`\pi_0` (the usual initialization of RLHF).
"""

from __future__ import annotations

import torch
from torch import nn

from ..sequences import sequence_codes, sequences_from_codes
from .base import AutoregressiveLM

__all__ = ["TabularPolicy", "num_prefixes"]

#: the largest table (rows × V) a TabularPolicy builds without being told otherwise
DEFAULT_MAX_PARAMETERS = 20_000_000


def num_prefixes(vocab_size: int, length: int) -> int:
    """Number of prefixes of length ``0 .. length-1``: :math:`\\sum_{t<T} V^t`."""
    return sum(vocab_size**t for t in range(length))


class TabularPolicy(AutoregressiveLM):
    """One row of logits per prefix, initialized at ``prior``.

    :param prior: the LM whose conditionals initialize the table.
    :param int length: the sequence length :math:`T` the table covers.
    :param int max_parameters: refuse tables larger than this (rows × V).

    Example::

        >>> prior = MarkovLM.random(3, seed=0)
        >>> q = TabularPolicy(prior, length=4)
        >>> x = prior.sample(8, 4)
        >>> torch.allclose(q.log_prob(x), prior.log_prob(x))
        True
    """

    def __init__(self, prior: AutoregressiveLM, length: int, *, max_parameters: int = DEFAULT_MAX_PARAMETERS):
        super().__init__(prior.vocab_size)
        v, length = prior.vocab_size, int(length)
        rows = num_prefixes(v, length)
        if rows * v > max_parameters:
            raise ValueError(
                f"a tabular policy for V={v}, T={length} needs {rows * v:,} logits, above the limit of "
                f"{max_parameters:,}; use a neural policy (prior.trainable_copy()) instead"
            )
        self.length = length
        offsets = [0]
        for t in range(length - 1):
            offsets.append(offsets[-1] + v**t)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        table = []
        with torch.no_grad():
            for t in range(length):
                prefixes = sequences_from_codes(torch.arange(v**t, device=prior.device), v, t)  # (V^t, t)
                table.append(torch.log_softmax(prior.next_token_logits(prefixes).float(), -1))
        self.logits = nn.Parameter(torch.cat(table, dim=0).to(torch.get_default_dtype()))  # (rows, V)

    def _check_position(self, t: int) -> None:
        if t >= self.length:
            raise ValueError(f"this TabularPolicy covers {self.length} positions; position {t} is beyond it")

    def start(self, num_sequences):
        codes = torch.zeros(num_sequences, dtype=torch.long, device=self.logits.device)
        return self.logits[codes], (codes, 0)

    def step(self, tokens, state):
        codes, t = state
        t += 1
        self._check_position(t)
        codes = codes * self.vocab_size + tokens
        return self.logits[self.offsets[t] + codes], (codes, t)

    def _row_indices(self, sequences: torch.Tensor) -> torch.Tensor:
        """Table row of every prefix ``x_{<t}``: ``(N, T)``."""
        n, length = sequences.shape
        self._check_position(length - 1)
        codes = torch.zeros(n, dtype=torch.long, device=sequences.device)
        rows = []
        for t in range(length):
            rows.append(self.offsets[t] + codes)
            codes = codes * self.vocab_size + sequences[:, t]
        return torch.stack(rows, dim=-1)

    def token_log_probs(self, sequences):
        sequences = sequences.to(self.logits.device)
        log_probs = torch.log_softmax(self.logits, -1)  # (rows, V)
        return log_probs[self._row_indices(sequences), sequences]  # (N, T)

    def next_token_log_probs(self, sequences):
        sequences = sequences.to(self.logits.device)
        log_probs = torch.log_softmax(self.logits, -1)  # (rows, V)
        return log_probs[self._row_indices(sequences)]  # (N, T, V)

    def next_token_logits(self, prefixes):
        prefixes = prefixes.to(self.logits.device)
        t = prefixes.shape[1]
        self._check_position(t)
        return self.logits[self.offsets[t] + sequence_codes(prefixes, self.vocab_size)]  # (N, V)
