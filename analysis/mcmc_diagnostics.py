r"""MCMC on token sequences read with ArviZ: trace, rank and ESS plots, R-hat.

Runs single-site Gibbs and independence Metropolis–Hastings (prior proposal) with several chains, stores the
draws as ArviZ InferenceData (NetCDF) and plots the unnormalized log posterior log π0 + r/β of each draw.

Writes into --out: mcmc_gibbs.nc, mcmc_imh.nc, diagnostics.csv, summary.json, mcmc_diagnostics.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/mcmc_diagnostics.py --quick --out runs/report/mcmc

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from bayes_klrl import plots  # noqa: E402
from bayes_klrl.report import MCMCConfig, add_config_arguments, config_from_args, run_mcmc_diagnostics  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/report/mcmc"), help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(parser, MCMCConfig)
    args = parser.parse_args(argv)
    config = config_from_args(MCMCConfig, args)
    if not args.plot_only:
        run_mcmc_diagnostics(
            config, args.out, progress=not args.no_progress
        )  # train and measure; writes the data files
    for path in plots.plot_mcmc(args.out):  # drawn from the saved data files only
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
