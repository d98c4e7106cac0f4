r"""The choices of the settings the methods read: for each ``compare`` setting that names something, the names it
may take, gathered here from the modules that define them so that :mod:`bayes_klrl.compare` reads one registry."""

from __future__ import annotations

from ..estimators import KL_GRADIENTS
from ..infer.elbo import ESTIMATORS
from ..infer.mcmc import KERNELS
from ..infer.twists import TWISTS
from ..model import SITES
from ..rl.kl import KL_ESTIMATORS
from ..rl.recipes import ADVANTAGES, KL_PLACES, NORMALIZATIONS
from ..task import POLICY_KINDS
from ..training import LR_SCHEDULES, OPTIMIZERS

__all__ = ["CHOICES"]

#: setting name → the names it may take (``mcmc_kernel``: ``"auto"`` picks one by the task's vocabulary)
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": tuple(OPTIMIZERS),
    "lr_schedule": tuple(LR_SCHEDULES),
    "policy": tuple(POLICY_KINDS),
    "estimator": tuple(ESTIMATORS),
    "kl_gradient": tuple(KL_GRADIENTS),
    "sites": tuple(SITES),
    "kl_estimator": tuple(KL_ESTIMATORS),
    "kl_in": tuple(KL_PLACES),
    "advantage": tuple(ADVANTAGES),
    "normalization": tuple(NORMALIZATIONS),
    "mcmc_kernel": ("auto", *KERNELS),
    "twist": tuple(TWISTS),
}
