r"""Trace, rank and ESS plots of the MCMC kernels' draws (ArviZ's diagnostics, 0.x or 1.x), saved as NetCDF.

Runs each kernel (single-site Gibbs, independence MH with the prior as proposal) with several chains on one
task, keeps the draws as ArviZ InferenceData with the unnormalized log posterior
:math:`\log\pi_0(x) + r(x)/\beta` of each draw added (Stan's ``lp__``), and reports R-hat, bulk and tail ESS,
the acceptance rate and, on an enumerable task, the total variation of the draws to π*.

Writes into --out: mcmc_<kernel>.nc, diagnostics.csv, summary.json, mcmc_diagnostics.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/mcmc_diagnostics.py --quick --out runs/report/mcmc

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``python analysis/report.py`` (as ``mcmc``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from _common import check_positive, experiment_main, load, write_summary
from _figures import figure, label, read_csv, read_json, save, style

from bayes_klrl import _arviz
from bayes_klrl.config import Preset, check_choices, option
from bayes_klrl.diagnostics import RHAT_MAX, load_netcdf, mcmc_inference_data, save_netcdf
from bayes_klrl.exact import exact_posterior
from bayes_klrl.infer.mcmc import run_mcmc, total_variation
from bayes_klrl.storage import write_csv

#: the experiment's name in the report (its folder: ``runs/report/mcmc``)
NAME = "mcmc"
KERNELS = ("gibbs", "imh")
#: scalar summaries of each draw whose R-hat and ESS are reported
SUMMARIES = ("log_target", "log_prior", "reward")


@dataclass(frozen=True)
class Config(Preset):
    """MCMC kernels on one task; their draws as ArviZ InferenceData (NetCDF) with R-hat and ESS."""

    task: str = option("words_sentiment", "shipped task name or model file")
    beta: float | None = option(None, "override the task's β")
    kernels: tuple[str, ...] = option(KERNELS, "MCMC kernels: gibbs and/or imh (prior proposal)", choices=KERNELS)
    num_chains: int = option(4, "chains per kernel")
    num_samples: int = option(2000, "draws kept per chain")
    warmup: int = option(200, "warm-up steps per chain")
    seed: int = option(0, "seeds the kernels")

    QUICK: ClassVar[dict] = {"num_samples": 400, "warmup": 100}

    def __post_init__(self):
        check_positive(self, "num_chains", "num_samples")
        check_choices(self, nonempty=("kernels",))
        if self.num_chains < 2:
            raise ValueError("num_chains must be >= 2 (R-hat compares chains)")


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    r"""Run each kernel; write ``mcmc_<kernel>.nc`` (InferenceData with ``log_target`` :math:`= \log\pi_0 + r/\beta`
    added), ``diagnostics.csv`` (R-hat, bulk and tail ESS of ``log_target``, ``log_prior`` and ``reward``, the
    acceptance rate, the TV of the draws to π* when enumerable) and ``summary.json``."""
    out = Path(out)
    task = load(config.task, config.beta)
    posterior = exact_posterior(task) if task.is_enumerable() else None
    rows = []
    for kernel in config.kernels:
        t0 = time.perf_counter()
        result = run_mcmc(
            task,
            kernel,
            num_chains=config.num_chains,
            num_samples=config.num_samples,
            warmup=config.warmup,
            seed=config.seed,
        )
        seconds = time.perf_counter() - t0
        idata = mcmc_inference_data(task, result)
        post = idata.posterior
        # the unnormalized log posterior log π0 + r/β of each draw (Stan's lp__): a continuous scalar summary
        idata.posterior["log_target"] = post["log_prior"] + post["reward_over_beta"]
        path = out / f"mcmc_{kernel}.nc"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_netcdf(idata, path)
        table = _arviz.summary(idata, list(SUMMARIES), kind="diagnostics")
        tv = None if posterior is None else total_variation(result.draws, posterior.log_probs, task.vocab_size)
        for var in SUMMARIES:
            rows.append(
                {
                    "kernel": kernel,
                    "variable": var,
                    "r_hat": float(table.loc[var, "r_hat"]),
                    "ess_bulk": float(table.loc[var, "ess_bulk"]),
                    "ess_tail": float(table.loc[var, "ess_tail"]),
                    "draws": result.num_chains * result.num_draws,
                    "acceptance_rate": float(result.acceptance_rate.mean()),
                    "expected_reward": result.expected_reward,
                    "tv_to_posterior": tv,
                    "seconds": seconds,
                }
            )
    write_csv(out / "diagnostics.csv", rows)
    return write_summary(
        out,
        config,
        task,
        exact_expected_reward=None if posterior is None else posterior.expected_reward,
        kernels=rows,
    )


def _draw_chains(values: np.ndarray, ax_dist, ax_trace, ax_rank, ax_ess) -> None:
    """ArviZ's four views of one scalar's draws ``(chain, draw)``, drawn here so that the figure is the same under
    ArviZ 0.x and 1.x (whose plotting APIs differ): density and trace per chain, the rank plot (each chain's
    histogram of the ranks of its draws among all draws), and the bulk and tail ESS as more draws are kept."""
    chains, draws = values.shape
    for c in range(chains):
        ax_dist.hist(values[c], bins=30, density=True, histtype="step", lw=1.2)
        ax_trace.plot(values[c], lw=0.6, alpha=0.8)
    ranks = values.reshape(-1).argsort(kind="stable").argsort(kind="stable").reshape(values.shape)
    bins = np.linspace(0, values.size, 21)
    for c in range(chains):
        counts, _ = np.histogram(ranks[c], bins=bins)
        ax_rank.bar(bins[:-1], counts / counts.max() * 0.8, width=np.diff(bins), bottom=c, align="edge", alpha=0.7)
    ax_rank.set_yticks(range(chains))
    kept = np.unique(np.linspace(max(4, draws // 20), draws, 20).astype(int))
    for method in ("bulk", "tail"):
        ax_ess.plot(kept * chains, [_arviz.ess(values[:, :n], method) for n in kept], marker="o", ms=3, label=method)
    ax_ess.axhline(400, color="0.4", ls="--", lw=1)


def plot(out: str | Path, variable: str = "log_target") -> list[Path]:
    """``mcmc_diagnostics.png`` (ArviZ trace, rank and ESS plots of one scalar summary, a row per kernel) from
    ``mcmc_<kernel>.nc``, ``diagnostics.csv`` and ``summary.json``."""
    out = Path(out)
    diagnostics, summary = read_csv(out / "diagnostics.csv"), read_json(out / "summary.json")
    kernels = list(dict.fromkeys(diagnostics["kernel"]))
    names = {"log_target": "log π0(x) + r(x)/β", "log_prior": "log π0(x)", "reward": "r(x)"}
    shown = names.get(variable, variable)
    with style():
        fig, axes = figure(len(kernels), 4, (17.0, 3.9 * len(kernels)))
        for i, kernel in enumerate(kernels):
            idata = load_netcdf(out / f"mcmc_{kernel}.nc")
            table = diagnostics[diagnostics["kernel"] == kernel].set_index("variable")
            row = table.loc[variable]
            ax_dist, ax_trace, ax_rank, ax_ess = axes[i]
            _draw_chains(idata["posterior"][variable].values, ax_dist, ax_trace, ax_rank, ax_ess)
            others = ", ".join(f"{names.get(v, v)} {table.loc[v, 'r_hat']:.3f}" for v in table.index if v != variable)
            for ax in axes[i]:
                ax.tick_params(labelsize=9)
            ax_dist.set(
                title=f"{label(kernel)}\nacceptance {row['acceptance_rate']:.2f}; density of {shown} per chain",
                xlabel=f"{shown} (nats)",
                ylabel="density",
            )
            ax_trace.set(
                title=f"trace: R-hat {row['r_hat']:.3f}\n(R-hat of {others})",
                xlabel="draw (after warm-up)",
                ylabel=f"{shown} (nats)",
            )
            ax_rank.set(
                title="rank plot: flat bars when the chains agree", xlabel="rank among all draws", ylabel="chain"
            )
            ax_ess.set(
                title=f"ESS of {shown}: bulk {row['ess_bulk']:.0f}, tail {row['ess_tail']:.0f}\n"
                f"of {int(row['draws']):,} draws",
                xlabel="draws kept (all chains)",
                ylabel="effective sample size",
            )
            handles, labels = ax_ess.get_legend_handles_labels()
            ax_ess.legend(handles, [f"{text} ESS" for text in labels], loc="upper left", fontsize=8.5)
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
        return [save(fig, out / "mcmc_diagnostics.png")]


def main(argv: list[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
