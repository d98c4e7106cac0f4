r"""β as a likelihood temperature, and the collapse of REINFORCE without the KL term.

Enumerates the posterior from a large β to a tiny one (:math:`\mathbb{E}_{\pi^*}[r]`,
:math:`\mathrm{KL}(\pi^*\|\pi_0)`, :math:`H(\pi^*)`, and their β → 0 limit, π0 conditioned on
:math:`\arg\max r`); then trains REINFORCE with and without the KL term at the task's β and logs the exact
policy entropy and the distinct sequences among its draws: without the term the policy collapses onto a few
high-reward sequences.

Writes into --out: sweep.csv, collapse.csv, summary.json, beta_sweep.png.

Example (the quick settings take about a minute on 2 CPU cores)::

    python analysis/beta_sweep.py --quick --out runs/report/beta_sweep

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``python analysis/report.py``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from _common import (
    check_at_least_two,
    check_positive,
    expected_distinct,
    experiment_main,
    fit_copy,
    load,
    mean,
    write_summary,
)
from _figures import band, color, figure, label, log_y, read_csv, read_json, save, seeds_note, style

from bayes_klrl.config import Preset, option
from bayes_klrl.exact import ExactPosterior, enumerate_sequences, exact_posterior, policy_metrics
from bayes_klrl.lm import AutoregressiveLM
from bayes_klrl.storage import write_csv

NAME = "beta_sweep"
#: REINFORCE without the KL term, then with it
VARIANTS = ("rl_no_kl", "rl")


@dataclass(frozen=True)
class Config(Preset):
    """The posterior from a large β to a tiny one, and REINFORCE with and without the KL term at the task's β."""

    task: str = option("markov", "shipped task name or model file (must be enumerable)")
    beta_max: float = option(30.0, "largest β of the sweep")
    beta_min: float = option(0.01, "smallest β of the sweep")
    num_betas: int = option(25, "β values, log-spaced")
    seeds: int = option(5, "runs per variant, seeds 0..seeds-1")
    steps: int = option(1000, "REINFORCE steps per run")
    num_sequences: int = option(256, "sequences (reward evaluations) per step")
    lr: float = option(0.05, "Adam learning rate")
    log_every: int = option(20, "steps between exact evaluations")
    distinct_samples: int = option(256, "draws whose distinct sequences are counted")

    QUICK: ClassVar[dict] = {"num_betas": 15, "seeds": 3, "steps": 400, "log_every": 20}

    def __post_init__(self):
        check_positive(self, "beta_max", "beta_min", "num_betas", "seeds", "steps", "lr", "log_every")
        check_positive(self, "distinct_samples")
        if self.beta_min >= self.beta_max:
            raise ValueError(f"beta_min ({self.beta_min}) must be below beta_max ({self.beta_max})")
        check_at_least_two(self, "num_sequences")


