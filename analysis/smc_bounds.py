r"""Bounds on log Z from both sides, against particles, and the KL bracket of an RL policy over its training.

For each task: :math:`\log Z` is bracketed by ``--runs`` independent runs of each sampler (the mean of
:math:`\log\hat Z`, a lower bound in expectation) and as many conditional runs with one particle fixed to an exact
posterior draw (an upper bound in expectation), at each particle count of ``--particles``:

- ``is_prior``: importance sampling with the prior as proposal (SMC with no twist never resamples);
- ``is_policy``: importance sampling with an RL policy trained first (the policy twist);
- ``smc_policy``: SMC with the policy as proposal and no twist (resampling on the per-token ratios π0/q);
- ``twisted``: twisted SMC with a twist learned by contrastive twist learning (``--twist-steps``).

Then the RL policy is trained again, and at every logged step its :math:`\mathrm{KL}(q\|\pi^*)` and
:math:`\mathrm{KL}(\pi^*\|q)` are bracketed with the twisted-SMC bounds at ``--bracket-particles`` and drawn beside
their exact values.

Writes into --out: bounds.csv, bracket.csv, summary.json, smc_bounds.png.

Example (the quick settings take about two minutes on 2 CPU cores)::

    python analysis/smc_bounds.py --quick --out runs/report/smc_bounds

``--plot-only`` redraws the figure from the data already in ``--out``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import matplotlib.ticker
import numpy as np
from _common import check_at_least_two, check_positive, experiment_main, load, write_summary
from _figures import color, figure, read_csv, read_json, save, style

from bayes_klrl.config import Preset, option
from bayes_klrl.exact import exact_posterior, policy_metrics
from bayes_klrl.infer.bounds import exact_posterior_draws, kl_bracket, log_z_bounds
from bayes_klrl.infer.twists import PolicyTwist, TwistTrainer, learned_twist
from bayes_klrl.methods import make_trainer
from bayes_klrl.storage import write_csv
from bayes_klrl.training import fit

NAME = "smc_bounds"
SAMPLERS = {
    "is_prior": "IS, prior proposal",
    "is_policy": "IS, RL policy proposal",
    "smc_policy": "SMC, RL policy proposal, no twist",
    "twisted": "twisted SMC, learned twist",
}
SAMPLER_COLORS = {"is_prior": "#9467bd", "is_policy": "#ff7f0e", "smc_policy": "#8c564b", "twisted": "#2ca02c"}


@dataclass(frozen=True)
class Config(Preset):
    """Bounds on log Z against particles, and an RL policy's KL bracket over training."""

    tasks: tuple[str, ...] = option(("markov", "words_sentiment"), "shipped task names or model files (enumerable)")
    particles: tuple[int, ...] = option((4, 16, 64, 256, 1024), "particles per run")
    runs: int = option(32, "runs of each sampler (and as many conditional runs) per particle count")
    steps: int = option(300, "RL optimizer steps")
    num_sequences: int = option(256, "sequences per RL step and per twist-learning step")
    lr: float = option(0.05, "Adam learning rate of the RL policy")
    log_every: int = option(25, "RL steps between brackets")
    twist_steps: int = option(300, "contrastive twist-learning steps")
    twist_lr: float = option(0.05, "Adam learning rate of the twist")
    bracket_particles: int = option(256, "particles per run of the bounds that bracket the policy's KL")
    eval_samples: int = option(1024, "draws of the policy (ELBO) and exact draws (EUBO) per bracket")
    seed: int = option(0, "seeds training and sampling")

    QUICK: ClassVar[dict] = {
        "particles": (4, 32, 256), "runs": 16, "steps": 100, "log_every": 25, "twist_steps": 150,
        "eval_samples": 512,
    }  # fmt: skip

    def __post_init__(self):
        check_positive(self, "runs", "steps", "lr", "log_every", "twist_steps", "twist_lr", "bracket_particles")
        check_at_least_two(self, "num_sequences", "eval_samples")
        if not self.tasks or not self.particles or min(self.particles) < 1:
            raise ValueError("at least one task and particle counts >= 1 are needed")


