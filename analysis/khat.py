r"""The PSIS k̂ of the SVI and RL policies as importance proposals for π*, over training.

Trains SVI and REINFORCE on several enumerable tasks; at every logged step draws ``--khat-samples`` sequences
from the policy and records the Pareto :math:`\hat k` of the weights :math:`w = \pi_0 e^{r/\beta} / q`, the
normalized ESS, the distinct sequences among the draws, and the exact :math:`\mathrm{KL}(q\|\pi^*)` and
:math:`\mathrm{KL}(\pi^*\|q)`.

Writes into --out: khat.csv, summary.json, khat.png.

Example (the quick settings take about a minute on 2 CPU cores)::

    python analysis/khat.py --quick --out runs/report/khat

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``python analysis/report.py``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch
from _common import check_at_least_two, check_positive, experiment_main, fit_copy, load, write_summary
from _figures import band, color, figure, label, log_y, read_csv, read_json, save, seeds_note, style

from bayes_klrl.config import Preset, option
from bayes_klrl.exact import ExactPosterior, exact_posterior, policy_metrics
from bayes_klrl.infer.importance import KHAT_GOOD, KHAT_USABLE, importance_sample
from bayes_klrl.lm import AutoregressiveLM
from bayes_klrl.storage import write_csv
from bayes_klrl.task import Task

NAME = "khat"
METHODS = ("svi", "rl")


@dataclass(frozen=True)
class Config(Preset):
    """The PSIS k̂ of the SVI and RL policies as proposals for π*, logged over training on several tasks."""

    tasks: tuple[str, ...] = option(("markov", "words_sentiment"), "shipped task names or model files (enumerable)")
    seeds: int = option(3, "runs per method and task, seeds 0..seeds-1")
    steps: int = option(600, "optimizer steps per run")
    num_sequences: int = option(256, "sequences (reward evaluations) per step")
    lr: float = option(0.05, "Adam learning rate")
    log_every: int = option(25, "steps between k̂ evaluations")
    khat_samples: int = option(4000, "draws from the policy per k̂ evaluation")

    QUICK: ClassVar[dict] = {"seeds": 2, "steps": 250, "khat_samples": 2000}

    def __post_init__(self):
        check_positive(self, "seeds", "steps", "lr", "log_every", "khat_samples")
        if not self.tasks:
            raise ValueError("at least one task is needed")
        check_at_least_two(self, "num_sequences")


def khat_evaluator(task: Task, posterior: ExactPosterior, num_samples: int, seed: int):
    """``policy -> dict``: k̂, ESS and distinct draws of the policy as a proposal, and its exact divergences."""

    def evaluate(policy: AutoregressiveLM) -> dict:
        imp = importance_sample(task, policy, num_samples=num_samples, seed=seed)
        m = policy_metrics(task, policy, posterior)
        return {
            "khat": imp.khat,
            "ess": imp.ess,
            "distinct": int(torch.unique(imp.sequences, dim=0).shape[0]),
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_posterior_to_q": m.kl_posterior_to_q,
        }

    return evaluate


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``khat.csv``: for every task, method, seed and logged step the Pareto :math:`\hat k`, the normalized
    ESS and the number of distinct sequences among ``khat_samples`` draws of the policy
    (:func:`~bayes_klrl.infer.importance.importance_sample`), with the exact :math:`\mathrm{KL}(q\|\pi^*)` and
    :math:`\mathrm{KL}(\pi^*\|q)`; and ``summary.json``."""
    out = Path(out)
    rows, tasks = [], {}
    keep = ("step", "reward_evaluations", "khat", "ess", "distinct", "kl_q_to_posterior", "kl_posterior_to_q")
    for spec in config.tasks:
        task = load(spec)
        posterior = exact_posterior(task)
        template = task.make_policy("auto")
        tasks[task.name] = {"beta": task.beta, "entropy": posterior.entropy, "num_sequences": task.num_sequences}
        for seed in range(config.seeds):
            evaluate = khat_evaluator(task, posterior, config.khat_samples, seed=10_000 + seed)
            for method in METHODS:
                result = fit_copy(method, task, template, config, seed, evaluate=evaluate, progress=progress)
                for h in result.history:
                    rows.append({"task": task.name, "method": method, "seed": seed, **{k: h[k] for k in keep}})
    write_csv(out / "khat.csv", rows)
    final = {}
    for name in tasks:
        for method in METHODS:
            first = [r for r in rows if r["task"] == name and r["method"] == method and r["step"] == 0]
            last = [r for r in rows if r["task"] == name and r["method"] == method and r["step"] == config.steps]
            final[f"{name}/{method}"] = {
                "khat_start": [r["khat"] for r in first],
                "khat_end": [r["khat"] for r in last],
                "ess_end": [r["ess"] for r in last],
                "distinct_end": [r["distinct"] for r in last],
                "kl_q_to_posterior_end": [r["kl_q_to_posterior"] for r in last],
                "kl_posterior_to_q_end": [r["kl_posterior_to_q"] for r in last],
            }
    return write_summary(out, config, tasks=tasks, final=final)


