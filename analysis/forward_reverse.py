r"""Reverse KL (SVI, RL: mode-seeking) against forward KL (DPG: mass-covering) on a task with two modes.

Trains SVI, REINFORCE and DPG (Z from a running estimate, or weights self-normalized per batch) on
:func:`_common.two_modes_task` with two policy families: a unigram policy (i.i.d. tokens) that cannot represent
π*, and a tabular one that can. Logs the exact :math:`\mathrm{KL}(q\|\pi^*)` and :math:`\mathrm{KL}(\pi^*\|q)`
over training and where each final policy puts its mass (near mode A, near mode B, between).

Writes into --out: history.csv, regions.csv, summary.json, forward_reverse.png.

Example (the quick settings take about a minute on 2 CPU cores)::

    python analysis/forward_reverse.py --quick --out runs/report/forward_reverse

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
    experiment_main,
    fit_copy,
    mean,
    two_modes_task,
    write_summary,
)
from _figures import band, color, figure, label, log_y, read_csv, read_json, save, seeds_note, style

from bayes_klrl.config import Preset, check_choices, option
from bayes_klrl.exact import enumerate_sequences, exact_posterior, policy_metrics
from bayes_klrl.lm import AutoregressiveLM
from bayes_klrl.storage import write_csv
from bayes_klrl.task import Task

NAME = "forward_reverse"
FAMILIES = ("unigram", "tabular")
METHODS = ("svi", "rl", "dpg", "dpg_batch")


@dataclass(frozen=True)
class Config(Preset):
    """SVI and RL (reverse KL) against DPG (forward KL) on the two-mode task, two policy families."""

    beta: float = option(0.35, "β of the two-mode task")
    length: int = option(6, "sequence length of the two-mode task")
    policies: tuple[str, ...] = option(
        FAMILIES,
        "policy families: unigram (i.i.d. tokens, cannot represent π*) and/or tabular",
        choices=FAMILIES,
    )
    methods: tuple[str, ...] = option(
        METHODS,
        "svi, rl, dpg (Z from a running estimate), dpg_batch (weights self-normalized per batch)",
        choices=METHODS,
    )
    seeds: int = option(5, "runs per method and family, seeds 0..seeds-1")
    steps: int = option(600, "optimizer steps per run")
    num_sequences: int = option(256, "sequences (reward evaluations) per step")
    lr: float = option(0.05, "Adam learning rate of every method")
    log_every: int = option(20, "steps between exact evaluations")

    QUICK: ClassVar[dict] = {"seeds": 3, "steps": 300}

    def __post_init__(self):
        check_positive(self, "beta", "length", "seeds", "steps", "lr", "log_every")
        check_choices(self, nonempty=("policies", "methods"))
        check_at_least_two(self, "num_sequences")


def mode_regions(task: Task, sequences: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean masks ``(N,)``: ``mode_a`` (at most one token differs from all-0), ``mode_b`` (from all-(V-1)),
    ``between`` (the rest)."""
    length, last = task.length, task.vocab_size - 1
    a = (sequences == 0).sum(-1) >= length - 1
    b = (sequences == last).sum(-1) >= length - 1
    return {"mode_a": a, "mode_b": b & ~a, "between": ~a & ~b}


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``history.csv`` (exact KL(q‖π*) and KL(π*‖q) over training per method and policy family),
    ``regions.csv`` (final mass near mode A, near mode B and between, per run and for π*) and ``summary.json``."""
    out = Path(out)
    task = two_modes_task(beta=config.beta, length=config.length)
    posterior = exact_posterior(task)
    x_all = enumerate_sequences(task.vocab_size, task.length)
    regions = mode_regions(task, x_all)

    def masses(log_probs: torch.Tensor) -> dict:
        p = log_probs.double().exp()
        return {name: float(p[mask].sum()) for name, mask in regions.items()}

    def evaluate(policy: AutoregressiveLM) -> dict:
        m = policy_metrics(task, policy, posterior)
        return {
            "kl_q_to_posterior": m.kl_q_to_posterior,
            "kl_posterior_to_q": m.kl_posterior_to_q,
            "entropy": m.entropy,
        }

    rows, region_rows = [], [{"family": "-", "method": "posterior", "seed": -1, **masses(posterior.log_probs)}]
    for family in config.policies:
        template = task.prior.trainable_copy() if family == "unigram" else task.make_policy("tabular")
        for seed in range(config.seeds):
            for method in config.methods:
                result = fit_copy(method, task, template, config, seed, evaluate=evaluate, progress=progress)
                for h in result.history:
                    rows.append(
                        {
                            "family": family,
                            "method": method,
                            "seed": seed,
                            "step": h["step"],
                            "reward_evaluations": h["reward_evaluations"],
                            "kl_q_to_posterior": h["kl_q_to_posterior"],
                            "kl_posterior_to_q": h["kl_posterior_to_q"],
                            "entropy": h["entropy"],
                        }
                    )
                with torch.no_grad():
                    log_q = result.policy.log_prob(x_all)
                region_rows.append({"family": family, "method": method, "seed": seed, **masses(log_q)})
    write_csv(out / "history.csv", rows)
    write_csv(out / "regions.csv", region_rows)
    final = {}
    for family in config.policies:
        for method in config.methods:
            last = [r for r in rows if r["family"] == family and r["method"] == method and r["step"] == config.steps]
            reg = [r for r in region_rows if r["family"] == family and r["method"] == method]
            final[f"{family}/{method}"] = {
                "kl_q_to_posterior_mean": mean(last, "kl_q_to_posterior"),
                "kl_posterior_to_q_mean": mean(last, "kl_posterior_to_q"),
                **{f"{k}_mean": mean(reg, k) for k in regions},
            }
    return write_summary(
        out,
        config,
        task,
        {"vocab_size": task.vocab_size, "length": task.length},
        posterior={"entropy": posterior.entropy, "log_z": posterior.log_z, **masses(posterior.log_probs)},
        final=final,
    )


def plot(out: str | Path) -> list[Path]:
    """``forward_reverse.png`` from ``history.csv``, ``regions.csv`` and ``summary.json``."""
    out = Path(out)
    history, regions, summary = (
        read_csv(out / "history.csv"),
        read_csv(out / "regions.csv"),
        read_json(out / "summary.json"),
    )
    families = list(dict.fromkeys(history["family"]))
    family_names = {
        "unigram": "unigram policy (i.i.d. tokens: cannot represent π*)",
        "tabular": "tabular policy (can represent π* exactly)",
    }
    methods = list(dict.fromkeys(history["method"]))
    with style():
        fig, axes = figure(3, len(families), (6.4 * len(families), 12.5))
        for j, family in enumerate(families):
            ax_rev, ax_fwd, ax_bar = axes[:, j]
            h = history[history["family"] == family]
            for method in methods:
                hm = h[h["method"] == method]
                line = {"ls": "--"} if method == "dpg_batch" else {}
                for ax, y in ((ax_rev, "kl_q_to_posterior"), (ax_fwd, "kl_posterior_to_q")):
                    band(ax, hm, "reward_evaluations", y, color=color(method), label=label(method), **line)
            ax_rev.set(title=f"{family_names.get(family, family)}\nreverse KL(q ‖ π*): what SVI and RL minimize")
            ax_fwd.set(title="forward KL(π* ‖ q): what DPG minimizes")
            for ax, ylabel in ((ax_rev, "KL(q ‖ π*) (nats, exact)"), (ax_fwd, "KL(π* ‖ q) (nats, exact)")):
                log_y(ax)
                ax.set(xlabel="reward evaluations", ylabel=ylabel)
                ax.legend(loc="upper right", title=seeds_note(h), title_fontsize=8)

            region_names = ("mode_a", "mode_b", "between")
            ticks = ("near mode A\n(0 0 0 0 0 0)", "near mode B\n(3 3 3 3 3 3)", "between\n(everything else)")
            bars = [("exact", regions[regions["method"] == "posterior"])]
            bars += [(m, regions[(regions["family"] == family) & (regions["method"] == m)]) for m in methods]
            width = 0.8 / len(bars)
            for i, (method, frame) in enumerate(bars):
                xs = np.arange(len(region_names)) + (i - (len(bars) - 1) / 2) * width
                mass = frame[list(region_names)]
                mean_, low, high = mass.mean().to_numpy(), mass.min().to_numpy(), mass.max().to_numpy()
                ax_bar.bar(xs, mean_, width, color=color(method), label=label(method))
                ax_bar.errorbar(
                    xs, mean_, yerr=[mean_ - low, high - mean_], fmt="none", ecolor="black", capsize=2, lw=0.8
                )
            ax_bar.set_xticks(np.arange(len(region_names)))
            ax_bar.set_xticklabels(ticks)
            ax_bar.set(
                title="where the final policy puts its mass",
                ylabel="probability",
                ylim=(0, 1),
                xlabel="region of sequences",
            )
            ax_bar.legend(loc="upper right", title="bars: mean, whiskers: min–max over seeds", title_fontsize=8)
        fig.suptitle(
            f"Reverse against forward KL on a two-mode task (V = {summary['vocab_size']}, T = {summary['length']}, "
            f"β = {summary['beta']:g}; π* puts {summary['posterior']['mode_a']:.2f} near mode A, "
            f"{summary['posterior']['mode_b']:.2f} near mode B)"
        )
        return [save(fig, out / "forward_reverse.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
