r"""Which RLHF recipes sample the posterior? Each recipe trained to its fixed point and scored exactly.

On enumerable tasks (the shipped ``bandit``, ``markov`` and ``words_sentiment``), over a sweep of β, trains a
tabular policy with each recipe of :data:`bayes_klrl.rl.recipes.PRESETS` (``rl``: RLOO with k1 in the reward;
``grpo``: group-standardized advantage, k3 in the loss; ``grpo_corr``: the same with the ratio correction;
``drgrpo``: group-centred advantage, k3 in the loss) until it stops moving, and scores where it settled by
enumeration: :math:`\mathrm{KL}(q\|\pi^*)`, :math:`\mathrm{KL}(\pi^*\|q)`, :math:`\mathbb{E}_q[r]` and
:math:`\mathrm{KL}(q\|\pi_0)`. Only ``rl`` has :math:`\pi^* \propto \pi_0 e^{r/\beta}` as its fixed point; the
others settle elsewhere. The Bayes frontier, the posteriors :math:`\pi^*_\beta` over a fine grid of β in the
plane :math:`(\mathrm{KL}(\pi^*_\beta\|\pi_0), \mathbb{E}_{\pi^*_\beta}[r])`, is the best reward any policy gets for
its KL from the prior (each :math:`\pi^*_\beta` maximizes :math:`\mathbb{E}_q[r] - \beta\,\mathrm{KL}(q\|\pi_0)`);
a recipe's fixed point below it pays KL for reward it does not get. On the bandit the infinite-group fixed
points in closed form (:func:`bayes_klrl.rl.theory.bandit_fixed_point`) are scored beside the trained ones.

**Convergence.** Each run logs the exact metrics every ``log_every`` steps and stops at the first logged point
where, over the last ``window`` logged points, both :math:`\mathrm{KL}(q\|\pi^*)` and
:math:`\mathrm{KL}(q\|\pi_0)` vary (max − min) by at most ``atol + rtol·|mean|``, and their means over those
points differ from their means over the ``window`` points before by at most the same (no slow trend). The first is the exact
objective up to constants (:math:`J(q) = \beta\log Z - \beta\,\mathrm{KL}(q\|\pi^*)`), the second the position
along the frontier, which :math:`J` does not see. A run that has not settled by ``max_steps`` is kept, marked
``converged = False``; the step reached is recorded either way. The fixed point is the policy at the stopping
point (Monte Carlo training; exact scoring).

Writes into --out: fixed_points.csv, closed_form.csv, frontier.csv, history.csv, summary.json, recipes_kl.png,
recipes_frontier.png and recipes_table.md (a Markdown table drawn, like the figures, from the saved data).

Example (the quick settings take about 20 s of CPU, the full ones about 5 minutes: 2 and 18 minutes of wall time
on a shared 2-core machine at load 14)::

    python analysis/recipes.py --quick --out runs/report/recipes

``--plot-only`` redraws the figures from the data already in ``--out``. The same experiment runs inside
``python analysis/report.py``.
"""

from __future__ import annotations

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
    load,
    write_summary,
)
from _figures import color, figure, label, read_csv, read_json, save, style
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bayes_klrl.config import Preset, check_choices, option
from bayes_klrl.exact import ExactPosterior, exact_posterior, policy_metrics
from bayes_klrl.lm import AutoregressiveLM
from bayes_klrl.methods import make_trainer
from bayes_klrl.storage import write_csv
from bayes_klrl.training import fit

NAME = "recipes"
#: the presets of the published sweep ("drgrpo" is the old name of the hybrid drgrpo_k3; the presets added since,
#: several without a KL term and so without a posterior to approach, are scored by tests/rl/test_recipe_options.py)
RECIPES = ("rl", "grpo", "grpo_corr", "drgrpo")
TASKS = ("bandit", "markov", "words_sentiment")
#: the figures' marker per recipe (colour in figure (b) is β)
MARKERS = {"rl": "o", "grpo": "s", "grpo_corr": "D", "drgrpo": "^"}
#: the exact metrics saved per fixed point
METRICS = ("kl_q_to_posterior", "kl_posterior_to_q", "expected_reward", "kl_to_prior")
#: a fixed point "targets π*" when its KL(q‖π*) is at most this (nats): the KL goal of ``benchmarks/bench.py``.
#: A tabular policy trained by Monte Carlo steps does not reach 0: RLOO settles near 0.02 on markov at β = 0.7
#: with 512 sequences per step, and ``compare`` (1,024 per step) near 0.01
TARGET_KL = 0.05
#: KL(q‖π*) values below this are drawn at it on the log axis (float64 sums of an exact 0 reach ±1e-12)
KL_FLOOR = 1e-5