def _sampler_options(name: str, policy, twist) -> dict:
    if name == "is_prior":
        return {"resample_threshold": 0.0}
    if name == "is_policy":
        return {"twist": PolicyTwist(policy), "resample_threshold": 0.0}
    if name == "smc_policy":
        return {"proposal": policy, "resample_threshold": 0.5}
    return {"twist": twist, "resample_threshold": 0.5}


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``bounds.csv`` (task, sampler, particles, mean and standard error of the lower and upper
    :math:`\log\hat Z`, the exact :math:`\log Z`, reward evaluations), ``bracket.csv`` (task, RL step, the
    bracket's ends and the exact KLs both ways) and ``summary.json``."""
    out = Path(out)
    bounds_rows, bracket_rows, tasks = [], [], {}
    for spec in config.tasks:
        task = load(spec)
        post = exact_posterior(task)
        tasks[task.name] = {"beta": task.beta, "log_z": post.log_z, "num_sequences": task.num_sequences}
        draws = exact_posterior_draws(task, max(config.runs, config.eval_samples), posterior=post, seed=config.seed)
        trainer = make_trainer("rl", task, task.make_policy(), config.num_sequences, lr=config.lr)
        policy = fit(trainer, steps=config.steps, seed=config.seed, progress=progress).policy
        twist = learned_twist(task)
        twist_fit = fit(
            TwistTrainer(task, twist, config.num_sequences, lr=config.twist_lr),
            steps=config.twist_steps,
            seed=config.seed,
            progress=progress,
        )
        tasks[task.name]["twist_reward_evaluations"] = twist_fit.reward_evaluations
        for name in SAMPLERS:
            for n in config.particles:
                b = log_z_bounds(
                    task, num_particles=n, num_runs=config.runs, draws=draws, seed=config.seed + n,
                    **_sampler_options(name, policy, twist),
                )  # fmt: skip
                bounds_rows.append(
                    {
                        "task": task.name,
                        "sampler": name,
                        "particles": n,
                        "lower": b.log_z_lower,
                        "lower_se": b.lower.log_z_se,
                        "lower_var": float(b.lower.log_z.var()),
                        "upper": b.log_z_upper,
                        "upper_se": b.upper.log_z_se,
                        "exact_log_z": post.log_z,
                        "reward_evaluations_per_run": n,
                    }
                )
        fixed = log_z_bounds(
            task, num_particles=config.bracket_particles, num_runs=config.runs, draws=draws, twist=twist,
            seed=config.seed + 1,
        )  # fmt: skip

        def evaluate(q, step, task=task, post=post, fixed=fixed):
            bracket = kl_bracket(task, q, fixed, num_samples=config.eval_samples, seed=config.seed + 7 + step)
            exact = policy_metrics(task, q, post)
            return {
                "kl_q_lower": bracket.kl_q_lower,
                "kl_q_upper": bracket.kl_q_upper,
                "kl_q_exact": exact.kl_q_to_posterior,
                "kl_p_lower": bracket.kl_p_lower,
                "kl_p_upper": bracket.kl_p_upper,
                "kl_p_exact": exact.kl_posterior_to_q,
            }

        trainer = make_trainer("rl", task, task.make_policy(), config.num_sequences, lr=config.lr)
        result = fit(
            trainer, steps=config.steps, seed=config.seed, log_every=config.log_every, evaluate=evaluate,
            progress=progress,
        )  # fmt: skip
        keys = ("kl_q_lower", "kl_q_upper", "kl_q_exact", "kl_p_lower", "kl_p_upper", "kl_p_exact")
        for h in result.history:
            bracket_rows.append({"task": task.name, "step": h["step"], **{k: h[k] for k in keys}})
        tasks[task.name]["bracket_log_z"] = [fixed.log_z_lower, fixed.log_z_upper]
    write_csv(out / "bounds.csv", bounds_rows)
    write_csv(out / "bracket.csv", bracket_rows)
    return write_summary(out, config, tasks=tasks, about={"samplers": SAMPLERS})


def plot(out: str | Path) -> list[Path]:
    """``smc_bounds.png`` from the saved CSVs: per task, the two bounds against particles, and the KL bracket of the
    RL policy over training against its exact KL."""
    out = Path(out)
    bounds, bracket, summary = (
        read_csv(out / "bounds.csv"),
        read_csv(out / "bracket.csv"),
        read_json(out / "summary.json"),
    )
    tasks = list(dict.fromkeys(bounds["task"]))
    runs = summary["config"]["runs"]
    with style():
        fig, axes = figure(len(tasks), 3, (17.0, 4.8 * len(tasks)))
        for row, name in enumerate(tasks):
            ax_b, ax_q, ax_p = axes[row]
            info = summary["tasks"][name]
            frame = bounds[bounds["task"] == name]
            for sampler, text in summary["samplers"].items():
                f = frame[frame["sampler"] == sampler].sort_values("particles")
                c = SAMPLER_COLORS.get(sampler, color(sampler))
                x = f["particles"].to_numpy()
                for end, ls in (("lower", "-"), ("upper", "--")):
                    y, se = f[end].to_numpy(), f[f"{end}_se"].fillna(0).to_numpy()
                    ax_b.fill_between(x, y - se, y + se, color=c, alpha=0.15, linewidth=0)
                    ax_b.plot(x, y, ls, color=c, marker="o", ms=3, label=text if end == "lower" else None)
            ax_b.axhline(info["log_z"], color=color("exact"), lw=1.2, label=f"exact log Z = {info['log_z']:.4f}")
            spread = max(0.05, float(np.nanmax(np.abs(frame[["lower", "upper"]].to_numpy() - info["log_z"]))))
            ax_b.set_xscale("log", base=2)
            ax_b.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax_b.set(
                ylim=(info["log_z"] - min(spread, 3.0), info["log_z"] + min(spread, 3.0)),
                xlabel="particles per run",
                ylabel="log Z-hat (mean over runs ± s.e.)",
                title=f"task '{name}' (β = {info['beta']:g})\nlower bound (solid), upper bound (dashed); {runs} runs",
            )
            ax_b.legend(loc="lower right", fontsize=8.5)
            f = bracket[bracket["task"] == name].sort_values("step")
            for ax, key, text in ((ax_q, "kl_q", "KL(q ‖ π*)"), (ax_p, "kl_p", "KL(π* ‖ q)")):
                c = color("rl")
                ax.fill_between(f["step"], f[f"{key}_lower"], f[f"{key}_upper"], color=c, alpha=0.25, linewidth=0,
                                label="bracket from the twisted-SMC bounds (Monte Carlo)")  # fmt: skip
                ax.plot(f["step"], f[f"{key}_exact"], color=color("exact"), label="exact (enumeration)")
                ax.set(xlabel="RL (RLOO) optimizer steps", ylabel="nats", title=f"{text} of the RL policy in training")
                ax.set_ylim(bottom=0)
                ax.legend(loc="upper right", fontsize=8.5)
        fig.suptitle("Bounds on log Z without enumeration, checked against it: SMC (lower), conditional SMC (upper)")
        return [save(fig, out / "smc_bounds.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
