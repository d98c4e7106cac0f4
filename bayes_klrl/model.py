r"""KL-regularized RL written as a Pyro program.

The model draws each token from the prior and then observes an event whose likelihood is
:math:`e^{r(x)/\beta}`:

.. math::

    x_t \sim \pi_0(\cdot \mid x_{<t}),\ t = 0..T-1, \qquad \log p(y{=}1 \mid x) = r(x)/\beta,

so its posterior is :math:`\pi^*(x) \propto \pi_0(x) e^{r(x)/\beta}` and, for a guide :math:`q`,

.. math::

    \mathrm{ELBO}(q) = \mathbb{E}_q[\log \pi_0(x) + r(x)/\beta - \log q(x)] = J(q)/\beta = \log Z - \mathrm{KL}(q \| \pi^*).

The same program has two layouts of its sample sites (``sites=``), with the same distribution and, for one
seed, the same draws:

- ``"tokens"`` (the default): one :class:`~pyro.distributions.Categorical` site per position, ``"x_0" ..
  "x_{T-1}"`` (:func:`token_site`), each built from the LM's incremental logits. What estimators that read the
  per-site dependency structure need (``TraceGraph_ELBO``'s per-site baselines), and what
  :class:`pyro.infer.Importance` or a reader of the trace sees token by token. In the guide every step's logits
  stay in the autograd graph.
- ``"sequence"``: one site ``"x"`` (:data:`SEQUENCE_SITE`) whose distribution, :class:`SequenceDistribution`, is
  the LM over whole sequences: it samples incrementally without building a graph and scores the sampled
  sequences in one batched teacher-forced pass (``lm.token_log_probs``, one forward on a transformer). The cost
  of a plain-torch RL step; what SVI's leave-one-out estimator uses.

Either way the prior is scored without a graph (``torch.no_grad``): the model never differentiates through
:math:`\pi_0`, whether or not its parameters require gradients. Other stable names: ``"reward"`` for the factor,
``"sequences"`` for the plate.
"""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from .lm import AutoregressiveLM
from .task import Task

__all__ = [
    "PLATE",
    "REWARD_SITE",
    "SEQUENCE_SITE",
    "SITES",
    "PolicyGuide",
    "SequenceDistribution",
    "check_sites",
    "model",
    "token_site",
]

REWARD_SITE = "reward"
PLATE = "sequences"
#: the one sample site of the ``"sequence"`` layout
SEQUENCE_SITE = "x"
#: the layouts of the token sample sites
SITES = ("tokens", "sequence")


def token_site(t: int) -> str:
    """Name of the sample site of the token at position ``t`` (0-based) in the ``"tokens"`` layout."""
    return f"x_{t}"


def check_sites(sites: str) -> str:
    """``sites`` if it is a layout of :data:`SITES`, else a one-line ValueError."""
    if sites not in SITES:
        raise ValueError(f"unknown site layout {sites!r}; choose one of {', '.join(SITES)}")
    return sites


