"""Inference on the KL-regularized RL model: SVI (and, in later modules, importance sampling and MCMC)."""

from .svi import ESTIMATORS, LeaveOneOutELBO, SVITrainer, make_elbo

__all__ = ["ESTIMATORS", "LeaveOneOutELBO", "SVITrainer", "make_elbo"]
