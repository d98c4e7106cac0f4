r"""Gradient-variance tools: independent ELBO-gradient estimates (:func:`gradient_samples`) and their spread
(:func:`gradient_variance`, a :class:`GradientStats`), for comparing the estimators of :mod:`bayes_klrl.infer.elbo`."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pyro
import pyro.optim
import torch

from ..lm import AutoregressiveLM
from ..model import PolicyGuide, model
from ..task import Task
from .elbo import make_elbo, resolve_sites

__all__ = ["GradientStats", "gradient_samples", "gradient_variance"]


@dataclass(frozen=True)
class GradientStats:
    r"""Spread of a gradient estimator over independent batches.

    :ivar mean: the mean estimate of :math:`\nabla\mathrm{ELBO}` per sequence, flattened ``(P,)``.
    :ivar standard_error: its per-coordinate Monte Carlo standard error ``(P,)``.
    :ivar total_variance: :math:`\sum_p \mathrm{Var}[\hat g_p]` of one batch's estimate.
    """

    estimator: str
    num_sequences: int
    num_batches: int
    mean: torch.Tensor
    standard_error: torch.Tensor
    total_variance: float
    kl_gradient: str = "sampled"


def gradient_samples(
    task: Task,
    policy: AutoregressiveLM,
    estimator: str,
    *,
    num_sequences: int,
    num_batches: int,
    seed: int,
    kl_gradient: str = "sampled",
    sites: str | None = None,
) -> torch.Tensor:
    r"""``num_batches`` independent estimates of :math:`\nabla_\theta\,\mathrm{ELBO}` per sequence: ``(B, P)``.

    Each is one SVI gradient on ``num_sequences`` sequences divided by ``num_sequences``; the policy is not
    updated. For ``"tracegraph"`` the decaying-average baseline warms up over the batches, as in training.
    ``kl_gradient`` and ``sites`` are those of :class:`SVITrainer`.

    Example::

        >>> g = gradient_samples(task, policy, "loo", num_sequences=64, num_batches=3, seed=0, kl_gradient="analytic")
        >>> g.shape == (3, policy.logits.numel())
        True
    """
    elbo, infer = make_elbo(estimator, kl_gradient)
    sites = resolve_sites(estimator, sites)
    guide = PolicyGuide(policy, infer, sites=sites)
    model_ = functools.partial(model, sites=sites)
    params = [p for p in policy.parameters() if p.requires_grad]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    out = []
    for _ in range(num_batches):
        for p in params:
            p.grad = None
        elbo.loss_and_grads(model_, guide, task, num_sequences)
        out.append(-torch.cat([p.grad.reshape(-1) for p in params]) / num_sequences)
    for p in params:
        p.grad = None
    return torch.stack(out)


def gradient_variance(
    task: Task,
    policy: AutoregressiveLM,
    estimator: str,
    *,
    num_sequences: int = 256,
    num_batches: int = 200,
    seed: int = 0,
    kl_gradient: str = "sampled",
    sites: str | None = None,
) -> GradientStats:
    """Measure an estimator's mean and variance over ``num_batches`` batches (see :func:`gradient_samples`).

    Example::

        >>> stats = gradient_variance(task, task.make_policy(), "loo", num_sequences=256, num_batches=100)
        >>> stats.total_variance > 0
        True
    """
    g = gradient_samples(
        task,
        policy,
        estimator,
        num_sequences=num_sequences,
        num_batches=num_batches,
        seed=seed,
        kl_gradient=kl_gradient,
        sites=sites,
    )
    g = g.double()
    return GradientStats(
        estimator=estimator,
        num_sequences=num_sequences,
        num_batches=num_batches,
        mean=g.mean(0),
        standard_error=g.std(0) / num_batches**0.5,
        total_variance=float(g.var(0).sum()),
        kl_gradient=kl_gradient,
    )
