r"""SVI against REINFORCE on the same task and seeds, scored exactly at every logged step.

Fits the Pyro SVI guide (leave-one-out ELBO) and the plain-torch REINFORCE trainer (KL in the reward) from the
same seeds; logs the exact :math:`\mathrm{ELBO}(q)` and, computed separately, :math:`J(q)/\beta` (they must
coincide: :math:`\mathrm{ELBO} = J/\beta = \log Z - \mathrm{KL}(q\|\pi^*)`), and :math:`\mathrm{KL}(q\|\pi^*)`
against reward evaluations and wall time; measures the gradient variance of the SVI estimators (loo, trace,
tracegraph) at the start and at the end of training.

Writes into --out: history.csv, gradient_variance.csv, summary.json, learning_curves.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/learning_curves.py --quick --out runs/report/learning_curves

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``python analysis/report.py``.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from _common import check_at_least_two, check_positive, experiment_main, fit_copy, load, write_summary
from _figures import band, color, figure, label, log_y, read_csv, read_json, save, seeds_note, style

from bayes_klrl.config import Preset, check_choices, option
from bayes_klrl.exact import exact_elbo, exact_objective, exact_posterior, policy_metrics
from bayes_klrl.infer.svi import gradient_variance
from bayes_klrl.lm import AutoregressiveLM
from bayes_klrl.storage import write_csv

#: the experiment's name: its folder in the report
NAME = "learning_curves"
METHODS = ("svi", "rl")


@dataclass(frozen=True)
class Config(Preset):
    """SVI against REINFORCE on one task and the same seeds, scored exactly at every logged step."""

    task: str = option("markov", "shipped task name or model file (must be enumerable)")
    seeds: int = option(5, "runs per method, seeds 0..seeds-1")
    steps: int = option(1500, "optimizer steps per run")
    num_sequences: int = option(1024, "sequences (reward evaluations) per step")
    lr: float = option(0.02, "Adam learning rate of both methods")
    log_every: int = option(25, "steps between exact evaluations")
    variance_sequences: int = option(256, "sequences per batch when measuring gradient variance")
    variance_batches: int = option(100, "independent batches per gradient-variance measurement")
    estimators: tuple[str, ...] = option(
        ("loo", "trace", "tracegraph"),
        "SVI estimators whose variance is measured",
        choices=("loo", "trace", "tracegraph"),
    )

    QUICK: ClassVar[dict] = {
        "steps": 200,
        "num_sequences": 256,
        "lr": 0.05,
        "log_every": 20,
        "variance_sequences": 64,
        "variance_batches": 20,
    }

    def __post_init__(self):
        check_positive(self, "seeds", "steps", "num_sequences", "lr", "log_every", "variance_batches")
        check_choices(self)
        check_at_least_two(self, "variance_sequences")


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Fit SVI and RL for each seed; write ``history.csv``, ``gradient_variance.csv`` and ``summary.json``.

    Logged at every ``log_every`` steps per run: ``exact_elbo`` (:func:`~bayes_klrl.exact.exact_elbo`),
    ``objective_over_beta`` (:func:`~bayes_klrl.exact.exact_objective` / β, computed separately),
    ``kl_q_to_posterior``, ``kl_posterior_to_q``, ``expected_reward``, ``entropy``, with ``reward_evaluations``
    and ``wall_seconds`` (training time only). Gradient variance: :func:`~bayes_klrl.infer.svi.gradient_variance`
    of each estimator at the start (q = π0) and at the end (the seed's trained SVI policy).
    """
    out = Path(out)
    task = load(config.task)
    posterior = exact_posterior(task)
    template = task.make_policy("auto")  # built once, copied per run

    def evaluate(policy: AutoregressiveLM) -> dict:
        with torch.no_grad():
            elbo = float(exact_elbo(task, policy))
            objective = float(exact_objective(task, policy))
        m = policy_metrics(task, policy, posterior)
        return {
            "exact_elbo": elbo,
            "objective_over_beta": objective / task.beta,
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_posterior_to_q": m.kl_posterior_to_q,
            "expected_reward": m.expected_reward,
            "entropy": m.entropy,
        }

    keep = ("step", "reward_evaluations", "wall_seconds", "exact_elbo", "objective_over_beta")
    keep += ("kl_q_to_posterior", "kl_posterior_to_q", "expected_reward", "entropy")
    rows, variance_rows, trained = [], [], {}
    for seed in range(config.seeds):
        for method in METHODS:
            result = fit_copy(method, task, template, config, seed, evaluate=evaluate, progress=progress)
            rows += [{"method": method, "seed": seed, **{k: h[k] for k in keep}} for h in result.history]
            trained[method, seed] = result.policy
        for point, policy in (("start", copy.deepcopy(template)), ("end", trained["svi", seed])):
            for estimator in config.estimators:
                t0 = time.perf_counter()
                stats = gradient_variance(
                    task,
                    policy,
                    estimator,
                    num_sequences=config.variance_sequences,
                    num_batches=config.variance_batches,
                    seed=seed,
                )
                variance_rows.append(
                    {
                        "estimator": estimator,
                        "point": point,
                        "seed": seed,
                        "total_variance": stats.total_variance,
                        "num_sequences": stats.num_sequences,
                        "num_batches": stats.num_batches,
                        "seconds": time.perf_counter() - t0,
                    }
                )
    write_csv(out / "history.csv", rows)
    write_csv(out / "gradient_variance.csv", variance_rows)
    gaps = [abs(r["exact_elbo"] - r["objective_over_beta"]) for r in rows]
    final = {}
    for method in METHODS:
        last = [r for r in rows if r["method"] == method and r["step"] == config.steps]
        kls = np.array([r["kl_q_to_posterior"] for r in last])
        walls = np.array([r["wall_seconds"] for r in last])
        final[method] = {
            "kl_q_to_posterior_mean": float(kls.mean()),
            "kl_q_to_posterior_min": float(kls.min()),
            "kl_q_to_posterior_max": float(kls.max()),
            "wall_seconds_mean": float(walls.mean()),
        }
    return write_summary(
        out,
        config,
        task,
        {"log_z": posterior.log_z, "num_sequences_enumerated": task.num_sequences},
        max_abs_elbo_minus_objective_over_beta=max(gaps),
        final=final,
    )


