r"""bayes_klrl: KL-regularized RL as Bayesian inference.

The target of KL-regularized RL, :math:`\pi^*(x) = \pi_0(x)\,e^{r(x)/\beta}/Z`, is the posterior of a
probabilistic program with prior :math:`\pi_0` and likelihood :math:`e^{r(x)/\beta}`; the RL objective is
β times its ELBO. This package writes that program in Pyro and compares SVI, RL, importance sampling and
MCMC against exact posteriors.
"""

from .exact import ExactPosterior, PolicyMetrics, exact_elbo, exact_objective, exact_posterior, policy_metrics
from .lm import AutoregressiveLM, CategoricalLM, MarkovLM, TabularPolicy
from .task import RewardError, Task
from .training import FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveLM",
    "CategoricalLM",
    "ExactPosterior",
    "FitResult",
    "MarkovLM",
    "PolicyMetrics",
    "RewardError",
    "TabularPolicy",
    "Task",
    "exact_elbo",
    "exact_objective",
    "exact_posterior",
    "fit",
    "policy_metrics",
]
