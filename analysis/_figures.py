r"""Figures of the analysis report, drawn only from the data files the experiments of :mod:`bayes_klrl.report` save.

Each ``plot_<experiment>(folder)`` reads the CSV/JSON/NetCDF files in ``folder`` and writes PNGs beside them,
returning their paths. Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no
display needed) inside one shared style: the same colour and name for a method in every figure, units on every
axis (nats, reward evaluations, seconds), and bands showing the spread over seeds (min to max).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from .diagnostics import RHAT_MAX
from .infer.importance import KHAT_GOOD, KHAT_USABLE
from .storage import atomic_write

__all__ = [
    "COLORS",
    "NAMES",
    "STYLE",
    "plot_beta_sweep",
    "plot_forward_reverse",
    "plot_khat",
    "plot_learning_curves",
    "plot_mcmc",
    "plot_posterior",
]

#: rc settings shared by every figure
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "legend.framealpha": 0.85,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.8,
    "figure.titlesize": 12,
}

#: one colour per method, the same in every figure
COLORS = {
    "exact": "#222222",
    "svi": "#1f77b4",
    "rl": "#ff7f0e",
    "rl_no_kl": "#d62728",
    "dpg": "#2ca02c",
    "dpg_batch": "#98df8a",
    "is": "#9467bd",
    "mcmc": "#8c564b",
    "gibbs": "#8c564b",
    "imh": "#e377c2",
    "prior": "#7f7f7f",
}

#: legend names
NAMES = {
    "exact": "exact π* (enumeration)",
    "svi": "SVI (Pyro, leave-one-out ELBO)",
    "rl": "REINFORCE, KL in the reward",
    "rl_no_kl": "REINFORCE without the KL term",
    "dpg": "DPG (forward KL), running estimate of Z",
    "dpg_batch": "DPG, weights self-normalized per batch",
    "is": "importance sampling, prior proposal",
    "mcmc": "MCMC",
    "gibbs": "single-site Gibbs",
    "imh": "independence MH, prior proposal",
}


def _figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs):
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a 256-colour PNG (about a quarter of the size of the RGBA file, same look), atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    return atomic_write(path, lambda tmp: image.save(tmp, format="png", optimize=True))


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _band(ax, frame: pd.DataFrame, x: str, y: str, *, color: str, label: str, by: str = "step", **line):
    """Mean of ``y`` over seeds at each ``by`` value (x: the mean of ``x`` there), with a min–max band."""
    g = frame.groupby(by)
    xs, mean, low, high = g[x].mean(), g[y].mean(), g[y].min(), g[y].max()
    ax.fill_between(xs.to_numpy(), low.to_numpy(), high.to_numpy(), color=color, alpha=0.18, linewidth=0)
    ax.plot(xs.to_numpy(), mean.to_numpy(), color=color, label=label, **line)


def _log_y(ax) -> None:
    """Log scale on y with plain numbers (0.1, 0.3, 2) rather than powers of ten; call after plotting."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if high / low < 30:  # less than ~1.5 decades: label 2, 3 and 5 times the powers of ten too

        def minor(v, _):
            mantissa = round(v / 10 ** math.floor(math.log10(v)), 6)
            return f"{v:g}" if mantissa in (2, 3, 5) else ""

        ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _seeds_note(frame: pd.DataFrame) -> str:
    n = frame["seed"].nunique()
    return f"line: mean over {n} seed{'s' if n != 1 else ''}, band: min–max"


def _plot(filename: str, *tables: str):
    """Decorator making ``draw(folder, *frames, summary, *options) -> Figure`` the figure function
    ``plot(folder, *options) -> [folder/filename]``: ``frames`` are the CSV ``tables`` of ``folder`` and
    ``summary`` its ``summary.json``; the figure is drawn in :data:`STYLE` and saved with :func:`_save`."""

    def decorate(draw):
        def plot(folder: str | Path, *args, **kwargs) -> list[Path]:
            folder = Path(folder)
            with matplotlib.rc_context(STYLE):
                frames = [pd.read_csv(folder / table) for table in tables]
                fig = draw(folder, *frames, _read_json(folder / "summary.json"), *args, **kwargs)
                return [_save(fig, folder / filename)]

        plot.__name__, plot.__qualname__, plot.__doc__ = draw.__name__, draw.__qualname__, draw.__doc__
        return plot

    return decorate