@dataclass(frozen=True)
class Config(Preset):
    """Every recipe trained to its fixed point on each task over a sweep of β, scored exactly."""

    tasks: tuple[str, ...] = option(TASKS, "shipped tasks or model files (must be enumerable)")
    recipes: tuple[str, ...] = option(RECIPES, "recipes (presets of bayes_klrl.rl.recipes)", choices=RECIPES)
    betas: tuple[float, ...] = option((0.35, 0.7, 1.4, 2.8), "the KL coefficients β of the sweep")
    seed: int = option(0, "seed of every run")
    num_sequences: int = option(512, "sequences (reward evaluations) per step; a multiple of the group size 16")
    lr: float = option(0.02, "Adam learning rate")
    max_steps: int = option(1200, "give up (converged = False) after this many steps")
    log_every: int = option(40, "steps between exact evaluations (and convergence checks)")
    window: int = option(5, "logged points over which a run must have stopped moving")
    rtol: float = option(0.1, "relative spread of KL(q||pi*) and KL(q||pi0) allowed over the window")
    atol: float = option(0.003, "absolute spread (nats) allowed over the window")
    frontier_points: int = option(80, "β values (log-spaced) tracing the Bayes frontier")
    frontier_beta_min: float = option(0.05, "smallest β of the frontier")
    frontier_beta_max: float = option(50.0, "largest β of the frontier")

    QUICK: ClassVar[dict] = {
        "tasks": ("bandit", "markov"),
        "betas": (0.35, 0.7),
        "max_steps": 500,
        "log_every": 25,
        "window": 4,
        "frontier_points": 40,
    }

    def __post_init__(self):
        check_positive(self, "num_sequences", "lr", "max_steps", "log_every", "rtol", "atol")
        check_positive(self, "frontier_points", "frontier_beta_min", "frontier_beta_max")
        check_at_least_two(self, "num_sequences", "window")
        check_choices(self, nonempty=("recipes",))
        if not self.tasks:
            raise ValueError("tasks must not be empty")
        try:  # numbers as floats, whether given from Python (ints, say) or the command line
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be numbers, got {self.betas!r}") from None
        object.__setattr__(self, "betas", betas)
        if not self.betas or any(not b > 0 for b in self.betas):
            raise ValueError(f"betas must be a non-empty tuple of numbers > 0, got {self.betas!r}")
        if self.frontier_beta_min >= self.frontier_beta_max:
            raise ValueError("frontier_beta_min must be below frontier_beta_max")


def settled(rows: list[dict], window: int, rtol: float, atol: float) -> bool:
    r"""Whether the logged ``rows`` have stopped moving: for :math:`\mathrm{KL}(q\|\pi^*)` and
    :math:`\mathrm{KL}(q\|\pi_0)`, over the last ``window`` rows :math:`\max - \min \le \text{atol} +
    \text{rtol}\cdot|\text{mean}|`, and the mean of those rows differs from the mean of the ``window`` rows
    before by no more than the same bound (no slow trend). Needs ``2·window`` rows.

    Example::

        >>> settled([{"kl_q_to_posterior": 0.5, "kl_to_prior": 1.0}] * 6, 3, 0.1, 0.0)
        True
    """
    if len(rows) < 2 * window:
        return False
    last, before = rows[-window:], rows[-2 * window : -window]
    for key in ("kl_q_to_posterior", "kl_to_prior"):
        values = np.array([r[key] for r in last], dtype=float)
        previous = np.array([r[key] for r in before], dtype=float)
        bound = atol + rtol * abs(values.mean())
        if not np.isfinite(values).all() or np.ptp(values) > bound or abs(values.mean() - previous.mean()) > bound:
            return False
    return True


