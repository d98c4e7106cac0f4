r"""The posterior five ways: exact enumeration, importance sampling, MCMC, and the SVI and RL policies.

Enumerates π* on one task and compares, on its most probable sequences (decoded on the word task), the
probability each method gives them: the frequencies of importance sampling (prior proposal, resampled) and of
MCMC draws, and the exact :math:`q(x)` of the trained SVI and RL policies; with each one's total variation to
π* over all sequences and, for the samplers, the total variation that as many exact draws of π* have.

Writes into --out: top_sequences.csv, summary.json, posterior_bars.png.

Example (the quick settings take about a minute on 2 CPU cores)::

    python analysis/posterior.py --quick --out runs/report/posterior

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``python analysis/report.py``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from _common import (
    check_at_least_two,
    check_positive,
    experiment_main,
    fit_copy,
    load,
    sequence_labels,
    write_summary,
)
from _figures import color, figure, label, read_csv, read_json, save, style

from bayes_klrl.config import Preset, check_choices, option
from bayes_klrl.exact import ExactPosterior, exact_posterior, policy_metrics
from bayes_klrl.infer.importance import importance_sample
from bayes_klrl.infer.mcmc import run_mcmc, total_variation
from bayes_klrl.storage import write_csv

NAME = "posterior"
KERNELS = ("imh", "gibbs")


@dataclass(frozen=True)
class Config(Preset):
    """π* from enumeration, importance sampling, MCMC and the SVI and RL policies, on the top sequences."""

    task: str = option("words_sentiment", "shipped task name or model file (must be enumerable)")
    beta: float | None = option(None, "override the task's β")
    policy: str = option("auto", "policy class: auto, tabular or copy", choices=("auto", "tabular", "copy"))
    seed: int = option(0, "seeds the training runs, the importance sampler and the chains")
    steps: int = option(600, "optimizer steps of SVI and of RL")
    num_sequences: int = option(256, "sequences (reward evaluations) per step")
    lr: float = option(0.05, "Adam learning rate")
    is_samples: int = option(100_000, "draws from the prior for importance sampling")
    mcmc_kernel: str = option("imh", "MCMC kernel: imh (prior proposal) or gibbs", choices=KERNELS)
    mcmc_chains: int = option(4, "MCMC chains")
    mcmc_samples: int = option(2500, "MCMC draws kept per chain")
    mcmc_warmup: int = option(200, "MCMC warm-up steps per chain")
    top_k: int = option(12, "sequences shown, the most probable under π*")

    QUICK: ClassVar[dict] = {"steps": 200, "is_samples": 20_000, "mcmc_samples": 500, "mcmc_warmup": 100}

    def __post_init__(self):
        check_positive(self, "steps", "lr", "is_samples", "top_k", "mcmc_chains", "mcmc_samples")
        check_choices(self)
        check_at_least_two(self, "num_sequences", "is_samples")


def frequencies(sequences: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Fraction of the rows of ``sequences`` ``(..., T)`` equal to each row of ``targets`` ``(K, T)``."""
    flat = sequences.reshape(-1, sequences.shape[-1]).cpu()
    return [float((flat == row).all(-1).double().mean()) for row in targets.cpu()]