class SequenceDistribution(TorchDistribution):
    r"""An autoregressive LM over whole sequences, as one distribution: batch ``(N,)``, event ``(T,)``.

    .. math:: \log p(x) = \sum_{t=0}^{T-1} \log p(x_t \mid x_{<t}).

    :meth:`sample` draws ancestrally with ``lm.sample`` under ``torch.no_grad`` (it consumes the random stream as
    the ``"tokens"`` layout's Categorical sites do, so one seed gives the same sequences); :meth:`log_prob` is one
    teacher-forced pass ``lm.token_log_probs(x).sum(-1)``, differentiable unless ``differentiable=False``.
    Sampling is not reparameterized: gradients come from the score function :math:`\nabla\log p(x)`.

    :param lm: the :class:`~bayes_klrl.lm.AutoregressiveLM`.
    :param int length: :math:`T`, tokens per sequence.
    :param int num_sequences: :math:`N`, the batch.
    :param bool differentiable: build the autograd graph of the scores (the guide); ``False`` scores under
        ``torch.no_grad`` (the prior).

    Example::

        >>> d = SequenceDistribution(task.prior, task.length, 8, differentiable=False)
        >>> x = d.sample()
        >>> x.shape, d.log_prob(x).shape
        (torch.Size([8, 6]), torch.Size([8]))
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        lm: AutoregressiveLM,
        length: int,
        num_sequences: int,
        *,
        differentiable: bool = True,
        validate_args: bool | None = None,
    ):
        if int(length) < 1 or int(num_sequences) < 1:
            raise ValueError(f"length and num_sequences must be >= 1, got {length} and {num_sequences}")
        self.lm = lm
        self.length = int(length)
        self.num_sequences = int(num_sequences)
        self.differentiable = bool(differentiable)
        super().__init__(torch.Size([self.num_sequences]), torch.Size([self.length]), validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.lm.vocab_size - 1), 1)

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) != self.batch_shape:
            raise NotImplementedError(
                f"a SequenceDistribution of {self.num_sequences} sequences cannot be expanded to {tuple(batch_shape)}"
            )
        return self

    def sample(self, sample_shape=()) -> torch.Tensor:
        """``N`` sequences, LongTensor ``(N, T)``; no graph is built."""
        if torch.Size(sample_shape):
            raise NotImplementedError("SequenceDistribution draws its batch of N sequences; sample_shape must be ()")
        with torch.no_grad():
            return self.lm.sample(self.num_sequences, self.length)

    def _grad_mode(self):
        return torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled())

    def token_log_probs(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x_t \mid x_{<t})`, ``(N, T)``: one teacher-forced pass."""
        with self._grad_mode():
            return self.lm.token_log_probs(value)

    def next_token_log_probs(self, value: torch.Tensor) -> torch.Tensor:
        r"""The whole next-token distribution at every prefix of ``value``: :math:`\log p(v \mid x_{<t})`,
        ``(N, T, V)`` (what an exact per-token KL needs)."""
        with self._grad_mode():
            return self.lm.next_token_log_probs(value)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x)`, ``(N,)``."""
        if self._validate_args:
            self._validate_sample(value)
        return self.token_log_probs(value).sum(-1)


def _sample_tokens(
    lm: AutoregressiveLM, length: int, num_sequences: int, sample_kwargs=None, *, differentiable: bool = True
) -> torch.Tensor:
    grad = differentiable and torch.is_grad_enabled()
    with torch.set_grad_enabled(grad):
        logits, state = lm.start(num_sequences)
    tokens = []
    for t in pyro.markov(range(length)):
        logits = logits if grad else logits.detach()  # a view made under no_grad may still require grad
        x_t = pyro.sample(token_site(t), dist.Categorical(logits=logits), **(sample_kwargs or {}))
        tokens.append(x_t)
        if t + 1 < length:
            with torch.set_grad_enabled(grad):
                logits, state = lm.step(x_t, state)
    return torch.stack(tokens, dim=-1)  # (N, T)


def _sample_sequences(
    lm: AutoregressiveLM, length: int, num_sequences: int, sites: str, sample_kwargs=None, *, differentiable: bool
) -> torch.Tensor:
    if check_sites(sites) == "sequence":
        fn = SequenceDistribution(lm, length, num_sequences, differentiable=differentiable)
        return pyro.sample(SEQUENCE_SITE, fn, **(sample_kwargs or {}))
    return _sample_tokens(lm, length, num_sequences, sample_kwargs, differentiable=differentiable)


@functools.lru_cache(maxsize=64)
def sequences_plate(num_sequences: int) -> pyro.plate:
    """The ``"sequences"`` plate of ``num_sequences`` independent sequences, built once per size and re-entered by
    every call of :func:`model` and :class:`PolicyGuide` (a plate sends its subsample site when it is built; the
    full plate's indices never change, and the traces would drop that site anyway). It is built under
    ``poutine.block``, so whichever trace is running when it is first needed does not record that site."""
    with pyro.poutine.block():
        return pyro.plate(PLATE, num_sequences)


def model(task: Task, num_sequences: int, *, sites: str = "tokens") -> torch.Tensor:
    r"""The prior :math:`\pi_0` over ``num_sequences`` independent sequences, then ``pyro.factor(r/β)``.

    :param str sites: ``"tokens"`` (sites ``x_0 .. x_{T-1}``) or ``"sequence"`` (one site ``x``); see the module
        docstring. The prior is scored without a graph in both.
    :returns: the sequences, LongTensor ``(N, T)``.

    Example::

        >>> trace = pyro.poutine.trace(model).get_trace(task, 8)
        >>> trace.nodes["x_0"]["value"].shape, trace.nodes["reward"]["fn"].batch_shape
        (torch.Size([8]), torch.Size([8]))
        >>> pyro.poutine.trace(model).get_trace(task, 8, sites="sequence").nodes["x"]["value"].shape
        torch.Size([8, 6])
    """
    with sequences_plate(num_sequences):
        sequences = _sample_sequences(task.prior, task.length, num_sequences, sites, differentiable=False)
        pyro.factor(REWARD_SITE, task.log_likelihood(sequences))
    return sequences


class PolicyGuide:
    """The guide :math:`q`: a policy sampling the model's token sites (in the model's layout).

    Called with the model's arguments. The policy is registered with ``pyro.module("policy", …)`` so Pyro's
    optimizers see its parameters.

    :param policy: an :class:`~bayes_klrl.lm.AutoregressiveLM` with trainable parameters.
    :param dict sample_infer: optional ``infer`` dict put on every token site (e.g. a TraceGraph baseline).
    :param str sites: the layout the guide uses when called without ``sites=`` (``"tokens"`` or ``"sequence"``);
        it must match the model's.

    Example::

        >>> trace = pyro.poutine.trace(PolicyGuide(policy, sites="sequence")).get_trace(task, 8)
        >>> trace.nodes["x"]["value"].shape, trace.nodes["x"]["fn"].event_shape
        (torch.Size([8, 6]), torch.Size([6]))
    """

    def __init__(self, policy: AutoregressiveLM, sample_infer: dict | None = None, *, sites: str = "tokens"):
        self.policy = policy
        self.sample_infer = sample_infer
        self.sites = check_sites(sites)

    def __call__(self, task: Task, num_sequences: int, *, sites: str | None = None) -> torch.Tensor:
        pyro.module("policy", self.policy)
        kwargs = {"infer": dict(self.sample_infer)} if self.sample_infer else None
        layout = self.sites if sites is None else sites
        with sequences_plate(num_sequences):
            return _sample_sequences(self.policy, task.length, num_sequences, layout, kwargs, differentiable=True)