# ---------------------------------------------------------------------------------------------------------------


@_plot("learning_curves.png", "history.csv", "gradient_variance.csv")
def plot_learning_curves(folder: Path, history: pd.DataFrame, variance: pd.DataFrame, summary: dict) -> Figure:
    """``learning_curves.png`` from ``history.csv``, ``gradient_variance.csv`` and ``summary.json``."""
    fig, axes = _figure(2, 2, (12.5, 9.0))
    (ax_elbo, ax_evals), (ax_wall, ax_var) = axes

    for method in ("svi", "rl"):
        h = history[history["method"] == method]
        c = COLORS[method]
        _band(ax_elbo, h, "step", "exact_elbo", color=c, label=f"{NAMES[method]}: ELBO(q)")
        g = h.groupby("step")["objective_over_beta"].mean()
        ax_elbo.plot(g.index, g.to_numpy(), "o", mfc="none", color=c, ms=5, alpha=0.9, label=f"{NAMES[method]}: J(q)/β")
        _band(ax_evals, h, "reward_evaluations", "kl_q_to_posterior", color=c, label=NAMES[method])
        _band(ax_wall, h, "wall_seconds", "kl_q_to_posterior", color=c, label=NAMES[method])
    ax_elbo.axhline(summary["log_z"], color=COLORS["exact"], ls="--", lw=1.2, label=f"log Z = {summary['log_z']:.4f}")
    gap = summary["max_abs_elbo_minus_objective_over_beta"]
    ax_elbo.set(
        title="ELBO(q) and J(q)/β coincide (exact, every logged step)",
        xlabel="optimizer step",
        ylabel="nats",
    )
    ax_elbo.text(
        0.98,
        0.05,
        f"max |ELBO − J/β| over all points: {gap:.1e} nats\n{_seeds_note(history)}",
        transform=ax_elbo.transAxes,
        ha="right",
        va="bottom",
        fontsize=8.5,
    )
    ax_elbo.legend(loc="center right")
    for ax, xlabel in ((ax_evals, "reward evaluations"), (ax_wall, "training wall time (seconds)")):
        _log_y(ax)
        ax.set(xlabel=xlabel, ylabel="KL(q ‖ π*) (nats, exact)")
        ax.legend(loc="upper right", title=_seeds_note(history), title_fontsize=8)
    ax_evals.set_title("Distance to the posterior per reward evaluation")
    ax_wall.set_title("Distance to the posterior per second of training")

    estimators = list(dict.fromkeys(variance["estimator"]))
    points = [("start", "at the start (q = π0)", "#9ecae1"), ("end", "at the end (trained SVI policy)", "#3182bd")]
    width = 0.38
    for i, (point, label, color) in enumerate(points):
        v = variance[variance["point"] == point].groupby("estimator")["total_variance"]
        mean, low, high = (v.mean()[estimators], v.min()[estimators], v.max()[estimators])
        xs = np.arange(len(estimators)) + (i - 0.5) * width
        ax_var.bar(xs, mean, width, color=color, label=label)
        ax_var.errorbar(xs, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="black", capsize=3, lw=1)
    ax_var.set_xticks(np.arange(len(estimators)))
    names = {
        "loo": "loo\n(leave-one-out)",
        "trace": "trace\n(Trace_ELBO)",
        "tracegraph": "tracegraph\n(TraceGraph_ELBO)",
    }
    ax_var.set_xticklabels([names.get(e, e) for e in estimators])
    _log_y(ax_var)
    n_seq, n_batches = int(variance["num_sequences"].iloc[0]), int(variance["num_batches"].iloc[0])
    ax_var.set(
        title="Gradient variance of the SVI estimators",
        ylabel="Σ_p Var[∂ELBO/∂θ_p] per sequence ((nats/logit)²)",
        xlabel=f"estimator ({n_seq} sequences per batch, {n_batches} batches; bars: mean, whiskers: min–max over seeds)",
    )
    ax_var.legend(loc="upper right")
    fig.suptitle(
        f"SVI and REINFORCE on task '{summary['task']}' (β = {summary['beta']:g}, "
        f"{summary['num_sequences_enumerated']:,} sequences, scored by exact enumeration)"
    )
    return fig


