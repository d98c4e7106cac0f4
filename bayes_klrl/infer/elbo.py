r"""The ELBO estimators SVI runs on the KL-regularized RL model (Pyro :class:`~pyro.infer.ELBO` subclasses and
:func:`make_elbo`, which picks one).

Three estimators are offered (``estimator=``):

- ``"loo"``: :class:`LeaveOneOutELBO`, the sequences of the ``"sequences"`` plate are the particles and each
  one's signal is centred by the mean signal of the others (RLOO). Unbiased, and the lowest variance here.
- ``"trace"``: :class:`pyro.infer.Trace_ELBO`, no baseline.
- ``"tracegraph"``: :class:`pyro.infer.TraceGraph_ELBO` with Pyro's decaying-average baseline on each token site.

**Site layouts** (``sites=``, :mod:`bayes_klrl.model`): ``"loo"`` and ``"trace"`` run by default on the
``"sequence"`` layout (one site whose guide samples without a graph and is scored in one batched pass: an SVI
step costs a plain-torch RL step), ``"tracegraph"`` on the per-token ``"tokens"`` layout, whose per-site
structure its baselines need. On one seed both layouts draw the same sequences and give the same gradient.

**The KL gradient** (``kl_gradient=``, ``"loo"`` only): ``"sampled"`` (default) puts the sampled
:math:`\log q(x) - \log\pi_0(x)` in the signal; ``"analytic"`` Rao-Blackwellizes it: the exact per-token KL over
the vocabulary at every sampled prefix, differentiated directly, plus a score term per token whose signal is the
reward and the exact KLs of later positions only (:func:`~bayes_klrl.estimators.rao_blackwell_surrogate`).
Unbiased for the same gradient. Its variance is lower only while the sampled log-ratio's noise dominates: near
:math:`\pi^*` the sampled signal :math:`\log\pi_0 + r/\beta - \log q` tends to the constant :math:`\log Z`, so the
sampled KL cancels the reward's noise sample by sample (zero variance at :math:`\pi^*`), and the exact KL cannot.
Measured on ``markov`` (N=256, tabular policy trained by SVI), analytic/sampled total variance: 1.00 at
:math:`\pi_0` (both signals equal there), 1.17 after 5 steps, 1.94 after 20, 6.6 after 60, 51 after 300; on a
tabular policy moved at random away from both :math:`\pi_0` and :math:`\pi^*`, 0.66 (tests/infer/test_svi_analytic.py).

**Replay** (``replay=K``, ``"loo"`` on the sequence layout): :class:`ReplayELBO` also scores the sequences the guide
drew at the last :math:`K-1` steps, by running the guide conditioned on them, and importance-weights them by
:math:`q(x)/q_{\text{then}}(x)`: the same estimator as the RL recipes' ``replay``, so SVI and REINFORCE still take
the same steps.
"""

from __future__ import annotations

import collections

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine import Trace
from pyro.poutine.trace_messenger import TraceMessenger
from pyro.poutine.util import site_is_subsample

from ..estimators import (
    KL_GRADIENTS,
    check_replay,
    floor_infeasible,
    leave_one_out_baseline,
    per_token_kl,
    rao_blackwell_surrogate,
    replay_advantages,
)
from ..model import PLATE, SequenceDistribution, check_sites

__all__ = [
    "DEFAULT_SITES",
    "ESTIMATORS",
    "KL_GRADIENTS",
    "LeaveOneOutELBO",
    "ReplayELBO",
    "check_options",
    "make_elbo",
    "resolve_sites",
    "sequence_log_weights",
    "token_distributions",
]

ESTIMATORS = ("loo", "trace", "tracegraph")
#: the site layout (:data:`bayes_klrl.model.SITES`) each estimator runs on unless told otherwise
DEFAULT_SITES = {"loo": "sequence", "trace": "sequence", "tracegraph": "tokens"}


