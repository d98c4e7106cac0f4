r"""The posterior five ways: exact enumeration, importance sampling, MCMC, and the SVI and RL policies.

On the word task by default: the most probable sentences of π* with their probability under each method,
decoded to text, and each method's total variation to π* over all 16^5 sequences.

Writes into --out: top_sequences.csv, summary.json, posterior_bars.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/posterior.py --quick --out runs/report/posterior

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from bayes_klrl import plots  # noqa: E402
from bayes_klrl.report import PosteriorConfig, add_config_arguments, config_from_args, run_posterior  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/report/posterior"), help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(parser, PosteriorConfig)
    args = parser.parse_args(argv)
    config = config_from_args(PosteriorConfig, args)
    if not args.plot_only:
        run_posterior(config, args.out, progress=not args.no_progress)  # train and measure; writes the data files
    for path in plots.plot_posterior(args.out):  # drawn from the saved data files only
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