# ---------------------------------------------------------------------------------------------------------------


@_plot("beta_sweep.png", "sweep.csv", "collapse.csv")
def plot_beta_sweep(folder: Path, sweep: pd.DataFrame, collapse: pd.DataFrame, summary: dict) -> Figure:
    """``beta_sweep.png`` from ``sweep.csv``, ``collapse.csv`` and ``summary.json``."""
    beta, limit, post, prior = summary["beta"], summary["beta_to_zero_limit"], summary["posterior"], summary["prior"]
    fig, axes = _figure(2, 2, (12.5, 9.0))
    (ax_r, ax_h), (ax_ent, ax_dist) = axes

    ax_r.plot(sweep["beta"], sweep["expected_reward"], "o-", color=COLORS["exact"], ms=3.5, label="E_π*[r]")
    ax_r.axhline(limit["max_reward"], color=COLORS["rl_no_kl"], ls=":", label=f"max r = {limit['max_reward']:g}")
    ax_r.axhline(prior["expected_reward"], color=COLORS["prior"], ls="--", label="E_π0[r] (the prior)")
    ax_r.set(title="Expected reward under the posterior", ylabel="reward (task units)")
    ax_h.plot(sweep["beta"], sweep["entropy"], "o-", color=COLORS["exact"], ms=3.5, label="H(π*)")
    ax_h.plot(sweep["beta"], sweep["kl_to_prior"], "s-", color=COLORS["svi"], ms=3.5, label="KL(π* ‖ π0)")
    ax_h.axhline(prior["entropy"], color=COLORS["prior"], ls="--", label="H(π0)")
    ax_h.axhline(
        limit["entropy"],
        color=COLORS["rl_no_kl"],
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

    for variant in ("rl_no_kl", "rl"):
        c = collapse[collapse["variant"] == variant]
        _band(ax_ent, c, "reward_evaluations", "entropy", color=COLORS[variant], label=NAMES[variant])
        _band(ax_dist, c, "reward_evaluations", "distinct", color=COLORS[variant], label=NAMES[variant])
    ax_ent.axhline(post["entropy"], color=COLORS["exact"], ls="--", label=f"H(π*) = {post['entropy']:.2f}")
    ax_ent.axhline(0.1 * post["entropy"], color=COLORS["exact"], ls=":", lw=1, label="0.1 × H(π*)")
    n = int(summary["config"]["distinct_samples"])
    ax_dist.axhline(
        post["expected_distinct"], color=COLORS["exact"], ls="--", label=f"π*: {post['expected_distinct']:.0f} expected"
    )
    ax_ent.set(title=f"Policy entropy during training at β = {beta:g}", ylabel="H(q) (nats, exact)")
    ax_dist.set(
        title=f"Distinct sequences among {n} draws of the policy",
        ylabel=f"distinct sequences (of {n})",
    )
    _log_y(ax_dist)
    for ax in (ax_ent, ax_dist):
        ax.set_xlabel("reward evaluations")
        ax.legend(loc="upper right", title=_seeds_note(collapse), title_fontsize=8)
    fig.suptitle(f"β as a likelihood temperature, and the collapse without the KL term (task '{summary['task']}')")
    return fig


# ---------------------------------------------------------------------------------------------------------------


@_plot("forward_reverse.png", "history.csv", "regions.csv")
def plot_forward_reverse(folder: Path, history: pd.DataFrame, regions: pd.DataFrame, summary: dict) -> Figure:
    """``forward_reverse.png`` from ``history.csv``, ``regions.csv`` and ``summary.json``."""
    families = list(dict.fromkeys(history["family"]))
    fig, axes = _figure(3, len(families), (6.4 * len(families), 12.5))
    family_names = {
        "unigram": "unigram policy (i.i.d. tokens: cannot represent π*)",
        "tabular": "tabular policy (can represent π* exactly)",
    }
    methods = list(dict.fromkeys(history["method"]))
    for j, family in enumerate(families):
        ax_rev, ax_fwd, ax_bar = axes[:, j]
        h = history[history["family"] == family]
        for method in methods:
            hm = h[h["method"] == method]
            style = {"ls": "--"} if method == "dpg_batch" else {}
            for ax, y in ((ax_rev, "kl_q_to_posterior"), (ax_fwd, "kl_posterior_to_q")):
                _band(ax, hm, "reward_evaluations", y, color=COLORS[method], label=NAMES[method], **style)
        ax_rev.set(title=f"{family_names.get(family, family)}\nreverse KL(q ‖ π*): what SVI and RL minimize")
        ax_fwd.set(title="forward KL(π* ‖ q): what DPG minimizes")
        for ax, ylabel in ((ax_rev, "KL(q ‖ π*) (nats, exact)"), (ax_fwd, "KL(π* ‖ q) (nats, exact)")):
            _log_y(ax)
            ax.set(xlabel="reward evaluations", ylabel=ylabel)
            ax.legend(loc="upper right", title=_seeds_note(h), title_fontsize=8)

        region_names = ("mode_a", "mode_b", "between")
        labels = ("near mode A\n(0 0 0 0 0 0)", "near mode B\n(3 3 3 3 3 3)", "between\n(everything else)")
        rows = [("posterior", regions[regions["method"] == "posterior"])]
        rows += [(m, regions[(regions["family"] == family) & (regions["method"] == m)]) for m in methods]
        width = 0.8 / len(rows)
        for i, (method, frame) in enumerate(rows):
            xs = np.arange(len(region_names)) + (i - (len(rows) - 1) / 2) * width
            mean = frame[list(region_names)].mean().to_numpy()
            low = frame[list(region_names)].min().to_numpy()
            high = frame[list(region_names)].max().to_numpy()
            color = COLORS["exact"] if method == "posterior" else COLORS[method]
            ax_bar.bar(xs, mean, width, color=color, label=NAMES["exact"] if method == "posterior" else NAMES[method])
            ax_bar.errorbar(xs, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax_bar.set_xticks(np.arange(len(region_names)))
        ax_bar.set_xticklabels(labels)
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
    return fig


# ---------------------------------------------------------------------------------------------------------------


@_plot("posterior_bars.png", "top_sequences.csv")
def plot_posterior(folder: Path, top: pd.DataFrame, summary: dict) -> Figure:
    """``posterior_bars.png`` from ``top_sequences.csv`` and ``summary.json``."""
    draws, tv, noise = summary["draws"], summary["tv_to_posterior"], summary["tv_of_as_many_exact_draws"]
    methods = list(dict.fromkeys(top["method"]))
    labels = top[top["method"] == methods[0]].sort_values("rank")["sequence"].tolist()
    k = len(labels)
    kernel = NAMES.get(draws["mcmc_kernel"], draws["mcmc_kernel"])
    evals = f"{draws['reward_evaluations_per_policy']:,} reward evaluations"
    legend = {
        "exact": NAMES["exact"],
        "is": f"importance sampling: {draws['is']:,} prior draws, resampled (TV {tv['is']:.3f}; "
        f"as many exact draws: {noise['is']:.3f})",
        "mcmc": f"MCMC, {kernel}: {draws['mcmc']:,} draws (TV {tv['mcmc']:.3f}; as many exact draws: {noise['mcmc']:.3f})",
        "svi": f"{NAMES['svi']}: exact q(x) after {evals} (TV {tv.get('svi', math.nan):.3f})",
        "rl": f"{NAMES['rl']}: exact q(x) after {evals} (TV {tv.get('rl', math.nan):.3f})",
    }
    fig, axes = _figure(1, 1, (11.0, 2.6 + 0.62 * k))
    ax = axes[0, 0]
    height = 0.84 / len(methods)
    for i, method in enumerate(methods):
        frame = top[top["method"] == method].sort_values("rank")
        ys = np.arange(k) + (i - (len(methods) - 1) / 2) * height
        ax.barh(ys, frame["probability"], height, color=COLORS[method], label=legend.get(method, method))
    ax.set_yticks(np.arange(k))
    ax.set_yticklabels(labels, fontfamily="monospace")
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
    return fig


# ---------------------------------------------------------------------------------------------------------------


def _khat_for_display(values: pd.Series, low: float, high: float) -> pd.Series:
    """k̂ of −inf (bounded weights) and +inf (too few weights to fit) drawn at the axis limits."""
    return values.replace(-math.inf, low).replace(math.inf, high).clip(low, high)


@_plot("khat.png", "khat.csv")
def plot_khat(folder: Path, khat: pd.DataFrame, summary: dict) -> Figure:
    """``khat.png`` from ``khat.csv`` and ``summary.json``: one row per task."""
    tasks = list(dict.fromkeys(khat["task"]))
    num_samples = summary["config"]["khat_samples"]
    fig, axes = _figure(len(tasks), 3, (17.0, 4.6 * len(tasks)))
    low, high = -0.5, 2.0
    for row, name in enumerate(tasks):
        ax_k, ax_kl, ax_ess = axes[row]
        info = summary["tasks"][name]
        frame_task = khat[khat["task"] == name]
        good, usable = KHAT_GOOD, KHAT_USABLE
        ax_k.axhspan(low, good, color="#2ca02c", alpha=0.07)
        ax_k.axhspan(good, usable, color="#ffbf00", alpha=0.15)
        ax_k.axhspan(usable, high, color="#d62728", alpha=0.07)
        labels = (f"good (k̂ < {good:g})", f"usable ({good:g}–{usable:g})", f"unreliable (k̂ > {usable:g})")
        for y, text in zip((0.2, 0.6, 1.35), labels):
            ax_k.text(0.99, y, text, transform=ax_k.get_yaxis_transform(), ha="right", va="center", fontsize=8.5)
        for method in ("svi", "rl"):
            frame = frame_task[frame_task["method"] == method].copy()
            frame["khat_shown"] = _khat_for_display(frame["khat"], low, high)
            c = COLORS[method]
            _band(ax_k, frame, "reward_evaluations", "khat_shown", color=c, label=NAMES[method], marker="o", ms=3)
            _band(ax_kl, frame, "reward_evaluations", "kl_q_to_posterior", color=c, label=f"{method}: KL(q ‖ π*)")
            _band(
                ax_kl, frame, "reward_evaluations", "kl_posterior_to_q", color=c, label=f"{method}: KL(π* ‖ q)", ls="--"
            )
            frame["distinct_fraction"] = frame["distinct"] / num_samples
            _band(ax_ess, frame, "reward_evaluations", "ess", color=c, label=f"{method}: ESS / N")
            _band(
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
        _log_y(ax_kl)
        ax_kl.set(xlabel="reward evaluations", ylabel="nats (exact)", title="reverse and forward KL to π*")
        ax_ess.set(
            xlabel="reward evaluations",
            ylabel=f"fraction of the {num_samples:,} draws",
            ylim=(0, 1.05),
            title="normalized ESS, and distinct sequences among the draws",
        )
        note = _seeds_note(frame_task)
        ax_k.legend(loc="upper left", title=note, title_fontsize=8)
        ax_kl.legend(loc="upper right", title=note, title_fontsize=8, ncols=2)
        ax_ess.legend(loc="center right", title=note, title_fontsize=8, ncols=2)
    fig.suptitle("k̂ of the SVI and RL policies over training (k̂ = −∞ drawn at the bottom: bounded weights)")
    return fig


# ---------------------------------------------------------------------------------------------------------------


@_plot("mcmc_diagnostics.png", "diagnostics.csv")
def plot_mcmc(folder: Path, diagnostics: pd.DataFrame, summary: dict, variable: str = "log_target") -> Figure:
    """``mcmc_diagnostics.png`` (ArviZ trace, rank and ESS plots of one scalar summary, a row per kernel) from
    ``mcmc_<kernel>.nc``, ``diagnostics.csv`` and ``summary.json``."""
    import arviz as az

    kernels = list(dict.fromkeys(diagnostics["kernel"]))
    names = {"log_target": "log π0(x) + r(x)/β", "log_prior": "log π0(x)", "reward": "r(x)"}
    shown = names.get(variable, variable)
    fig, axes = _figure(len(kernels), 4, (17.0, 3.9 * len(kernels)))
    for i, kernel in enumerate(kernels):
        idata = az.from_netcdf(folder / f"mcmc_{kernel}.nc")
        table = diagnostics[diagnostics["kernel"] == kernel].set_index("variable")
        row = table.loc[variable]
        ax_dist, ax_trace, ax_rank, ax_ess = axes[i]
        with warnings.catch_warnings():  # ArviZ 0.x calls a matplotlib helper deprecated in 3.11
            warnings.filterwarnings("ignore", category=matplotlib.MatplotlibDeprecationWarning)
            az.plot_trace(idata, var_names=[variable], axes=np.array([[ax_dist, ax_trace]]), compact=False)
            az.plot_rank(idata, var_names=[variable], ax=ax_rank)
            az.plot_ess(idata, var_names=[variable], kind="evolution", ax=ax_ess)
        others = ", ".join(f"{names.get(v, v)} {table.loc[v, 'r_hat']:.3f}" for v in table.index if v != variable)
        for ax in axes[i]:
            ax.tick_params(labelsize=9)
        ax_dist.set(
            title=f"{NAMES.get(kernel, kernel)}\nacceptance {row['acceptance_rate']:.2f}; density of {shown} per chain",
            xlabel=f"{shown} (nats)",
            ylabel="density",
        )
        ax_trace.set(
            title=f"trace: R-hat {row['r_hat']:.3f}\n(R-hat of {others})",
            xlabel="draw (after warm-up)",
            ylabel=f"{shown} (nats)",
        )
        ax_rank.set(title="rank plot: flat bars when the chains agree", xlabel="rank among all draws", ylabel="chain")
        ax_ess.set(
            title=f"ESS of {shown}: bulk {row['ess_bulk']:.0f}, tail {row['ess_tail']:.0f}\nof {int(row['draws']):,} draws",
            xlabel="draws kept (all chains)",
            ylabel="effective sample size",
        )
        handles, labels = ax_ess.get_legend_handles_labels()
        ax_ess.legend(handles, [f"{label} ESS" for label in labels] + [], loc="upper left", fontsize=8.5)
        ax_ess.text(0.99, 400, "400 ", transform=ax_ess.get_yaxis_transform(), ha="right", va="bottom", fontsize=8)
    exact = summary.get("exact_expected_reward")
    estimates = ", ".join(
        f"{k} {diagnostics[diagnostics['kernel'] == k]['expected_reward'].iloc[0]:.3f}" for k in kernels
    )
    extra = f"; E_π*[r]: exact {exact:.3f}, {estimates}" if exact is not None else ""
    fig.suptitle(
        f"MCMC diagnostics (ArviZ) on task '{summary['task']}' (β = {summary['beta']:g}{extra})\n"
        f"trust the chains only with R-hat < {RHAT_MAX:g} and bulk ESS > 400 (dashed line)"
    )
    return fig