def khat_for_display(values: pd.Series, low: float, high: float) -> pd.Series:
    """k̂ of −inf (bounded weights) and +inf (too few weights to fit) drawn at the axis limits."""
    return values.replace(-math.inf, low).replace(math.inf, high).clip(low, high)


def plot(out: str | Path) -> list[Path]:
    """``khat.png`` from ``khat.csv`` and ``summary.json``: one row per task."""
    out = Path(out)
    khat, summary = read_csv(out / "khat.csv"), read_json(out / "summary.json")
    tasks = list(dict.fromkeys(khat["task"]))
    num_samples = summary["config"]["khat_samples"]
    low, high = -0.5, 2.0
    good, usable = KHAT_GOOD, KHAT_USABLE
    with style():
        fig, axes = figure(len(tasks), 3, (17.0, 4.6 * len(tasks)))
        for row, name in enumerate(tasks):
            ax_k, ax_kl, ax_ess = axes[row]
            info = summary["tasks"][name]
            frame_task = khat[khat["task"] == name]
            ax_k.axhspan(low, good, color="#2ca02c", alpha=0.07)
            ax_k.axhspan(good, usable, color="#ffbf00", alpha=0.15)
            ax_k.axhspan(usable, high, color="#d62728", alpha=0.07)
            zones = (f"good (k̂ < {good:g})", f"usable ({good:g}–{usable:g})", f"unreliable (k̂ > {usable:g})")
            for y, text in zip((0.2, 0.6, 1.35), zones):
                ax_k.text(0.99, y, text, transform=ax_k.get_yaxis_transform(), ha="right", va="center", fontsize=8.5)
            for method in METHODS:
                frame = frame_task[frame_task["method"] == method].copy()
                frame["khat_shown"] = khat_for_display(frame["khat"], low, high)
                c = color(method)
                band(ax_k, frame, "reward_evaluations", "khat_shown", color=c, label=label(method), marker="o", ms=3)
                band(ax_kl, frame, "reward_evaluations", "kl_q_to_posterior", color=c, label=f"{method}: KL(q ‖ π*)")
                band(
                    ax_kl,
                    frame,
                    "reward_evaluations",
                    "kl_posterior_to_q",
                    color=c,
                    label=f"{method}: KL(π* ‖ q)",
                    ls="--",
                )
                frame["distinct_fraction"] = frame["distinct"] / num_samples
                band(ax_ess, frame, "reward_evaluations", "ess", color=c, label=f"{method}: ESS / N")
                band(
                    ax_ess,
                    frame,
                    "reward_evaluations",
                    "distinct_fraction",
                    color=c,
                    label=f"{method}: distinct / N",
                    ls=":",
                )
            title = f"task '{name}' (β = {info['beta']:g}, H(π*) = {info['entropy']:.2f} nats)"
            ax_k.set(
                ylim=(low, high),
                xlabel="reward evaluations",
                ylabel="Pareto k̂ of w = π0·exp(r/β) / q",
                title=f"{title}\nPSIS k̂ of the policy as a proposal ({num_samples:,} draws)",
            )
            log_y(ax_kl)
            ax_kl.set(xlabel="reward evaluations", ylabel="nats (exact)", title="reverse and forward KL to π*")
            ax_ess.set(
                xlabel="reward evaluations",
                ylabel=f"fraction of the {num_samples:,} draws",
                ylim=(0, 1.05),
                title="normalized ESS, and distinct sequences among the draws",
            )
            note = seeds_note(frame_task)
            ax_k.legend(loc="upper left", title=note, title_fontsize=8)
            ax_kl.legend(loc="upper right", title=note, title_fontsize=8, ncols=2)
            ax_ess.legend(loc="center right", title=note, title_fontsize=8, ncols=2)
        fig.suptitle("k̂ of the SVI and RL policies over training (k̂ = −∞ drawn at the bottom: bounded weights)")
        return [save(fig, out / "khat.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
