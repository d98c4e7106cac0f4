r"""The choices of the settings the methods read: for each ``compare`` setting that names something, the names it
may take, gathered here from the modules that define them so that :mod:`bayes_klrl.compare` reads one registry.
The recipe options' choices are their :class:`~bayes_klrl.rl.recipes.Recipe` fields' own (``recipe_flags``)."""

from __future__ import annotations

from ..infer.elbo import ESTIMATORS
from ..infer.mcmc import KERNELS
from ..infer.twists import TWISTS
from ..model import SITES
from ..task import POLICY_KINDS
from ..training import LR_SCHEDULES, OPTIMIZERS

__all__ = ["CHOICES"]

#: setting name → the names it may take (``mcmc_kernel``: ``"auto"`` picks one by the task's vocabulary)
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": tuple(OPTIMIZERS),
    "lr_schedule": tuple(LR_SCHEDULES),
    "policy": tuple(POLICY_KINDS),
    "estimator": tuple(ESTIMATORS),
    "sites": tuple(SITES),
    "mcmc_kernel": ("auto", *KERNELS),
    "twist": tuple(TWISTS),
}
