r"""TRL's RLOOTrainer against this package's trainers on one GPT-2, drawn from the benchmark's saved results.

Reads the results of ``benchmarks/trl_side_by_side.py`` (``trl_rloo.json`` and every ``ours_<method>.json`` of
``--results``): per run the side, method, learning rate, seed and settings, and its curve of the exact
:math:`\mathrm{KL}(q\|\pi^*)` (by enumeration) against sequences sampled and training seconds. Trains nothing and
needs no TRL. A *setting* is a side and method with the options that are not the optimizer's (``--replay 32``:
"bayes_klrl rl, replay 32"); its seeds are grouped per learning rate, and its best learning rate is the one with
the smallest median (over seeds) KL after the last sequence, as in the benchmark's own summary.

Writes into --out: curves.csv (one row per setting, learning rate, seed and checked sequence count),
summary.json (per setting and learning rate the median final KL and the sequences to each KL goal; the best
learning rate) and trl_curves.png.

Example (a few seconds: it only reads the JSON files)::

    python analysis/trl_curves.py --out runs/report/trl_curves

``--plot-only`` redraws the figure from the data already in ``--out``. The same figure is drawn inside
``python analysis/report.py``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from _common import experiment_main, write_summary
from _figures import color, figure, log_y, read_csv, read_json, save, style
from matplotlib.colors import to_hex, to_rgb
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bayes_klrl.config import Preset, option
from bayes_klrl.methods import OPTIMIZER_OPTIONS
from bayes_klrl.storage import write_csv

NAME = "trl_curves"
#: the benchmark's results, beside this folder in the repository (not relative to the working directory)
DEFAULT_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: the benchmark's file names: TRL's runs, then one file per method of ours
TRL_FILE, OURS_PATTERN = "trl_rloo.json", "ours_*.json"
#: colour of TRL's trainer (no method of this package has it)
TRL_COLOR = "#7b3294"
#: task fields that must agree between the files (the checkpoint's path may differ between machines)
TASK_KEYS = ("name", "beta", "length", "vocab_size", "num_sequences", "log_z")


@dataclass(frozen=True)
class Config(Preset):
    """TRL RLOO against bayes_klrl's trainers: the benchmark's saved KL curves and learning-rate sweep, drawn."""

    results: str = option(str(DEFAULT_RESULTS), "folder of the benchmark's results JSON (trl_rloo.json, ours_*.json)")

    QUICK: ClassVar[dict] = {}  # nothing to shrink: the script only reads the saved results

    def __post_init__(self):
        load_results(self.results)  # a missing folder, no runs or mismatched tasks: one line, before anything


# -- reading the benchmark's files -------------------------------------------------------------------------------
def result_files(folder: str | Path) -> list[Path]:
    """``trl_rloo.json`` then the ``ours_*.json`` files of ``folder`` (those that exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no results folder {folder} (run benchmarks/trl_side_by_side.py --out {folder} first)")
    files = [folder / TRL_FILE] if (folder / TRL_FILE).is_file() else []
    return files + sorted(folder.glob(OURS_PATTERN))


def load_results(folder: str | Path) -> tuple[list[dict], list[Path]]:
    """The documents of :func:`result_files` and their paths; ``ValueError`` (one line) when there is no run, a
    file is not the benchmark's, or the files are about different tasks."""
    files = result_files(folder)
    docs = []
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            assert isinstance(doc["runs"], list) and isinstance(doc["task"], dict)
        except Exception as exc:
            raise ValueError(f"{path} is not a results file of trl_side_by_side.py ({type(exc).__name__})") from None
        docs.append(doc)
    if not any(doc["runs"] for doc in docs):
        raise ValueError(f"no runs in {folder} (looked for {TRL_FILE} and {OURS_PATTERN})")
    tasks = {json.dumps({k: doc["task"].get(k) for k in TASK_KEYS}, sort_keys=True) for doc in docs if doc["runs"]}
    if len(tasks) > 1:
        raise ValueError(f"the results in {folder} are about different tasks: {' / '.join(sorted(tasks))}")
    return docs, files


def setting_label(side: str, method: str, settings: dict) -> str:
    """What tells a setting apart: ``"TRL RLOO"``, ``"bayes_klrl rl"``, ``"bayes_klrl rl, replay 32"`` (the
    options of ours that are not the optimizer's, :data:`bayes_klrl.methods.OPTIMIZER_OPTIONS`)."""
    if side == "trl":
        return "TRL RLOO" if method == "trl_rloo" else f"TRL {method}"
    options = (settings or {}).get("options") or {}
    extra = [f"{k.replace('_', ' ')} {_plain(v)}" for k, v in sorted(options.items()) if k not in OPTIMIZER_OPTIONS]
    return ", ".join([f"bayes_klrl {method}", *extra])


def _plain(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _median(values) -> float | None:
    """The median as the benchmark takes it (:func:`statistics.median`), ``None`` for +∞."""
    value = statistics.median(values)
    return float(value) if math.isfinite(value) else None


def _sequences_to(curve: list[dict], goal: float) -> int | None:
    """Sequences at the first check with KL ≤ ``goal`` (``None``: never), as the benchmark counts them."""
    return next((int(p["sequences"]) for p in curve if p["kl_q_to_posterior"] <= goal), None)


# -- run: the data of the figure ---------------------------------------------------------------------------------
def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Write ``curves.csv`` (per setting, lr, seed and checked sequence count: the exact
    :math:`\mathrm{KL}(q\|\pi^*)` and the training seconds so far) and ``summary.json`` (per setting and lr: the
    seeds, the median and per-seed KL after the last sequence, the median sequences to each KL goal; the best lr
    of each setting; the task, the KL goals and the files read)."""
    out = Path(out)
    docs, files = load_results(config.results)
    goals = sorted({float(g) for doc in docs for g in doc.get("kl_goals", ())}, reverse=True)
    task = next(doc["task"] for doc in docs if doc["runs"])
    rows, groups, seen = [], {}, {}
    order = {"trl": 0, "ours": 1}  # TRL first, then ours by method, the plain method before its variants

    def name_of(r: dict) -> str:
        return setting_label(r["side"], r["method"], r.get("settings", {}))

    runs = sorted((r for doc in docs for r in doc["runs"]), key=lambda r: (order.get(r["side"], 2), name_of(r)))
    for r in runs:
        name = name_of(r)
        key = (name, float(r["lr"]), int(r["seed"]))
        if key in seen:
            raise ValueError(
                f"two runs of {name!r} at lr {r['lr']:g}, seed {r['seed']} (settings beyond the label differ, "
                f"e.g. the length); keep one of them in {config.results}"
            )
        seen[key] = r
        groups.setdefault((name, float(r["lr"])), []).append(r)
        for point in r["curve"]:
            rows.append(
                {
                    "setting": name,
                    "side": r["side"],
                    "method": r["method"],
                    "lr": float(r["lr"]),
                    "seed": int(r["seed"]),
                    "sequences": int(point["sequences"]),
                    "wall_seconds": float(point["wall_seconds"]),
                    "kl_q_to_posterior": float(point["kl_q_to_posterior"]),
                }
            )
    write_csv(out / "curves.csv", rows)

    settings: dict[str, dict] = {}
    for (name, lr), members in groups.items():
        members = sorted(members, key=lambda r: r["seed"])
        finals = [float(r["curve"][-1]["kl_q_to_posterior"]) for r in members]
        entry = {
            "lr": lr,
            "seeds": [int(r["seed"]) for r in members],
            "sequences": [int(r["curve"][-1]["sequences"]) for r in members],
            "kl_after_sequences": _median(finals),
            "kl_after_sequences_per_seed": finals,
        }
        for goal in goals:
            per_seed = [_sequences_to(r["curve"], goal) for r in members]
            entry[f"sequences_to_kl_{goal:g}"] = _median([math.inf if s is None else s for s in per_seed])
            entry[f"sequences_to_kl_{goal:g}_per_seed"] = per_seed
        setting = settings.setdefault(name, {"side": members[0]["side"], "method": members[0]["method"], "lrs": []})
        setting["lrs"].append(entry)
    for setting in settings.values():
        setting["lrs"].sort(key=lambda e: e["lr"])
        finite = [e for e in setting["lrs"] if e["kl_after_sequences"] is not None] or setting["lrs"]
        best = min(finite, key=lambda e: e["kl_after_sequences"] or 0.0)
        setting["best_lr"] = best["lr"]
        setting["best"] = best
    versions = {r["settings"].get("versions", {}).get("trl") for r in runs if r["side"] == "trl"} - {None}
    policies = {r["settings"].get("policy") for r in runs if r["side"] != "trl"}
    return write_summary(
        out,
        config,
        about={
            "task": task["name"],
            "beta": task["beta"],
            "task_info": task,
            "files": [str(p) for p in files],
            "trl_versions": sorted(versions),
            "num_sequences_per_step": sorted({int(r["num_sequences"]) for r in runs}),
            "full_fine_tuning": policies <= {"copy"},
            "kl_goals": goals,
        },
        settings=settings,
    )


# -- plot --------------------------------------------------------------------------------------------------------
def setting_colors(summary: dict) -> dict[str, str]:
    """TRL in :data:`TRL_COLOR`; a method of ours in its colour (:func:`_figures.color`), darker with options."""
    colors, variants = {}, {}
    for name, setting in summary["settings"].items():
        if setting["side"] == "trl":
            colors[name] = TRL_COLOR
            continue
        k = variants[setting["method"]] = variants.get(setting["method"], -1) + 1
        base = np.array(to_rgb(color(setting["method"])))
        colors[name] = to_hex(base * 0.6**k)  # the plain method, then darker shades for its variants
    return colors


def _goal_label(goal: float) -> str:
    return f"KL = {goal:g}"


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _number(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.2g}"


def plot(out: str | Path) -> list[Path]:
    """``trl_curves.png`` from ``curves.csv`` and ``summary.json``: (a) KL against sequences at each setting's
    best lr, median and min–max over seeds; (b) the final KL against the learning rate, per seed and median."""
    out = Path(out)
    curves, summary = read_csv(out / "curves.csv"), read_json(out / "summary.json")
    settings, colors = summary["settings"], setting_colors(summary)
    start_kl = summary["task_info"].get("kl_prior_to_posterior")
    with style():
        fig, axes = figure(1, 2, (15.0, 6.0), gridspec_kw={"width_ratios": [1.25, 1.0]})
        ax_curve, ax_lr = axes[0]

        # (a) each setting at its best learning rate
        for name, setting in settings.items():
            best = setting["best"]
            frame = curves[(curves["setting"] == name) & (curves["lr"] == best["lr"])]
            g = frame.groupby("sequences")["kl_q_to_posterior"]
            xs = g.median().index.to_numpy()
            ax_curve.fill_between(xs, g.min().to_numpy(), g.max().to_numpy(), color=colors[name], alpha=0.18, lw=0)
            n, final = len(best["seeds"]), best["kl_after_sequences"]
            text = f"{name}: lr {best['lr']:g}, {n} seed{'s' if n != 1 else ''}, final {_number(final)}"
            ax_curve.plot(xs, g.median().to_numpy(), color=colors[name], label=text)
        log_y(ax_curve)
        for goal in summary["kl_goals"]:
            ax_curve.axhline(goal, color="#444444", ls="--", lw=1.0, zorder=1)
            ax_curve.text(
                0.99,
                goal,
                _goal_label(goal),
                transform=ax_curve.get_yaxis_transform(),
                ha="right",
                va="bottom",
                fontsize=8.5,
                color="#444444",
            )
        ax_curve.set_xlim(0, curves["sequences"].max())
        ax_curve.set(
            title="KL(q‖π*) against sequences, each setting at its best learning rate",
            xlabel="sequences sampled (reward evaluations)",
            ylabel="KL(q ‖ π*) (nats, exact by enumeration)",
        )
        ax_curve.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax_curve.legend(loc="upper right", title="line: median over seeds, band: min–max", title_fontsize=8.5)

        # (b) the learning-rate sweep: per-seed final KL and the median, a small horizontal offset per setting
        names = list(settings)
        for i, (name, setting) in enumerate(settings.items()):
            shift = 10 ** (0.035 * (i - (len(names) - 1) / 2))
            lrs = np.array([e["lr"] for e in setting["lrs"]])
            medians = np.array([_nan_if_none(e["kl_after_sequences"]) for e in setting["lrs"]], dtype=float)
            for e in setting["lrs"]:
                seeds = e["kl_after_sequences_per_seed"]
                ax_lr.scatter([e["lr"] * shift] * len(seeds), seeds, s=22, color=colors[name], alpha=0.55, lw=0)
            ax_lr.plot(lrs * shift, medians, "o-", color=colors[name], ms=6, mfc="white", mew=1.6, label=name)
            best = setting["best"]
            ax_lr.plot(best["lr"] * shift, _nan_if_none(best["kl_after_sequences"]), "*", color=colors[name], ms=15, mec="black",
                       mew=0.6, zorder=5)  # fmt: skip
        if start_kl:
            ax_lr.axhline(start_kl, color="#7f7f7f", ls=":", lw=1.2, zorder=1)
            ax_lr.text(0.62, start_kl, f"the start, q = π0: KL = {start_kl:.2f}", transform=ax_lr.get_yaxis_transform(),
                       ha="center", va="bottom", fontsize=8.5, color="#555555")  # fmt: skip
        for goal in summary["kl_goals"]:  # labelled mid-axis, where no learning rate was tried
            ax_lr.axhline(goal, color="#444444", ls="--", lw=0.8, alpha=0.6, zorder=1)
            ax_lr.text(0.5, goal, _goal_label(goal), transform=ax_lr.get_yaxis_transform(), ha="center", va="bottom",
                       fontsize=8.5, color="#444444")  # fmt: skip
        ax_lr.set_xscale("log")
        ax_lr.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
        ax_lr.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_lr.xaxis.set_minor_formatter(NullFormatter())
        log_y(ax_lr)
        ax_lr.set(
            title="The learning-rate sweep",
            xlabel="learning rate (AdamW, linear decay to 0)",
            ylabel="KL(q ‖ π*) after the last sequence (nats, exact)",
        )
        ax_lr.legend(loc="upper left", title="dots: seeds, line: median, ★: best lr", title_fontsize=8.5)

        task = summary["task_info"]
        trl = ", ".join(".".join(v.split(".")[:2]) for v in summary["trl_versions"]) or "?"
        per_step = " or ".join(str(n) for n in summary["num_sequences_per_step"])
        tuning = ", full fine-tuning" if summary["full_fine_tuning"] else ""
        fig.suptitle(
            f"Task '{task['name']}' (β = {task['beta']:g}, {task['num_sequences']:,} sequences, scored exactly): "
            f"TRL {trl} RLOOTrainer vs bayes_klrl, {per_step} sequences per step{tuning}"
        )
        return [save(fig, out / "trl_curves.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