def limit_posterior(posterior: ExactPosterior) -> dict:
    r"""The β → 0 limit: π0 conditioned on :math:`\arg\max r` (its entropy and size)."""
    r = posterior.rewards
    best = r == r.max()
    log_p = posterior.log_prior[best]
    log_p = log_p - torch.logsumexp(log_p, 0)
    return {
        "max_reward": float(r.max()),
        "argmax_size": int(best.sum()),
        "entropy": float(-(log_p.exp() * log_p).sum()),
    }


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``sweep.csv`` (exact posterior figures per β), ``collapse.csv`` (REINFORCE with and without the
    KL term over training: exact entropy, :math:`\mathbb{E}_q[r]`, KL to π*, distinct sequences among
    ``distinct_samples`` draws) and ``summary.json``.
    """
    out = Path(out)
    task = load(config.task)
    betas = np.geomspace(config.beta_max, config.beta_min, config.num_betas)
    sweep = []
    for beta in betas:
        post = exact_posterior(task.replace(beta=float(beta)))
        sweep.append(
            {
                "beta": float(beta),
                "expected_reward": post.expected_reward,
                "kl_to_prior": post.kl_to_prior,
                "entropy": post.entropy,
                "log_z": post.log_z,
                "top_probability": float(post.log_probs.max().exp()),
                "expected_distinct": expected_distinct(post.log_probs, config.distinct_samples),
            }
        )
    write_csv(out / "sweep.csv", sweep)

    posterior = exact_posterior(task)
    x_all = enumerate_sequences(task.vocab_size, task.length).to(task.prior.device)
    template = task.make_policy("auto")  # built once, copied per run

    def evaluate(policy: AutoregressiveLM) -> dict:
        m = policy_metrics(task, policy, posterior)
        with torch.no_grad():
            draws = policy.sample(config.distinct_samples, task.length)  # the RNG is restored by fit
            log_q = policy.log_prob(x_all)
        return {
            "entropy": m.entropy,
            "expected_reward": m.expected_reward,
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_to_prior": m.kl_to_prior,
            "distinct": int(torch.unique(draws, dim=0).shape[0]),
            "expected_distinct": expected_distinct(log_q, config.distinct_samples),
        }

    rows = []
    for seed in range(config.seeds):
        for variant in VARIANTS:
            result = fit_copy(variant, task, template, config, seed, evaluate=evaluate, progress=progress)
            for h in result.history:
                rows.append(
                    {
                        "variant": variant,
                        "seed": seed,
                        "step": h["step"],
                        "reward_evaluations": h["reward_evaluations"],
                        **{k: h[k] for k in ("entropy", "expected_reward", "kl_q_to_posterior", "kl_to_prior")},
                        "distinct": h["distinct"],
                        "expected_distinct": h["expected_distinct"],
                    }
                )
    write_csv(out / "collapse.csv", rows)
    prior_metrics = policy_metrics(task, task.prior, posterior)
    final = {}
    for variant in VARIANTS:
        last = [r for r in rows if r["variant"] == variant and r["step"] == config.steps]
        final[variant] = {
            "entropy_mean": mean(last, "entropy"),
            "entropy_max": float(np.max([r["entropy"] for r in last])),
            "distinct_mean": mean(last, "distinct"),
            "expected_reward_mean": mean(last, "expected_reward"),
        }
    return write_summary(
        out,
        config,
        task,
        posterior={
            "entropy": posterior.entropy,
            "expected_reward": posterior.expected_reward,
            "kl_to_prior": posterior.kl_to_prior,
            "expected_distinct": expected_distinct(posterior.log_probs, config.distinct_samples),
        },
        prior={"entropy": prior_metrics.entropy, "expected_reward": prior_metrics.expected_reward},
        beta_to_zero_limit=limit_posterior(posterior),
        final=final,
    )


def plot(out: str | Path) -> list[Path]:
    """``beta_sweep.png`` from ``sweep.csv``, ``collapse.csv`` and ``summary.json``."""
    out = Path(out)
    sweep, collapse, summary = (
        read_csv(out / "sweep.csv"),
        read_csv(out / "collapse.csv"),
        read_json(out / "summary.json"),
    )
    beta, limit, post, prior = summary["beta"], summary["beta_to_zero_limit"], summary["posterior"], summary["prior"]
    exact, no_kl = color("exact"), color("rl_no_kl")
    with style():
        fig, axes = figure(2, 2, (12.5, 9.0))
        (ax_r, ax_h), (ax_ent, ax_dist) = axes

        ax_r.plot(sweep["beta"], sweep["expected_reward"], "o-", color=exact, ms=3.5, label="E_π*[r]")
        ax_r.axhline(limit["max_reward"], color=no_kl, ls=":", label=f"max r = {limit['max_reward']:g}")
        ax_r.axhline(prior["expected_reward"], color=color("prior"), ls="--", label="E_π0[r] (the prior)")
        ax_r.set(title="Expected reward under the posterior", ylabel="reward (task units)")
        ax_h.plot(sweep["beta"], sweep["entropy"], "o-", color=exact, ms=3.5, label="H(π*)")
        ax_h.plot(sweep["beta"], sweep["kl_to_prior"], "s-", color=color("svi"), ms=3.5, label="KL(π* ‖ π0)")
        ax_h.axhline(prior["entropy"], color=color("prior"), ls="--", label="H(π0)")
        ax_h.axhline(
            limit["entropy"],
            color=no_kl,
            ls=":",
            label=f"β → 0 limit: H(π0 | argmax r), {limit['argmax_size']} sequences",
        )
        ax_h.set(title="Entropy of the posterior and its KL from the prior", ylabel="nats")
        for ax in (ax_r, ax_h):
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.axvline(beta, color="black", lw=0.8, alpha=0.6)
            ax.text(beta, ax.get_ylim()[1], f" task β = {beta:g}", va="top", ha="left", fontsize=8.5)
            ax.set_xlabel("β (log scale; weaker KL penalty to the right)")
        ax_r.legend(loc="center right")
        ax_h.legend(loc="center left")

        for variant in VARIANTS:
            c = collapse[collapse["variant"] == variant]
            band(ax_ent, c, "reward_evaluations", "entropy", color=color(variant), label=label(variant))
            band(ax_dist, c, "reward_evaluations", "distinct", color=color(variant), label=label(variant))
        ax_ent.axhline(post["entropy"], color=exact, ls="--", label=f"H(π*) = {post['entropy']:.2f}")
        ax_ent.axhline(0.1 * post["entropy"], color=exact, ls=":", lw=1, label="0.1 × H(π*)")
        n = int(summary["config"]["distinct_samples"])
        ax_dist.axhline(
            post["expected_distinct"], color=exact, ls="--", label=f"π*: {post['expected_distinct']:.0f} expected"
        )
        ax_ent.set(title=f"Policy entropy during training at β = {beta:g}", ylabel="H(q) (nats, exact)")
        ax_dist.set(
            title=f"Distinct sequences among {n} draws of the policy",
            ylabel=f"distinct sequences (of {n})",
        )
        log_y(ax_dist)
        for ax in (ax_ent, ax_dist):
            ax.set_xlabel("reward evaluations")
            ax.legend(loc="upper right", title=seeds_note(collapse), title_fontsize=8)
        fig.suptitle(f"β as a likelihood temperature, and the collapse without the KL term (task '{summary['task']}')")
        return [save(fig, out / "beta_sweep.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
