r"""MCMC on token sequences read with ArviZ: trace, rank and ESS plots, R-hat.

Runs single-site Gibbs and independence Metropolis–Hastings (prior proposal) with several chains, stores the
draws as ArviZ InferenceData (NetCDF) and plots the unnormalized log posterior log π0 + r/β of each draw.

Writes into --out: mcmc_gibbs.nc, mcmc_imh.nc, diagnostics.csv, summary.json, mcmc_diagnostics.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/mcmc_diagnostics.py --quick --out runs/report/mcmc

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from bayes_klrl.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("mcmc", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