def sequence_log_weights(model_trace, guide_trace) -> torch.Tensor:
    r"""Per-sequence :math:`\log p(x, y) - \log q(x)` from a model and guide trace, shape ``(N,)``.

    Sites must carry ``log_prob`` (call ``compute_log_prob`` first) and live in the ``"sequences"`` plate. The
    model's sites are added and the guide's subtracted one by one, in trace order.
    """
    total = _sum_log_probs(model_trace)
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            total = total - site["log_prob"]
    return total


def _sum_log_probs(trace):
    """The sum of the ``log_prob`` of every sample site of ``trace``, added in trace order."""
    total = None
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = site["log_prob"] if total is None else total + site["log_prob"]
    return total


def _prune_and_score(trace, skip=()) -> None:
    """``trace`` without its subsample sites (``prune_subsample_sites``, in place) and with ``log_prob`` at every
    other sample site whose name is not in ``skip`` (``compute_log_prob`` without its ``log_prob_sum``); every
    sample site left must be in the ``"sequences"`` plate (:func:`_check_plate`)."""
    for name, site in list(trace.nodes.items()):
        if site["type"] != "sample":
            continue
        if site_is_subsample(site):
            trace.remove_node(name)
            continue
        _check_plate(site)
        if name not in skip and "log_prob" not in site:
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            site["unscaled_log_prob"] = log_p
            site["log_prob"] = scale_and_mask(log_p, site["scale"], site["mask"])


def _check_plate(site) -> None:
    for frame in site["cond_indep_stack"]:
        if frame.name == PLATE:
            return
    raise ValueError(f"site {site['name']!r} is outside the {PLATE!r} plate; LeaveOneOutELBO needs it")


def _run_traced(fn, args, kwargs, replay=None) -> Trace:
    """``poutine.trace(poutine.replay(fn, trace=replay)).get_trace(*args, **kwargs)`` (no replay when ``None``),
    without ``get_trace``'s copy of the recorded trace."""
    tracer = TraceMessenger()
    with tracer:
        tracer.trace.add_node("_INPUT", name="_INPUT", type="args", args=args, kwargs=kwargs)
        if replay is None:
            value = fn(*args, **kwargs)
        else:
            with poutine.replay(trace=replay):
                value = fn(*args, **kwargs)
        tracer.trace.add_node("_RETURN", name="_RETURN", type="return", value=value)
    return tracer.trace