def tv_of_exact_draws(posterior: ExactPosterior, num_draws: int, seed: int) -> float:
    """Total variation to π* of the empirical distribution of ``num_draws`` exact draws of π*: the part of a
    sampler's empirical TV that is only the noise of having finitely many draws."""
    generator = torch.Generator().manual_seed(seed)
    probs = posterior.log_probs.exp()
    counts = torch.bincount(
        torch.multinomial(probs, num_draws, replacement=True, generator=generator), minlength=probs.numel()
    )
    return float(0.5 * (counts.double() / num_draws - probs).abs().sum())


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``top_sequences.csv``: the probability of each of the ``top_k`` most probable sequences of π*
    under π*, importance sampling (prior proposal, resampled), MCMC, and the trained SVI and RL policies
    (exact :math:`q(x)`); and ``summary.json`` with each one's total variation to π* over all sequences, and for
    the two samplers the total variation that as many exact draws of π* have (finite-sample noise alone)."""
    out = Path(out)
    task = load(config.task, config.beta)
    posterior = exact_posterior(task)
    top, top_probs = posterior.top_k(config.top_k)
    labels = sequence_labels(task, top)
    template = task.make_policy(config.policy)  # a word-task table takes seconds to build: build it once
    timing, estimates, tv = {}, {"exact": top_probs.tolist()}, {"exact": 0.0}

    t0 = time.perf_counter()
    imp = importance_sample(task, None, num_samples=config.is_samples, chunk_size=8192, seed=config.seed)
    timing["is"] = time.perf_counter() - t0
    estimates["is"] = frequencies(imp.resampled, top)
    tv["is"] = total_variation(imp.resampled, posterior.log_probs, task.vocab_size)
    tv_exact_draws = {"is": tv_of_exact_draws(posterior, config.is_samples, config.seed)}
    t0 = time.perf_counter()
    chains = run_mcmc(
        task,
        config.mcmc_kernel,
        num_chains=config.mcmc_chains,
        num_samples=config.mcmc_samples,
        warmup=config.mcmc_warmup,
        seed=config.seed,
    )
    timing["mcmc"] = time.perf_counter() - t0
    estimates["mcmc"] = frequencies(chains.draws, top)
    tv["mcmc"] = total_variation(chains.draws, posterior.log_probs, task.vocab_size)
    tv_exact_draws["mcmc"] = tv_of_exact_draws(posterior, chains.num_chains * chains.num_draws, config.seed)
    for method in ("svi", "rl"):
        result = fit_copy(method, task, template, config, config.seed, progress=progress)
        timing[method] = result.wall_seconds
        with torch.no_grad():
            estimates[method] = result.policy.log_prob(top.to(task.prior.device)).double().exp().cpu().tolist()
        tv[method] = policy_metrics(task, result.policy, posterior).tv_to_posterior
    rows = []
    for method, probs in estimates.items():
        for rank, (sequence, p) in enumerate(zip(labels, probs)):
            rows.append({"method": method, "rank": rank, "sequence": sequence, "probability": p})
    write_csv(out / "top_sequences.csv", rows)
    return write_summary(
        out,
        config,
        task,
        log_z=posterior.log_z,
        entropy=posterior.entropy,
        top_k_mass=float(top_probs.sum()),
        tv_to_posterior=tv,
        tv_of_as_many_exact_draws=tv_exact_draws,
        draws={
            "is": imp.num_samples,
            "is_ess": imp.ess,
            "mcmc": chains.num_chains * chains.num_draws,
            "mcmc_kernel": chains.kernel,
            "reward_evaluations_per_policy": config.steps * config.num_sequences,
        },
        seconds=timing,
    )


def plot(out: str | Path) -> list[Path]:
    """``posterior_bars.png`` from ``top_sequences.csv`` and ``summary.json``."""
    out = Path(out)
    top, summary = read_csv(out / "top_sequences.csv"), read_json(out / "summary.json")
    draws, tv, noise = summary["draws"], summary["tv_to_posterior"], summary["tv_of_as_many_exact_draws"]
    methods = list(dict.fromkeys(top["method"]))
    sequences = top[top["method"] == methods[0]].sort_values("rank")["sequence"].tolist()
    k = len(sequences)
    kernel = label(draws["mcmc_kernel"])
    evals = f"{draws['reward_evaluations_per_policy']:,} reward evaluations"
    legend = {
        "exact": label("exact"),
        "is": f"importance sampling: {draws['is']:,} prior draws, resampled (TV {tv['is']:.3f}; "
        f"as many exact draws: {noise['is']:.3f})",
        "mcmc": f"MCMC, {kernel}: {draws['mcmc']:,} draws (TV {tv['mcmc']:.3f}; as many exact draws: {noise['mcmc']:.3f})",
        "svi": f"{label('svi')}: exact q(x) after {evals} (TV {tv.get('svi', math.nan):.3f})",
        "rl": f"{label('rl')}: exact q(x) after {evals} (TV {tv.get('rl', math.nan):.3f})",
    }
    with style():
        fig, axes = figure(1, 1, (11.0, 2.6 + 0.62 * k))
        ax = axes[0, 0]
        height = 0.84 / len(methods)
        for i, method in enumerate(methods):
            frame = top[top["method"] == method].sort_values("rank")
            ys = np.arange(k) + (i - (len(methods) - 1) / 2) * height
            ax.barh(ys, frame["probability"], height, color=color(method), label=legend.get(method, method))
        ax.set_yticks(np.arange(k))
        ax.set_yticklabels(sequences, fontfamily="monospace")
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set(
            xlabel="probability of the sequence",
            title=f"The {k} most probable sequences of π* on task '{summary['task']}' (β = {summary['beta']:g}; "
            f"together {summary['top_k_mass']:.2f} of its mass)",
        )
        fig.legend(
            *ax.get_legend_handles_labels(),
            loc="outside lower center",
            ncols=1,
            title="TV: total variation to π* over all sequences (samplers: of their empirical distribution)",
            title_fontsize=8.5,
        )
        return [save(fig, out / "posterior_bars.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