def plot(out: str | Path) -> list[Path]:
    """``learning_curves.png`` from ``history.csv``, ``gradient_variance.csv`` and ``summary.json``."""
    out = Path(out)
    history, variance = read_csv(out / "history.csv"), read_csv(out / "gradient_variance.csv")
    summary = read_json(out / "summary.json")
    with style():
        fig, axes = figure(2, 2, (12.5, 9.0))
        (ax_elbo, ax_evals), (ax_wall, ax_var) = axes
        for method in METHODS:
            h = history[history["method"] == method]
            c, name = color(method), label(method)
            band(ax_elbo, h, "step", "exact_elbo", color=c, label=f"{name}: ELBO(q)")
            g = h.groupby("step")["objective_over_beta"].mean()
            ax_elbo.plot(g.index, g.to_numpy(), "o", mfc="none", color=c, ms=5, alpha=0.9, label=f"{name}: J(q)/β")
            band(ax_evals, h, "reward_evaluations", "kl_q_to_posterior", color=c, label=name)
            band(ax_wall, h, "wall_seconds", "kl_q_to_posterior", color=c, label=name)
        log_z = summary["log_z"]
        ax_elbo.axhline(log_z, color=color("exact"), ls="--", lw=1.2, label=f"log Z = {log_z:.4f}")
        gap = summary["max_abs_elbo_minus_objective_over_beta"]
        ax_elbo.set(
            title="ELBO(q) and J(q)/β coincide (exact, every logged step)",
            xlabel="optimizer step",
            ylabel="nats",
        )
        ax_elbo.text(
            0.98,
            0.05,
            f"max |ELBO − J/β| over all points: {gap:.1e} nats\n{seeds_note(history)}",
            transform=ax_elbo.transAxes,
            ha="right",
            va="bottom",
            fontsize=8.5,
        )
        ax_elbo.legend(loc="center right")
        for ax, xlabel in ((ax_evals, "reward evaluations"), (ax_wall, "training wall time (seconds)")):
            log_y(ax)
            ax.set(xlabel=xlabel, ylabel="KL(q ‖ π*) (nats, exact)")
            ax.legend(loc="upper right", title=seeds_note(history), title_fontsize=8)
        ax_evals.set_title("Distance to the posterior per reward evaluation")
        ax_wall.set_title("Distance to the posterior per second of training")

        estimators = list(dict.fromkeys(variance["estimator"]))
        points = [("start", "at the start (q = π0)", "#9ecae1"), ("end", "at the end (trained SVI policy)", "#3182bd")]
        width = 0.38
        for i, (point, point_label, point_color) in enumerate(points):
            v = variance[variance["point"] == point].groupby("estimator")["total_variance"]
            mean, low, high = (v.mean()[estimators], v.min()[estimators], v.max()[estimators])
            xs = np.arange(len(estimators)) + (i - 0.5) * width
            ax_var.bar(xs, mean, width, color=point_color, label=point_label)
            ax_var.errorbar(xs, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="black", capsize=3, lw=1)
        ax_var.set_xticks(np.arange(len(estimators)))
        names = {
            "loo": "loo\n(leave-one-out)",
            "trace": "trace\n(Trace_ELBO)",
            "tracegraph": "tracegraph\n(TraceGraph_ELBO)",
        }
        ax_var.set_xticklabels([names.get(e, e) for e in estimators])
        log_y(ax_var)
        n_seq, n_batches = int(variance["num_sequences"].iloc[0]), int(variance["num_batches"].iloc[0])
        ax_var.set(
            title="Gradient variance of the SVI estimators",
            ylabel="Σ_p Var[∂ELBO/∂θ_p] per sequence ((nats/logit)²)",
            xlabel=f"estimator ({n_seq} sequences per batch, {n_batches} batches; "
            "bars: mean, whiskers: min–max over seeds)",
        )
        ax_var.legend(loc="upper right")
        fig.suptitle(
            f"SVI and REINFORCE on task '{summary['task']}' (β = {summary['beta']:g}, "
            f"{summary['num_sequences_enumerated']:,} sequences, scored by exact enumeration)"
        )
        return [save(fig, out / "learning_curves.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
