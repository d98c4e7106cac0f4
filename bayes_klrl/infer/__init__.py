"""Inference on the KL-regularized RL model, one algorithm family per module: ELBO estimators (elbo), SVI (svi),
gradient-variance tools (gradients), importance sampling (importance), MCMC (mcmc)."""

from .svi import ESTIMATORS, LeaveOneOutELBO, SVITrainer, make_elbo

__all__ = ["ESTIMATORS", "LeaveOneOutELBO", "SVITrainer", "make_elbo"]