def distribution_metrics(log_q: torch.Tensor, posterior: ExactPosterior) -> dict:
    r"""The exact figures of a distribution given by its log-probabilities ``(V^T,)`` in enumeration order:
    :math:`\mathrm{KL}(q\|\pi^*)`, :math:`\mathrm{KL}(\pi^*\|q)`, :math:`\mathbb{E}_q[r]`, :math:`\mathrm{KL}(q\|\pi_0)`."""
    log_q = log_q.double()
    q, p = log_q.exp(), posterior.log_probs.exp()
    return {
        "kl_q_to_posterior": float((q * (log_q - posterior.log_probs)).sum()),
        "kl_posterior_to_q": float((p * (posterior.log_probs - log_q)).sum()),
        "expected_reward": float((q * posterior.rewards).sum()),
        "kl_to_prior": float((q * (log_q - posterior.log_prior)).sum()),
    }


def closed_form_rows(posterior: ExactPosterior, beta: float, recipes: tuple[str, ...]) -> list[dict]:
    """The bandit's infinite-group fixed point of each recipe (:func:`bayes_klrl.rl.theory.bandit_fixed_point`),
    scored exactly; a recipe without one (ValueError) is kept with the reason."""
    from bayes_klrl.rl.theory import bandit_fixed_point

    prior_probs = posterior.log_prior.exp()  # (V,): T = 1, enumeration order is token order
    rows = []
    for recipe in recipes:
        row = {"recipe": recipe, "beta": beta}
        try:
            q = bandit_fixed_point(prior_probs, posterior.rewards, beta, recipe)  # (V,)
        except (ValueError, RuntimeError) as exc:
            rows.append({**row, "available": False, "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]})
            continue
        log_q = torch.as_tensor(q, dtype=torch.float64).clamp_min(1e-300).log()
        rows.append({**row, "available": True, "reason": "", **distribution_metrics(log_q, posterior)})
    return rows


def train_to_fixed_point(task, recipe: str, posterior: ExactPosterior, config: Config, *, progress: bool):
    """One run of ``recipe`` on a tabular policy, stopped by :func:`settled`; returns the fixed point's row
    and the run's logged history."""

    def evaluate(policy: AutoregressiveLM) -> dict:
        m = policy_metrics(task, policy, posterior)
        return {k: getattr(m, k) for k in METRICS}

    logged: list[dict] = []

    def stop(row: dict) -> bool:
        logged.append(row)
        return settled(logged, config.window, config.rtol, config.atol)

    trainer = make_trainer(recipe, task, task.make_policy("tabular"), config.num_sequences, lr=config.lr)
    result = fit(
        trainer,
        steps=config.max_steps,
        seed=config.seed,
        log_every=config.log_every,
        evaluate=evaluate,
        stop=stop,
        progress=progress,
    )
    last = result.history[-1]
    converged = settled(logged, config.window, config.rtol, config.atol)
    row = {
        "recipe": recipe,
        "converged": converged,
        "step": result.steps,
        "reward_evaluations": result.reward_evaluations,
        "wall_seconds": result.wall_seconds,
        **{k: last[k] for k in METRICS},
    }
    history = [{"recipe": recipe, "step": h["step"], **{k: h[k] for k in METRICS}} for h in result.history]
    return row, history


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    """Write ``fixed_points.csv`` (one row per task, β and recipe), ``closed_form.csv`` (the bandit's closed-form
    fixed points), ``frontier.csv`` (the posteriors π*_β on a fine grid), ``history.csv`` and ``summary.json``."""
    out = Path(out)
    t_start = time.perf_counter()
    points, closed, frontier, history = [], [], [], []
    for task_spec in config.tasks:
        base = load(task_spec)
        for beta in np.geomspace(config.frontier_beta_min, config.frontier_beta_max, config.frontier_points):
            post = exact_posterior(base.replace(beta=float(beta)))
            frontier.append(
                {
                    "task": base.name,
                    "beta": float(beta),
                    "kl_to_prior": post.kl_to_prior,
                    "expected_reward": post.expected_reward,
                }
            )
        for beta in config.betas:
            task = base.replace(beta=float(beta))
            posterior = exact_posterior(task)
            about = {"task": task.name, "beta": float(beta)}
            reference = {
                "posterior_kl_to_prior": posterior.kl_to_prior,
                "posterior_expected_reward": posterior.expected_reward,
                "prior_kl_to_posterior": policy_metrics(task, task.prior, posterior).kl_q_to_posterior,
            }
            for recipe in config.recipes:
                row, trace = train_to_fixed_point(task, recipe, posterior, config, progress=progress)
                points.append({**about, **row, **reference})
                history += [{**about, **h} for h in trace]
            if task.length == 1:
                closed += [{"task": task.name, **r} for r in closed_form_rows(posterior, float(beta), config.recipes)]
    write_csv(out / "fixed_points.csv", points)
    write_csv(
        out / "closed_form.csv", closed or [{"task": None, "recipe": None, "available": False, "reason": "no bandit"}]
    )
    write_csv(out / "frontier.csv", frontier)
    write_csv(out / "history.csv", history)
    return write_summary(
        out,
        config,
        about={"tasks": list(dict.fromkeys(p["task"] for p in frontier))},
        convergence=(
            f"stopped at the first logged point where, over the last {config.window} points ({config.log_every} "
            f"steps apart), KL(q||pi*) and KL(q||pi0) each varied by at most {config.atol:g} + {config.rtol:g}*|mean|, "
            "and their means moved by no more than that from the window before; "
            f"else at {config.max_steps} steps with converged = False"
        ),
        converged=f"{sum(p['converged'] for p in points)}/{len(points)}",
        wall_seconds=time.perf_counter() - t_start,
    )


# -- figures ---------------------------------------------------------------------------------------------------
def _floor(values) -> np.ndarray:
    return np.maximum(np.asarray(values, dtype=float), KL_FLOOR)


def _beta_norm(betas) -> LogNorm:
    low, high = float(np.min(betas)), float(np.max(betas))
    return LogNorm(low / 1.3, high * 1.3) if low == high else LogNorm(low, high)


def _closed_form(out: Path):
    frame = read_csv(out / "closed_form.csv")
    if "available" not in frame or frame["task"].isna().all():
        return frame.iloc[0:0]
    return frame[frame["available"].astype(str) == "True"]


def plot(out: str | Path) -> list[Path]:
    """``recipes_kl.png`` and ``recipes_frontier.png`` (and ``recipes_table.md``, :func:`table`) from the saved
    CSV files and ``summary.json``."""
    out = Path(out)
    points, frontier, summary = (
        read_csv(out / "fixed_points.csv"),
        read_csv(out / "frontier.csv"),
        read_json(out / "summary.json"),
    )
    closed = _closed_form(out)
    tasks = list(dict.fromkeys(points["task"]))
    recipes = list(dict.fromkeys(points["recipe"]))
    tolerance, cfg = TARGET_KL, summary["config"]
    norm = _beta_norm(points["beta"])
    paths = []
    with style():
        # (a) KL(q‖π*) at the fixed point per recipe and β
        fig, axes = figure(1, len(tasks), (4.6 * len(tasks) + 3.4, 4.4))
        for ax, task in zip(axes[0], tasks):
            p = points[points["task"] == task]
            prior_kl = p.groupby("beta")["prior_kl_to_posterior"].first()
            ax.plot(prior_kl.index, _floor(prior_kl), ls="--", color=color("prior"), lw=1.2, label="π0 (the start)")
            for recipe in recipes:
                r = p[p["recipe"] == recipe].sort_values("beta")
                c = color(recipe)
                ax.plot(
                    r["beta"],
                    _floor(r["kl_q_to_posterior"]),
                    "-",
                    marker=MARKERS.get(recipe, "o"),
                    color=c,
                    ms=6,
                    label=f"{label(recipe)} (trained)",
                )
                missed = r[r["converged"].astype(str) != "True"]
                if len(missed):
                    ax.plot(missed["beta"], _floor(missed["kl_q_to_posterior"]), "x", color="black", ms=9, mew=1.5)
                cf = (
                    closed[(closed["task"] == task) & (closed["recipe"] == recipe)].sort_values("beta")
                    if len(closed)
                    else closed
                )
                if len(cf):
                    ax.plot(
                        cf["beta"],
                        _floor(cf["kl_q_to_posterior"]),
                        ls=":",
                        marker=MARKERS.get(recipe, "o"),
                        mfc="white",
                        color=c,
                        ms=9,
                        lw=1,
                        label=f"{label(recipe)} (closed form, ∞ group)",
                    )
            ax.axhline(tolerance, color=color("exact"), ls=":", lw=1)
            ax.text(p["beta"].min(), tolerance, f" targets π* below {tolerance:g}", va="bottom", fontsize=8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sorted(p["beta"].unique()))
            ax.set_xticklabels([f"{b:g}" for b in sorted(p["beta"].unique())])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(title=f"task '{task}'", xlabel="β (log scale)", ylabel="KL(q ‖ π*) at the fixed point (nats, exact)")
        handles, labels_ = axes[0][0].get_legend_handles_labels()
        handles.append(Line2D([], [], ls="none", marker="x", color="black", ms=8, mew=1.5))
        labels_.append("not settled by max_steps")
        fig.legend(handles, labels_, loc="outside right center", fontsize=8.5)
        fig.suptitle(
            f"Where each recipe settles: exact KL(q ‖ π*) of the trained tabular policy ({cfg['num_sequences']} "
            f"sequences per step, Adam lr {cfg['lr']:g}, seed {cfg['seed']}; KL below {KL_FLOOR:g} drawn at it)"
        )
        paths.append(save(fig, out / "recipes_kl.png"))

        # (b) the reward–KL plane with the Bayes frontier
        fig, axes = figure(1, len(tasks), (4.6 * len(tasks), 4.6))
        cmap = "viridis"
        for ax, task in zip(axes[0], tasks):
            f = frontier[frontier["task"] == task].sort_values("beta")
            ax.plot(
                f["kl_to_prior"],
                f["expected_reward"],
                color=color("exact"),
                lw=1.5,
                zorder=1,
                label="Bayes frontier: π*_β (exact)",
            )
            p = points[points["task"] == task]
            posts = p.groupby("beta")[["posterior_kl_to_prior", "posterior_expected_reward"]].first()
            ax.scatter(
                posts["posterior_kl_to_prior"],
                posts["posterior_expected_reward"],
                c=posts.index,
                cmap=cmap,
                norm=norm,
                marker="*",
                s=140,
                edgecolors="black",
                linewidths=0.6,
                zorder=3,
                label="π*_β at the sweep's β",
            )
            for recipe in recipes:
                r = p[p["recipe"] == recipe]
                ax.scatter(
                    r["kl_to_prior"],
                    r["expected_reward"],
                    c=r["beta"],
                    cmap=cmap,
                    norm=norm,
                    marker=MARKERS.get(recipe, "o"),
                    s=46,
                    edgecolors="black",
                    linewidths=0.5,
                    zorder=4,
                )
                cf = closed[(closed["task"] == task) & (closed["recipe"] == recipe)] if len(closed) else closed
                if len(cf):
                    ax.scatter(
                        cf["kl_to_prior"],
                        cf["expected_reward"],
                        facecolors="none",
                        edgecolors=[_cmap_color(cmap, norm, b) for b in cf["beta"]],
                        marker=MARKERS.get(recipe, "o"),
                        s=110,
                        linewidths=1.4,
                        zorder=5,
                    )
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            low = max(
                min(p["kl_to_prior"].min(), posts["posterior_kl_to_prior"].min()) / 2,
                f["kl_to_prior"][f["kl_to_prior"] > 0].min(),
            )
            high = max(p["kl_to_prior"].max(), posts["posterior_kl_to_prior"].max()) * 2
            ax.set_xlim(low, high)
            inside = f[(f["kl_to_prior"] >= low) & (f["kl_to_prior"] <= high)]
            ys = np.concatenate([inside["expected_reward"], p["expected_reward"]])
            pad = 0.05 * (ys.max() - ys.min() + 1e-9)
            ax.set_ylim(ys.min() - pad, ys.max() + pad)
            ax.set(title=f"task '{task}'", xlabel="KL(q ‖ π0) (nats, exact; log scale)", ylabel="E_q[r] (exact)")
        legend = [Line2D([], [], color=color("exact"), lw=1.5, label="Bayes frontier: π*_β over β (exact)")]
        legend.append(
            Line2D([], [], ls="none", marker="*", ms=12, mfc="lightgrey", mec="black", label="π*_β at the sweep's β")
        )
        legend += [
            Line2D(
                [],
                [],
                ls="none",
                marker=MARKERS.get(r, "o"),
                ms=7,
                mfc="lightgrey",
                mec="black",
                label=f"{label(r)}: trained (Monte Carlo)",
            )
            for r in recipes
        ]
        if len(closed):
            legend += [
                Line2D(
                    [],
                    [],
                    ls="none",
                    marker=MARKERS.get(r, "o"),
                    ms=9,
                    mfc="none",
                    mec="black",
                    mew=1.4,
                    label=f"{label(r)}: closed form, ∞ group (bandit)",
                )
                for r in recipes
                if (closed["recipe"] == r).any()
            ]
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), location="right", shrink=0.8, pad=0.01
        )
        bar.set_label("β (colour of every marker)")
        bar.ax.minorticks_off()
        bar.set_ticks(sorted(points["beta"].unique()))
        bar.set_ticklabels([f"{b:g}" for b in sorted(points["beta"].unique())])
        fig.legend(handles=legend, loc="outside lower center", ncol=min(4, 2 * len(tasks), len(legend)), fontsize=8.5)
        fig.suptitle("The reward–KL plane: fixed points on the Bayes frontier, or below it (all coordinates exact)")
        paths.append(save(fig, out / "recipes_frontier.png"))
    (out / "recipes_table.md").write_text(table(out), encoding="utf-8")
    return paths


