r"""KL-regularized RL written as a Pyro program.

The model draws each token from the prior and then observes an event whose likelihood is
:math:`e^{r(x)/\beta}`:

.. math::

    x_t \sim \pi_0(\cdot \mid x_{<t}),\ t = 0..T-1, \qquad \log p(y{=}1 \mid x) = r(x)/\beta,

so its posterior is :math:`\pi^*(x) \propto \pi_0(x) e^{r(x)/\beta}` and, for a guide :math:`q`,

.. math::

    \mathrm{ELBO}(q) = \mathbb{E}_q[\log \pi_0(x) + r(x)/\beta - \log q(x)] = J(q)/\beta = \log Z - \mathrm{KL}(q \| \pi^*).

Site names (stable): ``"x_0" .. "x_{T-1}"`` for the tokens (:func:`token_site`), ``"reward"`` for the factor,
``"sequences"`` for the plate. :class:`PolicyGuide` samples the same token sites from a policy.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from .lm import AutoregressiveLM
from .task import Task

__all__ = ["model", "PolicyGuide", "token_site", "REWARD_SITE", "PLATE"]

REWARD_SITE = "reward"
PLATE = "sequences"


def token_site(t: int) -> str:
    """Name of the sample site of the token at position ``t`` (0-based)."""
    return f"x_{t}"


def _sample_tokens(lm: AutoregressiveLM, length: int, num_sequences: int, sample_kwargs=None) -> torch.Tensor:
    logits, state = lm.start(num_sequences)
    tokens = []
    for t in pyro.markov(range(length)):
        x_t = pyro.sample(token_site(t), dist.Categorical(logits=logits), **(sample_kwargs or {}))
        tokens.append(x_t)
        if t + 1 < length:
            logits, state = lm.step(x_t, state)
    return torch.stack(tokens, dim=-1)  # (N, T)


def model(task: Task, num_sequences: int) -> torch.Tensor:
    r"""The prior :math:`\pi_0` over ``num_sequences`` independent sequences, then ``pyro.factor(r/β)``.

    :returns: the sequences, LongTensor ``(N, T)``.

    Example::

        >>> trace = pyro.poutine.trace(model).get_trace(task, 8)
        >>> trace.nodes["x_0"]["value"].shape, trace.nodes["reward"]["fn"].batch_shape
        (torch.Size([8]), torch.Size([8]))
    """
    with pyro.plate(PLATE, num_sequences):
        sequences = _sample_tokens(task.prior, task.length, num_sequences)
        pyro.factor(REWARD_SITE, task.log_likelihood(sequences))
    return sequences


class PolicyGuide:
    """The guide :math:`q`: a policy sampling the model's token sites.

    Called with the model's arguments. The policy is registered with ``pyro.module("policy", …)`` so
    :class:`pyro.infer.SVI` optimizes its parameters.

    :param policy: an :class:`~bayes_klrl.lm.AutoregressiveLM` with trainable parameters.
    :param dict sample_infer: optional ``infer`` dict put on every token site (e.g. a TraceGraph baseline).
    """

    def __init__(self, policy: AutoregressiveLM, sample_infer: dict | None = None):
        self.policy = policy
        self.sample_infer = sample_infer

    def __call__(self, task: Task, num_sequences: int) -> torch.Tensor:
        pyro.module("policy", self.policy)
        kwargs = {"infer": dict(self.sample_infer)} if self.sample_infer else None
        with pyro.plate(PLATE, num_sequences):
            return _sample_tokens(self.policy, task.length, num_sequences, kwargs)
