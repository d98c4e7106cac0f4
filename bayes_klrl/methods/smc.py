r"""The ``smc`` method: (twisted) SMC bounds on :math:`\log Z` from below (SMC) and above (conditional SMC on exact
posterior draws), and the KL brackets they give every trained policy of the run (:func:`bracket_rows`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import torch

from ..diagnostics import smc_inference_data
from ..infer.bounds import NoExactDraws, exact_posterior_draws, kl_bracket, log_z_bounds
from ..infer.twists import PolicyTwist, TwistTrainer, ZeroTwist, exact_twist, learned_twist
from ..task import Task
from .registry import Method
from .row import MONTE_CARLO, MethodResult, Row, RunContext
from .samplers import _tv_to_posterior
from .trained import fit_in_context

__all__ = ["SMCMethod", "bracket_rows"]


class SMCMethod(Method):
    name, label = "smc", "SMC bounds on log Z"
    description = (
        "(twisted) sequential Monte Carlo: log Z bracketed by SMC (lower) and conditional SMC on exact posterior "
        "draws (upper); brackets every trained policy's KL to pi*"
    )
    options = (
        "particles", "smc_runs", "twist", "resample_threshold", "twist_steps", "twist_lr", "twist_policy",
        "max_rejection_draws",
    )  # fmt: skip

    def check(self, config) -> None:
        if config.twist != "policy":
            return
        order = list(config.methods)
        source = config.twist_policy
        if source not in order or order.index(source) > order.index(self.name):
            raise ValueError(f"--twist policy reads the policy of --twist-policy {source}: put {source} before smc")

    def check_task(self, task: Task, config, enumerable: bool) -> None:
        if config.twist == "exact" and not enumerable:
            raise ValueError(
                f"--twist exact needs the enumerated posterior; task '{task.name}' has {task.num_sequences:,} "
                "sequences: use --twist learned, policy or none"
            )

    def _twist(self, context: RunContext):
        task, config = context.task, context.config
        if config.twist == "none":
            return ZeroTwist(task.vocab_size), 0
        if config.twist == "exact":
            return exact_twist(task, context.posterior), 0
        if config.twist == "policy":
            return PolicyTwist(context.fits[config.twist_policy].policy), 0
        twist = learned_twist(task, config.policy)
        trainer = TwistTrainer(task, twist, config.num_sequences, lr=config.twist_lr)
        result = fit_in_context(trainer, context, "smc_twist", steps=config.twist_steps, lr=config.twist_lr)
        return twist, result.reward_evaluations

    def run(self, context: RunContext) -> MethodResult:
        task, config, posterior = context.task, context.config, context.posterior
        t0 = time.perf_counter()
        twist, twist_evaluations = self._twist(context)
        try:
            draws = exact_posterior_draws(  # one per conditional run, and enough to estimate each policy's EUBO
                task,
                max(config.smc_runs, config.eval_samples),
                posterior=posterior,
                seed=config.seed,
                max_proposals=config.max_rejection_draws,
                chunk_size=max(2, min(4096, 2**25 // task.vocab_size)),
            )
            source = draws.source
        except NoExactDraws as exc:
            draws, source = None, f"none: {exc}"
        bounds = log_z_bounds(
            task,
            num_particles=config.particles,
            num_runs=config.smc_runs,
            twist=twist,
            draws=draws,
            resample_threshold=config.resample_threshold,
            seed=config.seed,
        )
        wall = time.perf_counter() - t0
        lower, upper = bounds.lower, bounds.upper
        idata, resampled = smc_inference_data(task, lower, seed=config.seed)
        row = Row(
            method=self.name,
            scored=MONTE_CARLO,
            log_z=lower.log_z_pooled,
            log_z_lower=bounds.log_z_lower,
            log_z_lower_se=lower.log_z_se,
            log_z_upper=bounds.log_z_upper,
            log_z_upper_se=None if upper is None else upper.log_z_se,
            ess=float(lower.ess.mean()),
            resampling_steps=float(lower.resampling_steps.double().mean()),
            expected_reward=_pooled_mean_reward(lower),
            tv_to_posterior=_tv_to_posterior(resampled, context),
            reward_evaluations=bounds.reward_evaluations + twist_evaluations,
            wall_seconds=wall,
            settings={
                "twist": config.twist,
                "particles": config.particles,
                "smc_runs": config.smc_runs,
                "resample_threshold": config.resample_threshold,
                "exact_draws": source,
                "rejection_acceptance": None if draws is None else draws.acceptance_rate,
            },
        )
        return MethodResult(row=row, inference_data=idata, bounds=bounds)


def _pooled_mean_reward(result) -> float:
    r""":math:`\hat{\mathbb{E}}_{\pi^*}[r]` from SMC runs: each run's self-normalized mean weighted by its
    :math:`\hat Z_k` (the runs pooled as one unbiased estimate of the unnormalized integral)."""
    log_w = result.log_weights  # (K, N)
    reward = torch.where(torch.isfinite(result.reward), result.reward, torch.zeros_like(result.reward))
    within = torch.softmax(log_w, -1)  # (K, N)
    run = torch.softmax(result.log_z, 0)  # (K,)
    means = torch.nan_to_num((within * reward).sum(-1))  # (K,)
    return float((run * means).sum())


def bracket_rows(task: Task, results: Mapping[str, MethodResult]) -> dict[str, MethodResult]:
    """Every trained method's row with its KL bracket from the ``smc`` row's bounds on log Z (unchanged when no
    ``smc`` ran)."""
    bounds = next((r.bounds for r in results.values() if r.bounds is not None), None)
    if bounds is None:
        return dict(results)
    out = {}
    for name, result in results.items():
        if result.fit is not None and result.draws is not None:
            bracket = kl_bracket(task, result.fit.policy, bounds, log_weights=result.draws.log_weight)
            row = dataclasses.replace(
                result.row,
                kl_q_to_posterior_lower=bracket.kl_q_lower,
                kl_q_to_posterior_upper=bracket.kl_q_upper,
                kl_posterior_to_q_lower=bracket.kl_p_lower,
                kl_posterior_to_q_upper=bracket.kl_p_upper,
            )
            result = dataclasses.replace(result, row=row)
        out[name] = result
    return out
