r"""The methods that do not train a policy: the exact row (enumeration) and the samplers of :math:`\pi^*`
(importance sampling, MCMC), each scored by the total variation of its draws to the posterior."""

from __future__ import annotations

import time

import torch

from ..diagnostics import importance_inference_data, mcmc_inference_data, scalar_diagnostics
from ..exact import total_variation
from ..infer.importance import NoSupportError, importance_sample
from ..infer.mcmc import run_mcmc
from .registry import Method
from .row import EXACT, MONTE_CARLO, MethodResult, Row, RunContext, _importance_columns

__all__ = ["GIBBS_MAX_VOCAB", "ExactMethod", "ImportanceMethod", "MCMCMethod"]


def _tv_to_posterior(draws: torch.Tensor, context: RunContext) -> float | None:
    r"""Total variation between the histogram of ``draws`` ``(..., T)`` and the exact posterior (``None`` without
    one): a sampler's distance to :math:`\pi^*`."""
    if context.posterior is None:
        return None
    return total_variation(draws, context.posterior.log_probs, context.task.vocab_size)


class ExactMethod(Method):
    name, label, kind = "exact", "exact π* (enumeration)", "exact"
    description = "the posterior by enumerating all V^T sequences (the reference row)"

    def run(self, context: RunContext) -> MethodResult:
        posterior, task = context.posterior, context.task
        if posterior is None:
            raise ValueError(
                f"method 'exact' needs an enumerable task; '{task.name}' has {task.num_sequences:,} sequences"
            )
        row = Row(
            method=self.name,
            scored=EXACT,
            elbo=posterior.log_z,
            log_z=posterior.log_z,
            kl_q_to_posterior=0.0,
            kl_posterior_to_q=0.0,
            tv_to_posterior=0.0,
            expected_reward=posterior.expected_reward,
            kl_to_prior=posterior.kl_to_prior,
            reward_evaluations=task.num_sequences,
            wall_seconds=context.exact_seconds,
        )
        return MethodResult(row=row)


class ImportanceMethod(Method):
    name, label = "is", "importance sampling, prior proposal"
    description = "self-normalized importance sampling, the prior as proposal, on a trained method's reward budget"

    def run(self, context: RunContext) -> MethodResult:
        task, config = context.task, context.config
        num_samples = max(config.steps * config.num_sequences, config.eval_samples)
        t0 = time.perf_counter()
        try:
            imp = importance_sample(
                task, None, num_samples=num_samples, chunk_size=max(config.num_sequences, 4096), seed=config.seed
            )
        except NoSupportError as exc:  # the other rows are still written; this one says why it is empty
            row = Row(
                method=self.name,
                scored=MONTE_CARLO,
                reward_evaluations=num_samples,
                wall_seconds=time.perf_counter() - t0,
                settings={"proposal": "prior"},
                importance_failed=str(exc),
            )
            return MethodResult(row=row)
        wall = time.perf_counter() - t0
        row = Row(
            method=self.name,
            scored=MONTE_CARLO,
            expected_reward=imp.expected_reward,
            tv_to_posterior=_tv_to_posterior(imp.resampled, context),
            reward_evaluations=num_samples,
            wall_seconds=wall,
            settings={"proposal": "prior"},
            **_importance_columns(imp),
        )
        return MethodResult(row=row, inference_data=importance_inference_data(task, imp, self.name))


#: the largest vocabulary for which ``mcmc_kernel="auto"`` picks Gibbs (V reward evaluations per site)
GIBBS_MAX_VOCAB = 256


class MCMCMethod(Method):
    name, label = "mcmc", "MCMC"
    description = "vectorized MCMC chains (single-site Gibbs or independence MH) run by pyro.infer.MCMC"
    options = ("mcmc_kernel", "mcmc_proposal", "chains", "draws", "warmup")

    def check(self, config) -> None:
        proposal = config.mcmc_proposal
        if proposal == "prior":
            return
        if config.mcmc_kernel == "gibbs":
            raise ValueError("the Gibbs kernel uses exact full conditionals; --mcmc-proposal needs imh")
        order = list(config.methods)
        if proposal not in order or order.index(proposal) > order.index(self.name):
            raise ValueError(f"--mcmc-proposal {proposal} needs method {proposal!r} before mcmc in --methods")

    def run(self, context: RunContext) -> MethodResult:
        task, config = context.task, context.config
        kernel = config.mcmc_kernel
        proposal = None if config.mcmc_proposal == "prior" else context.fits[config.mcmc_proposal].policy
        if kernel == "auto":
            kernel = "gibbs" if task.vocab_size <= GIBBS_MAX_VOCAB and proposal is None else "imh"
        t0 = time.perf_counter()
        result = run_mcmc(
            task,
            kernel,
            num_chains=config.chains,
            num_samples=config.draws,
            warmup=config.warmup,
            proposal=proposal,
            init="uniform" if proposal is None else "prior",
            seed=config.seed,
        )
        wall = time.perf_counter() - t0
        idata = mcmc_inference_data(task, result)
        diag = scalar_diagnostics(idata, "reward")
        steps = config.chains * (config.draws + config.warmup)
        row = Row(
            method=self.name,
            scored=MONTE_CARLO,
            expected_reward=result.expected_reward,
            tv_to_posterior=_tv_to_posterior(result.draws, context),
            rhat=diag["rhat"],
            ess_bulk=diag["ess_bulk"],
            acceptance_rate=float(result.acceptance_rate.mean()),
            reward_evaluations=steps * task.length * task.vocab_size if kernel == "gibbs" else steps,
            wall_seconds=wall,
            settings={"kernel": kernel, "proposal": config.mcmc_proposal if kernel == "imh" else None},
        )
        return MethodResult(row=row, inference_data=idata)
