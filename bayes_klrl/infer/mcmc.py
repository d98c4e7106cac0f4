r"""MCMC on token sequences targeting :math:`\pi^*(x) \propto \pi_0(x)\,e^{r(x)/\beta}`, as Pyro MCMC kernels.

Two kernels, each a :class:`pyro.infer.mcmc.MCMCKernel` that :class:`pyro.infer.MCMC` runs, and each
carrying a batch of :math:`C` chains in one state ``tokens`` of shape ``(C, T)`` (one LM pass serves all
chains). The carried state is a :class:`~bayes_klrl.samples.ScoredSamples` with one row per chain (the
tokens with their :math:`\log\pi_0`, :math:`r` and, for IMH with a policy, :math:`\log q`); what a step did is
a separate :class:`StepInfo`:

- :class:`IndependenceMH`: independence Metropolis–Hastings with proposal :math:`q` (the prior or a policy),

  .. math:: x' \sim q, \qquad \alpha(x \to x') = \min\Big(1, \frac{w(x')}{w(x)}\Big), \qquad
            \log w = \log\pi_0 + r/\beta - \log q;

  with :math:`q = \pi_0` this is :math:`\min(1, e^{(r(x') - r(x))/\beta})`.

- :class:`SingleSiteGibbs`: resamples one position from its exact full conditional,

  .. math:: \pi^*(x_t = v \mid x_{-t}) \propto \pi_0(x_{<t}, v, x_{>t})\, e^{r(x_{<t}, v, x_{>t})/\beta},

  scoring all :math:`V` candidates of every chain in one batch (:math:`V` reward evaluations per site).
  One kernel step is a sweep of :math:`T` site updates, in order (``scan="systematic"``) or at uniformly
  drawn positions, one per chain (``scan="random"``).

Chains start dispersed: independently and uniformly over :math:`\{0..V-1\}^T` (``init="uniform"``) or from
the prior (``init="prior"``), redrawn until every chain has a finite target. Warm-up steps are discarded by
:class:`pyro.infer.MCMC`; the kernels count acceptances only after them. A kernel with ``num_chains=1``
is the chain-by-chain baseline :class:`pyro.infer.MCMC` runs one chain at a time.

Example::

    >>> kernel = SingleSiteGibbs(task, num_chains=4, seed=0)
    >>> mcmc = pyro.infer.MCMC(kernel, num_samples=500, warmup_steps=100, disable_progbar=True)
    >>> mcmc.run()
    >>> mcmc.get_samples(group_by_chain=True)["tokens"].shape   # (1, draws, C, T): Pyro sees one "chain"
    torch.Size([1, 500, 4, 6])

:func:`run_mcmc` does this and returns draws as ``(chains, draws, T)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pyro.infer
import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from ..exact import total_variation  # noqa: F401 (re-exported: its home before it moved to exact)
from ..lm import AutoregressiveLM, sample_categorical
from ..model import model as klrl_model
from ..samples import ScoredSamples, score
from ..task import Task

__all__ = [
    "KERNELS",
    "IndependenceMH",
    "MCMCResult",
    "SingleSiteGibbs",
    "StepInfo",
    "make_kernel",
    "run_mcmc",
    "total_variation",
]

KERNELS = ("imh", "gibbs")
PARAM = "tokens"
LOG_TARGET = "log_target"
INITS = ("uniform", "prior")
SCANS = ("systematic", "random")

#: rounds of redrawing starts with a −inf target before giving up
_MAX_INIT_ROUNDS = 1000


@dataclass(frozen=True)
class StepInfo:
    r"""What one kernel step did, per chain (kept apart from the carried state, a
    :class:`~bayes_klrl.samples.ScoredSamples` with one row per chain).

    :ivar accept_prob: the Metropolis–Hastings acceptance probability :math:`\min(1, w(x')/w(x))` of the
        step's proposal (IMH), or 1 (Gibbs: every draw from a full conditional is accepted); float64 ``(C,)``.
    :ivar moved: fraction of the step's updates that changed the sequence, float64 ``(C,)``.
    """

    accept_prob: torch.Tensor
    moved: torch.Tensor


class _SequenceKernel(MCMCKernel):
    """Shared machinery: the batch of chains, scoring, dispersed starts, counters and Pyro's hooks."""

    def __init__(self, task: Task, *, num_chains: int = 4, init: str = "uniform", seed: int = 0):
        if not isinstance(task, Task):
            raise ValueError(f"task must be a bayes_klrl.Task, got {type(task).__name__}")
        if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
            raise ValueError(f"num_chains must be an integer >= 1, got {num_chains!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        self.task = task
        self.num_chains = num_chains
        self.init = init
        self.seed = seed
        # pyro.infer.MCMC reads these: no transforms (tokens are already unconstrained integers), and the
        # Pyro program behind the kernel, which az.from_pyro traces.
        self.transforms = {}
        self.model = functools.partial(klrl_model, task, num_chains)
        self._generator = torch.Generator(task.prior.device).manual_seed(seed)
        self._initial: torch.Tensor | None = None
        self._state: ScoredSamples | None = None  # C chains = C rows
        self._info: StepInfo | None = None
        self._warmup_steps = 0
        self._t = 0
        self._accepted = torch.zeros(num_chains, dtype=torch.float64)
        self._proposed = 0

    # -- scoring -----------------------------------------------------------------------
    def _scored_proposal(self) -> AutoregressiveLM | None:
        """The LM whose :math:`\\log q` the state carries, or ``None`` (no proposal is scored)."""
        return None

    def _score(self, tokens: torch.Tensor) -> ScoredSamples:
        tokens = tokens.to(self.task.prior.device)  # (C, T)
        return score(self.task, tokens, log_q=self._scored_proposal())

    # -- starts ------------------------------------------------------------------------
    def _draw_starts(self, n: int) -> torch.Tensor:
        v, length, device = self.task.vocab_size, self.task.length, self.task.prior.device
        if self.init == "uniform":
            return torch.randint(v, (n, length), generator=self._generator, device=device)
        return self.task.prior.sample(n, length, generator=self._generator)

    def _dispersed_start(self) -> ScoredSamples:
        state = self._score(self._draw_starts(self.num_chains))
        for _ in range(_MAX_INIT_ROUNDS):
            bad = ~torch.isfinite(state.log_target)
            if not bad.any():
                return state
            fresh = self._score(self._draw_starts(int(bad.sum())))
            tokens = state.tokens.clone()
            tokens[bad] = fresh.tokens
            state = self._score(tokens)
        raise ValueError(
            f"no start with a finite target found for {int(bad.sum())} chain(s) after {_MAX_INIT_ROUNDS} rounds "
            f"of init={self.init!r}; the posterior's support may be tiny: pass initial_params"
        )

    # -- the MCMCKernel interface --------------------------------------------------------
    @property
    def initial_params(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            raise ValueError("call setup() before reading initial_params")
        return self._params(self._state)

    @staticmethod
    def _params(state: ScoredSamples) -> dict[str, torch.Tensor]:
        # a float site beside the integer tokens: Pyro's own diagnostics (ESS, R-hat) need floating samples, and
        # pyro.infer.MCMC concatenates the sites, so its stored tokens become float64 (exact for any V < 2**53)
        return {PARAM: state.tokens, LOG_TARGET: state.log_target}

    @initial_params.setter
    def initial_params(self, params: dict[str, torch.Tensor]) -> None:
        tokens = params[PARAM]
        shape = (self.num_chains, self.task.length)
        if tuple(tokens.shape) != shape:
            raise ValueError(f"initial {PARAM!r} must have shape {shape}, got {tuple(tokens.shape)}")
        tokens = tokens.long()
        if tokens.min() < 0 or tokens.max() >= self.task.vocab_size:
            raise ValueError(f"initial tokens must lie in 0..{self.task.vocab_size - 1}")
        self._initial = tokens

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        """Start the chains (at ``initial_params`` if set, else dispersed) and reset the counters."""
        self._warmup_steps = int(warmup_steps)
        self._t = 0
        self._reset_counters()
        if self._initial is not None:
            self._state = self._score(self._initial)
            if not torch.isfinite(self._state.log_target).all():
                raise ValueError("initial_params: some chains start where the posterior is 0 (reward -inf)")
        else:
            self._state = self._dispersed_start()

    def cleanup(self) -> None:
        self._initial = None  # pyro.infer.MCMC sets initial_params again before each chain it runs

    def _reset_counters(self) -> None:
        self._accepted = torch.zeros(self.num_chains, dtype=torch.float64)
        self._proposed = 0

    def end_warmup(self) -> None:
        self._reset_counters()

    @property
    def state(self) -> ScoredSamples:
        """The current state, one :class:`~bayes_klrl.samples.ScoredSamples` row per chain (after the last
        :meth:`sample`)."""
        if self._state is None:
            raise ValueError("the kernel has not been set up")
        return self._state

    @property
    def info(self) -> StepInfo:
        """The :class:`StepInfo` of the last :meth:`sample`."""
        if self._info is None:
            raise ValueError("the kernel has not taken a step yet")
        return self._info

    @property
    def acceptance_rate(self) -> torch.Tensor:
        """Per-chain fraction of accepted proposals since warm-up ended (or since setup), float64 ``(C,)``."""
        return self._accepted / max(self._proposed, 1)

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = params[PARAM]
        state = self._state
        if state is None or tokens is not state.tokens:  # params edited outside the kernel: rescore
            state = self._score(tokens.long())
        self._state, self._info = self._step(state)
        self._t += 1
        if self._t == self._warmup_steps:
            self.end_warmup()
        return self._params(self._state)

    def _step(self, state: ScoredSamples) -> tuple[ScoredSamples, StepInfo]:
        raise NotImplementedError

    def logging(self) -> dict[str, str]:
        return {"acc. rate": f"{float(self.acceptance_rate.mean()):.3f}"}

    def diagnostics(self) -> dict:
        # az.from_pyro reads "divergences" (step indices); these kernels have none
        return {"divergences": [], "acceptance rate": float(self.acceptance_rate.mean())}


class IndependenceMH(_SequenceKernel):
    r"""Independence Metropolis–Hastings over sequences, :math:`C` chains per step.

    .. math:: x' \sim q, \qquad \text{accept with probability } \min\big(1, w(x')/w(x)\big), \qquad
              w = \pi_0 e^{r/\beta} / q.

    :param task: the task.
    :param proposal: an :class:`~bayes_klrl.lm.AutoregressiveLM` or ``None`` (the prior).
    :param int num_chains: :math:`C`.
    :param str init: dispersed starts, ``"uniform"`` or ``"prior"``.
    :param int seed: seeds the kernel's own generator (starts, proposals, accept draws).

    Example::

        >>> mcmc = pyro.infer.MCMC(IndependenceMH(task, num_chains=8), num_samples=1000, warmup_steps=200)
        >>> mcmc.run()
    """

    def __init__(
        self,
        task: Task,
        proposal: AutoregressiveLM | None = None,
        *,
        num_chains: int = 4,
        init: str = "uniform",
        seed: int = 0,
    ):
        super().__init__(task, num_chains=num_chains, init=init, seed=seed)
        if proposal is not None:
            if not isinstance(proposal, AutoregressiveLM):
                raise ValueError(f"proposal must be an AutoregressiveLM or None, got {type(proposal).__name__}")
            if proposal.vocab_size != task.vocab_size:
                raise ValueError(f"proposal has vocab_size {proposal.vocab_size}; the task has {task.vocab_size}")
        self.proposal = task.prior if proposal is None else proposal

    def _scored_proposal(self):
        return None if self.proposal is self.task.prior else self.proposal  # q = π0: the weights are r/β

    @staticmethod
    def _log_weight(state: ScoredSamples) -> torch.Tensor:
        log_q = state.log_prior if state.log_q is None else state.log_q
        return state.log_target - log_q  # log π0 + r/β − log q, (C,)

    @torch.no_grad()
    def _step(self, state: ScoredSamples) -> tuple[ScoredSamples, StepInfo]:
        proposal = self._score(self.proposal.sample(self.num_chains, self.task.length, generator=self._generator))
        log_w_new, log_w_old = self._log_weight(proposal), self._log_weight(state)
        log_u = torch.rand(self.num_chains, generator=self._generator, device=log_w_new.device).double().log()
        # from a zero-weight state any move is accepted (the difference −inf − (−inf) is undefined)
        log_alpha = torch.where(torch.isfinite(log_w_old), log_w_new - log_w_old, torch.zeros_like(log_u))
        log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf).clamp(max=0.0)  # (C,)
        accept = log_u < log_alpha
        self._accepted += accept.double().cpu()
        self._proposed += 1
        moved = accept & (proposal.tokens != state.tokens).any(-1)
        info = StepInfo(accept_prob=log_alpha.exp().cpu(), moved=moved.double().cpu())
        return state.where(accept, proposal), info


class SingleSiteGibbs(_SequenceKernel):
    r"""Single-site Gibbs over sequences, exact full conditionals, :math:`C` chains per step.

    One step is a sweep of :math:`T` updates; each draws, for every chain,

    .. math:: x_t \sim \pi^*(\cdot \mid x_{-t}) = \mathrm{softmax}_v\big(\log\pi_0(x^{t\leftarrow v})
              + r(x^{t\leftarrow v})/\beta\big),

    scoring the ``C·V`` candidates :math:`x^{t\leftarrow v}` in one batch. Every proposal is accepted, so
    :attr:`acceptance_rate` is 1; :attr:`move_rate` is the fraction of updates that changed the token.

    :param task: the task.
    :param int num_chains: :math:`C`.
    :param str scan: ``"systematic"`` (positions 0..T-1 in turn) or ``"random"`` (T uniformly drawn
        positions per sweep, independently per chain).
    :param str init: dispersed starts, ``"uniform"`` or ``"prior"``.
    :param int seed: seeds the kernel's own generator.

    Example::

        >>> mcmc = pyro.infer.MCMC(SingleSiteGibbs(task, num_chains=4, scan="random"), num_samples=500)
        >>> mcmc.run()
    """

    def __init__(
        self, task: Task, *, num_chains: int = 4, scan: str = "systematic", init: str = "uniform", seed: int = 0
    ):
        super().__init__(task, num_chains=num_chains, init=init, seed=seed)
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; choose one of {', '.join(SCANS)}")
        self.scan = scan
        self._moved = torch.zeros(num_chains, dtype=torch.float64)

    def _reset_counters(self) -> None:
        super()._reset_counters()
        self._moved = torch.zeros(self.num_chains, dtype=torch.float64)

    @property
    def move_rate(self) -> torch.Tensor:
        """Per-chain fraction of site updates that changed the token, float64 ``(C,)``."""
        return self._moved / max(self._proposed, 1)

    def logging(self) -> dict[str, str]:
        return {"move rate": f"{float(self.move_rate.mean()):.3f}"}

    def diagnostics(self) -> dict:
        return {**super().diagnostics(), "move rate": float(self.move_rate.mean())}

    @torch.no_grad()
    def _update_site(self, state: ScoredSamples, positions: torch.Tensor) -> tuple[torch.Tensor, ScoredSamples]:
        """Resample position ``positions[c]`` of every chain ``c`` from its full conditional; return which
        chains changed their token (float64 ``(C,)``) and the new state."""
        c, v, length = self.num_chains, self.task.vocab_size, self.task.length
        device = state.tokens.device
        chains = torch.arange(c, device=device)
        candidates = state.tokens.unsqueeze(1).repeat(1, v, 1)  # (C, V, T)
        candidates[chains[:, None], torch.arange(v, device=device)[None, :], positions[:, None]] = torch.arange(
            v, device=device
        )
        scored = self._score(candidates.reshape(c * v, length))  # C·V rows
        logits = scored.log_target.view(c, v)  # (C, V), finite where the candidate is feasible
        choice = sample_categorical(logits, self._generator)  # (C,)
        pick = chains * v + choice
        changed = (choice != state.tokens[chains, positions]).double().cpu()
        self._moved += changed
        self._accepted += 1.0
        self._proposed += 1
        return changed, scored[pick]  # the chosen candidate of every chain, (C,) rows

    def _step(self, state: ScoredSamples) -> tuple[ScoredSamples, StepInfo]:
        c, length, device = self.num_chains, self.task.length, state.tokens.device
        moved = torch.zeros(c, dtype=torch.float64)
        for t in range(length):
            if self.scan == "systematic":
                positions = torch.full((c,), t, dtype=torch.long, device=device)
            else:
                positions = torch.randint(length, (c,), generator=self._generator, device=device)
            changed, state = self._update_site(state, positions)
            moved += changed
        return state, StepInfo(accept_prob=torch.ones(c, dtype=torch.float64), moved=moved / length)


def make_kernel(
    task: Task,
    kernel: str = "gibbs",
    *,
    num_chains: int = 4,
    proposal: AutoregressiveLM | None = None,
    scan: str = "systematic",
    init: str = "uniform",
    seed: int = 0,
) -> IndependenceMH | SingleSiteGibbs:
    """The kernel named ``kernel`` (``"imh"`` or ``"gibbs"``) with ``num_chains`` vectorized chains.

    Example::

        >>> make_kernel(task, "imh", num_chains=8, seed=1).num_chains
        8
    """
    if kernel == "imh":
        return IndependenceMH(task, proposal, num_chains=num_chains, init=init, seed=seed)
    if kernel == "gibbs":
        if proposal is not None:
            raise ValueError("the Gibbs kernel uses exact full conditionals; it takes no proposal")
        return SingleSiteGibbs(task, num_chains=num_chains, scan=scan, init=init, seed=seed)
    raise ValueError(f"unknown MCMC kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


@dataclass(frozen=True)
class MCMCResult:
    r"""Draws of :math:`\pi^*` from :func:`run_mcmc`, after warm-up.

    :ivar kernel: ``"imh"`` or ``"gibbs"``.
    :ivar draws: LongTensor ``(chains, draws, T)``.
    :ivar rewards: :math:`r` per draw, float64 ``(chains, draws)``; ``log_prior`` :math:`\log\pi_0` and
        ``log_likelihood`` :math:`r/\beta` alike; ``log_q`` the IMH proposal's log-probability or ``None``.
    :ivar accept_prob: per draw, the acceptance probability of the step that made it (1 for Gibbs),
        float64 ``(chains, draws)``; ``moved`` the fraction of the step's updates that changed the sequence.
    :ivar acceptance_rate: per chain, the fraction of accepted proposals after warm-up, float64 ``(chains,)``
        (1 for Gibbs; ``move_rate`` is its fraction of token changes, ``None`` for IMH).
    """

    kernel: str
    draws: torch.Tensor
    rewards: torch.Tensor
    log_prior: torch.Tensor
    log_likelihood: torch.Tensor
    log_q: torch.Tensor | None
    accept_prob: torch.Tensor
    moved: torch.Tensor
    acceptance_rate: torch.Tensor
    move_rate: torch.Tensor | None
    num_warmup: int
    seed: int

    @property
    def num_chains(self) -> int:
        return int(self.draws.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.draws.shape[1])

    @property
    def expected_reward(self) -> float:
        r"""The MCMC estimate of :math:`\mathbb{E}_{\pi^*}[r]`: the mean reward over all draws."""
        return float(self.rewards.mean())


def run_mcmc(
    task: Task,
    kernel: str = "gibbs",
    *,
    num_chains: int = 4,
    num_samples: int = 1000,
    warmup: int = 200,
    proposal: AutoregressiveLM | None = None,
    scan: str = "systematic",
    init: str = "uniform",
    seed: int = 0,
) -> MCMCResult:
    r"""Run ``num_chains`` vectorized chains of ``kernel`` with :class:`pyro.infer.MCMC`; target
    :math:`\pi^* \propto \pi_0 e^{r/\beta}`.

    :param task: the task.
    :param str kernel: ``"imh"`` (independence MH with ``proposal``, default the prior) or ``"gibbs"``.
    :param int num_chains: chains, run as one batch inside the kernel.
    :param int num_samples: draws kept per chain; ``warmup`` steps are run before and discarded.
    :param str scan: Gibbs scan order, ``"systematic"`` or ``"random"``.
    :param str init: dispersed starts, ``"uniform"`` or ``"prior"``.
    :param int seed: seeds the kernel.

    Example::

        >>> result = run_mcmc(task, "gibbs", num_chains=4, num_samples=1000, warmup=200, seed=0)
        >>> result.draws.shape, result.draws.dtype
        (torch.Size([4, 1000, 6]), torch.int64)
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    k = make_kernel(task, kernel, num_chains=num_chains, proposal=proposal, scan=scan, init=init, seed=seed)
    kept: list[ScoredSamples] = []
    infos: list[StepInfo] = []

    def keep_state(kern, params, stage, i):  # the rewards and log-densities the kernel already computed
        if stage.startswith("Sample"):
            kept.append(kern.state)
            infos.append(kern.info)

    mcmc = pyro.infer.MCMC(k, num_samples=num_samples, warmup_steps=warmup, disable_progbar=True, hook_fn=keep_state)
    mcmc.run()
    # Pyro sees one chain whose value is (C, T); its flattening may turn tokens into floats: round back
    draws = mcmc.get_samples(group_by_chain=True)[PARAM][0].round().long().transpose(0, 1).cpu()  # (C, S, T)

    def stack(field: str, records=kept) -> torch.Tensor:
        return torch.stack([getattr(s, field).cpu() for s in records], dim=1)  # (C, S)

    return MCMCResult(
        kernel=kernel,
        draws=draws,
        rewards=stack("reward"),
        log_prior=stack("log_prior"),
        log_likelihood=stack("log_likelihood"),
        log_q=stack("log_q") if kept[0].log_q is not None else None,
        accept_prob=stack("accept_prob", infos),
        moved=stack("moved", infos),
        acceptance_rate=k.acceptance_rate.clone(),
        move_rate=k.move_rate.clone() if isinstance(k, SingleSiteGibbs) else None,
        num_warmup=warmup,
        seed=seed,
    )