def table(out: str | Path, *, task: str = "markov", beta: float = 0.7) -> str:
    """A Markdown table from ``fixed_points.csv``: per recipe, whether it targets π* (every settled fixed point
    of the sweep within :data:`TARGET_KL` of π* in KL(q‖π*)), the largest KL(q‖π*) over
    the sweep, KL(q‖π*) on ``task`` at ``beta`` and whether that run settled."""
    out = Path(out)
    points, tolerance = read_csv(out / "fixed_points.csv"), TARGET_KL
    points = points.assign(settled=points["converged"].astype(str) == "True")
    lines = [
        f"| recipe | targets π*? (KL(q‖π*) ≤ {tolerance:g} at every settled fixed point) "
        f"| largest KL(q‖π*) over the sweep (task, β) | KL(q‖π*) on {task} at β = {beta:g} | settled there? "
        "| runs settled |",
        "|---|---|---|---|---|---|",
    ]
    for recipe in dict.fromkeys(points["recipe"]):
        r = points[points["recipe"] == recipe]
        settled_runs = r[r["settled"]]
        targets = bool(len(settled_runs)) and bool((settled_runs["kl_q_to_posterior"] <= tolerance).all())
        answer = "yes" if targets else "no"
        if targets and (r["kl_q_to_posterior"] > tolerance).any():  # only a run that did not settle is above
            answer += " (among settled runs)"
        worst = r.loc[r["kl_q_to_posterior"].idxmax()]
        here = r[(r["task"] == task) & np.isclose(r["beta"], beta)]
        if len(here):
            h = here.iloc[0]
            at, settled_here = f"{h['kl_q_to_posterior']:.4f}", f"{'yes' if h['settled'] else 'no'} (step {h['step']})"
        else:
            at, settled_here = "not run", "–"
        lines.append(
            f"| {label(recipe)} (`{recipe}`) | {answer} | {worst['kl_q_to_posterior']:.3f} ({worst['task']}, "
            f"{worst['beta']:g}) | {at} | {settled_here} | {int(r['settled'].sum())}/{len(r)} |"
        )
    return "\n".join(lines) + "\n"


def _cmap_color(cmap: str, norm: LogNorm, beta: float):
    from matplotlib import colormaps

    return colormaps[cmap](norm(beta))


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