def token_distributions(model_trace, guide_trace):
    r"""What an exact per-token KL needs, read from a model and guide trace of either site layout.

    :returns: ``(x, log_q_next, log_prior_next, log_likelihood)``: the tokens ``(N, T)``, the guide's whole
        next-token log-distributions at every sampled prefix ``(N, T, V)`` (differentiable), the prior's ``(N, T, V)``
        (no graph), and :math:`\log p(y|x) = r/\beta` ``(N,)`` (the model's sites the guide does not sample; they
        must carry ``log_prob``).
    :raises ValueError: when the guide's tokens are neither one
        :class:`~bayes_klrl.model.SequenceDistribution` site nor Categorical sites, one per position.
    """
    latent = [s for s in guide_trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    if len(latent) == 1 and isinstance(latent[0]["fn"], SequenceDistribution):
        site = latent[0]
        x = site["value"]  # (N, T)
        log_q_next = site["fn"].next_token_log_probs(x)  # (N, T, V), one pass
        with torch.no_grad():
            log_prior_next = model_trace.nodes[site["name"]]["fn"].next_token_log_probs(x).detach()
    elif latent and all(isinstance(s["fn"], torch.distributions.Categorical) for s in latent):
        x = torch.stack([s["value"] for s in latent], -1)  # (N, T)
        log_q_next = torch.stack([s["fn"].logits for s in latent], 1)  # Categorical keeps normalized logits
        with torch.no_grad():
            log_prior_next = torch.stack([model_trace.nodes[s["name"]]["fn"].logits for s in latent], 1).detach()
    else:
        raise ValueError(
            "kl_gradient='analytic' needs the guide's tokens as one SequenceDistribution site or as Categorical "
            "sites, one per position"
        )
    names = {s["name"] for s in latent}
    log_likelihood = sum(
        site["log_prob"] for name, site in model_trace.nodes.items() if site["type"] == "sample" and name not in names
    )
    return x, log_q_next, log_prior_next, log_likelihood


class LeaveOneOutELBO(ELBO):
    r"""Score-function ELBO with a leave-one-out baseline across the sequences of the plate.

    For signals :math:`f_i` of the :math:`N` sequences the surrogate loss is
    :math:`-\sum_i \big(f_i - \tfrac{1}{N-1}\sum_{j\neq i} f_j\big)\log q(x_i)` with :math:`f` detached;
    its gradient is an unbiased estimate of :math:`-\nabla\sum_i \mathrm{ELBO}_i`. Infeasible sequences
    (−inf reward) get a finite stand-in signal (:func:`~bayes_klrl.estimators.floor_infeasible`).

    With ``kl_gradient="analytic"`` the KL part is Rao-Blackwellized: with :math:`\mathrm{KL}_t(x_{<t})` the
    exact KL of the next-token distributions at each sampled prefix (read from the traces by
    :func:`token_distributions`), the surrogate is

    .. math::

        -\sum_i \Big[\sum_s (A_{is} - b_{is})\log q(x_{is}|x_{i,<s}) - \sum_t \mathrm{KL}_t(x_{i,<t})\Big],
        \qquad A_{is} = r_i/\beta - \sum_{t>s}\mathrm{KL}_t(x_{i,<t}),

    :math:`b_{is}` the mean of :math:`A_{js}` over the other sequences: unbiased for the same gradient (derived in
    :func:`~bayes_klrl.estimators.rao_blackwell_surrogate`). The value it reports is then
    :math:`-\sum_i (r_i/\beta - \sum_t \mathrm{KL}_t)`, also an unbiased estimate of :math:`-N\,\mathrm{ELBO}`.

    :param str kl_gradient: ``"sampled"`` (default) or ``"analytic"``.

    Example::

        >>> import pyro.optim
        >>> from bayes_klrl.model import PolicyGuide, model
        >>> svi = pyro.infer.SVI(model, PolicyGuide(policy), pyro.optim.Adam({"lr": 0.02}), LeaveOneOutELBO())
        >>> loss = svi.step(task, 512)   # an estimate of -ELBO summed over the 512 sequences
        >>> rb = LeaveOneOutELBO(kl_gradient="analytic")   # the same gradient in mean
    """

    def __init__(self, kl_gradient: str = "sampled"):
        if kl_gradient not in KL_GRADIENTS:
            raise ValueError(f"unknown kl_gradient {kl_gradient!r}; choose one of {', '.join(KL_GRADIENTS)}")
        super().__init__(num_particles=1, max_plate_nesting=1)
        self.kl_gradient = kl_gradient

    def _get_trace(self, model, guide, args, kwargs):
        return self._traces(model, guide, args, kwargs)

    def _traces(self, model, guide, args, kwargs):
        if is_validation_enabled():  # Pyro's full checks (model/guide site match, shapes)
            model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        _check_plate(site)
        else:  # the same traces, run and scored as get_importance_trace does, without its copies and score parts
            guide_trace = _run_traced(guide, args, kwargs)
            model_trace = _run_traced(model, args, kwargs, replay=guide_trace)
            if self.kl_gradient == "sampled":
                _prune_and_score(model_trace)
                _prune_and_score(guide_trace)
            else:  # the tokens are scored from their whole next-token distributions: only the factor here
                _prune_and_score(model_trace, skip=guide_trace.nodes)
                _prune_and_score(guide_trace, skip=guide_trace.nodes)
        return model_trace, guide_trace

    def loss(self, model, guide, *args, **kwargs) -> float:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        with torch.no_grad():
            return -float(self._surrogate(model_trace, guide_trace)[1].sum())

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The surrogate whose gradient is the estimator (its value is not the ELBO)."""
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        return self._surrogate(model_trace, guide_trace)[0]

    def _surrogate(self, model_trace, guide_trace):
        """The surrogate loss, and the per-sequence values ``(N,)`` whose sum estimates the summed ELBO."""
        if self.kl_gradient == "analytic":
            x, log_q_next, log_prior_next, log_likelihood = token_distributions(model_trace, guide_trace)
            token_kl = per_token_kl(log_q_next, log_prior_next)  # (N, T)
            token_log_q = log_q_next.gather(-1, x[..., None]).squeeze(-1)  # (N, T)
            surrogate = rao_blackwell_surrogate(token_log_q, token_kl, log_likelihood.detach())  # (N,)
            return -surrogate.sum(), (log_likelihood - token_kl.sum(-1)).detach()
        with torch.no_grad():
            signal = sequence_log_weights(model_trace, guide_trace)  # (N,)
            usable = self.gather(floor_infeasible(signal))  # the whole batch under data parallelism
            advantage = self.shard(usable - leave_one_out_baseline(usable))
        log_q = _sum_log_probs(guide_trace)  # (N,), differentiable
        return -(advantage * log_q).sum(), signal

    @staticmethod
    def gather(values: torch.Tensor) -> torch.Tensor:
        """The whole batch's values from this process's share (identity; a data-parallel trainer sets its own)."""
        return values

    @staticmethod
    def shard(values: torch.Tensor) -> torch.Tensor:
        """This process's rows of a whole-batch tensor (identity; see :meth:`gather`)."""
        return values

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        surrogate, signal = self._surrogate(model_trace, guide_trace)
        surrogate.backward()
        return -float(signal.sum())


class ReplayELBO(LeaveOneOutELBO):
    r""":class:`LeaveOneOutELBO` whose gradient also uses the sequences the guide drew at the last ``replay - 1`` calls.

    The kept sequences :math:`x_j` are rescored by running the guide conditioned on them (``poutine.condition``),
    so :math:`\log q(x_j)` is the current guide's, differentiable; their :math:`\log p(x_j, y)` (the model has no
    parameters) is kept from the call that drew them, so the reward is not evaluated again. With log-weights
    :math:`\ell_j = \log q(x_j) - \log q_{\text{then}}(x_j)` (0 for this call's draws) and signals
    :math:`f_j = \log p(x_j, y) - \log q(x_j)`, the surrogate is

    .. math:: -N \sum_j w_j (f_j - b_j) \log q(x_j),

    :math:`w, b` from :func:`~bayes_klrl.estimators.weighted_leave_one_out` and :math:`N` this call's sequences, so
    its gradient estimates :math:`-\nabla\sum_i \mathrm{ELBO}_i` as :class:`LeaveOneOutELBO`'s does (consistent;
    exactly zero at :math:`q = \pi^*`). The model and guide take ``(task, num_sequences)`` and have one
    latent site (the ``"sequence"`` layout). ``replay=1`` would be :class:`LeaveOneOutELBO` itself.

    Example::

        >>> from bayes_klrl.model import PolicyGuide, model
        >>> elbo = ReplayELBO(replay=8)
        >>> loss = elbo.loss_and_grads(model, PolicyGuide(policy, sites="sequence"), task, 16)
        >>> len(elbo.kept)    # this call's draws, for the next 7 calls
        1
    """

    def __init__(self, replay: int):
        check_replay(replay, minimum=2)
        super().__init__("sampled")
        self.replay = replay
        #: per earlier call: (sequences, log q at that call, log p(x, y)), oldest first
        self.kept: collections.deque = collections.deque(maxlen=replay - 1)
        self.last_ess: float | None = None  # effective sample size of the last call's weights, every rank's rows

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        latent = [s for s in guide_trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
        if len(latent) != 1:
            raise ValueError("ReplayELBO needs the guide's sequences as one sample site (sites='sequence')")
        name, x = latent[0]["name"], latent[0]["value"]
        n = x.shape[0]
        log_q = [_sum_log_probs(guide_trace)]  # (N,), differentiable
        with torch.no_grad():
            log_joint = [_sum_log_probs(model_trace)]
        then = [log_q[0].detach()]  # this call's draws: drawn by this guide
        if self.kept:
            xs, then_old, joint_old = zip(*self.kept)
            conditioned = poutine.condition(guide, data={name: torch.cat(xs)})
            rescored = _run_traced(conditioned, (args[0], sum(map(len, xs))), kwargs)
            _prune_and_score(rescored)
            log_q, then, log_joint = [_sum_log_probs(rescored), *log_q], [*then_old, *then], [*joint_old, *log_joint]
        log_q, then, log_joint = torch.cat(log_q), torch.cat(then), torch.cat(log_joint)
        with torch.no_grad():
            signal = floor_infeasible(log_joint - log_q.detach())
            weight, advantage, self.last_ess, rows = replay_advantages(
                signal, log_q.detach() - then, self.gather, self.shard
            )
            ranks = rows // signal.shape[0]  # the weights sum to 1 over every rank's rows: update() averages
            advantage = weight * advantage * (n * ranks)
        (-(advantage * log_q).sum()).backward()
        self.kept.append((x.detach().clone(), then[-n:].clone(), log_joint[-n:].clone()))  # not views of M rows
        return -float((log_joint[-n:] - log_q[-n:].detach()).sum())


def make_elbo(estimator: str, kl_gradient: str = "sampled", replay: int = 1) -> tuple[ELBO, dict | None]:
    """The ELBO for ``estimator`` and the ``infer`` dict the guide's token sites need (baselines).

    ``kl_gradient="analytic"`` and ``replay > 1`` (:class:`ReplayELBO`) are options of ``"loo"`` only, and not of
    each other.
    """
    if kl_gradient not in KL_GRADIENTS:
        raise ValueError(f"unknown kl_gradient {kl_gradient!r}; choose one of {', '.join(KL_GRADIENTS)}")
    if kl_gradient != "sampled" and estimator != "loo":
        raise ValueError(f"kl_gradient={kl_gradient!r} is an option of the 'loo' estimator, not of {estimator!r}")
    if check_replay(replay) > 1 and (estimator != "loo" or kl_gradient != "sampled"):
        raise ValueError(
            f"replay is an option of the 'loo' estimator with the sampled KL gradient, not of estimator={estimator!r}, "
            f"kl_gradient={kl_gradient!r}"
        )
    if estimator == "loo":
        return (ReplayELBO(replay) if replay > 1 else LeaveOneOutELBO(kl_gradient)), None
    if estimator == "trace":
        return Trace_ELBO(max_plate_nesting=1), None
    if estimator == "tracegraph":
        return TraceGraph_ELBO(max_plate_nesting=1), {"baseline": {"use_decaying_avg_baseline": True}}
    raise ValueError(f"unknown SVI estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def resolve_sites(estimator: str, sites: str | None = None, replay: int = 1) -> str:
    """The site layout SVI runs on: ``sites``, or the estimator's :data:`DEFAULT_SITES` when ``None``; replay needs
    the sequence layout (a one-line ValueError otherwise)."""
    layout = check_sites(DEFAULT_SITES.get(estimator, "tokens") if sites is None else sites)
    if replay > 1 and layout != "sequence":
        raise ValueError("replay rescores earlier draws through the one sequence-level site; use sites='sequence'")
    return layout


def check_options(estimator: str = "loo", kl_gradient: str | None = None, sites: str | None = None, replay=None):
    """Refuse SVI options that do not go together, in one line, before anything runs (what :class:`SVITrainer`
    would refuse when built); ``None`` means the default."""
    replay = 1 if replay is None else replay
    make_elbo(estimator, kl_gradient or "sampled", replay)
    resolve_sites(estimator, sites, replay)
