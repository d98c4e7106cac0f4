r"""bayes_klrl: KL-regularized RL as Bayesian inference.

The target of KL-regularized RL, :math:`\pi^*(x) = \pi_0(x)\,e^{r(x)/\beta}/Z`, is the posterior of a
probabilistic program with prior :math:`\pi_0` and likelihood :math:`e^{r(x)/\beta}`; the RL objective is
β times its ELBO. This package writes that program in Pyro and compares SVI, RL (and the recipes practitioners
run: GRPO, Dr. GRPO …), importance sampling and MCMC against exact posteriors.

Example::

    >>> import bayes_klrl as bk
    >>> task = bk.load_task("markov")
    >>> result = bk.fit(bk.ReinforceTrainer(task, task.make_policy(), 1024), steps=300, seed=0)
    >>> bk.policy_metrics(task, result.policy).kl_q_to_posterior < 0.1
    True
"""

from .compare import CompareConfig, Comparison, run_compare, save_comparison
from .diagnostics import diagnostics_table, importance_inference_data, load_netcdf, mcmc_inference_data
from .exact import (
    ExactPosterior,
    PolicyMetrics,
    exact_elbo,
    exact_forward_kl,
    exact_objective,
    exact_posterior,
    policy_metrics,
)
from .infer.bounds import KLBracket, LogZBounds, exact_posterior_draws, kl_bracket, log_z_bounds
from .infer.importance import ImportanceResult, importance_sample, policy_diagnostics
from .infer.mcmc import MCMCResult, run_mcmc
from .infer.smc import SMCResult, smc
from .infer.svi import SVITrainer, gradient_variance
from .infer.twists import TwistTrainer, exact_twist, learned_twist
from .lm import AutoregressiveLM, CategoricalLM, MarkovLM, TabularPolicy
from .lm.hf import HFCausalLM, LoRASettings
from .methods import METHODS, Method, MethodResult, Row, make_trainer, register
from .modelfile import load_task
from .rl import DPGTrainer, PPOTrainer, ReinforceTrainer
from .rl.recipes import PRESETS, Recipe
from .samples import ScoredSamples, WeightSummary, score, weight_summary
from .task import RewardError, Task
from .training import FitResult, OptimizerSettings, Trainer, fit

__version__ = "0.1.0"

__all__ = [
    "KLBracket",
    "LogZBounds",
    "SMCResult",
    "TwistTrainer",
    "exact_posterior_draws",
    "exact_twist",
    "kl_bracket",
    "learned_twist",
    "log_z_bounds",
    "smc",
    "METHODS",
    "PRESETS",
    "AutoregressiveLM",
    "CategoricalLM",
    "CompareConfig",
    "Comparison",
    "DPGTrainer",
    "ExactPosterior",
    "FitResult",
    "HFCausalLM",
    "ImportanceResult",
    "LoRASettings",
    "MCMCResult",
    "MarkovLM",
    "Method",
    "MethodResult",
    "OptimizerSettings",
    "PPOTrainer",
    "PolicyMetrics",
    "Recipe",
    "ReinforceTrainer",
    "RewardError",
    "Row",
    "SVITrainer",
    "ScoredSamples",
    "TabularPolicy",
    "Task",
    "Trainer",
    "WeightSummary",
    "diagnostics_table",
    "exact_elbo",
    "exact_forward_kl",
    "exact_objective",
    "exact_posterior",
    "fit",
    "gradient_variance",
    "importance_sample",
    "importance_inference_data",
    "load_netcdf",
    "mcmc_inference_data",
    "load_task",
    "make_trainer",
    "policy_diagnostics",
    "policy_metrics",
    "register",
    "run_compare",
    "run_mcmc",
    "save_comparison",
    "score",
    "weight_summary",
]
