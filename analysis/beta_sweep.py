r"""β as a likelihood temperature, and the distribution collapse of RL without the KL term.

Enumerates the posterior from a large β to a tiny one (E_π*[r], KL(π*‖π0), H(π*)), then trains REINFORCE with
and without the KL term at the task's β and follows the policy's exact entropy and the number of distinct
sequences among its draws.

Writes into --out: sweep.csv, collapse.csv, summary.json, beta_sweep.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/beta_sweep.py --quick --out runs/report/beta_sweep

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from bayes_klrl import plots  # noqa: E402
from bayes_klrl.report import BetaSweepConfig, add_config_arguments, config_from_args, run_beta_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/report/beta_sweep"), help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(parser, BetaSweepConfig)
    args = parser.parse_args(argv)
    config = config_from_args(BetaSweepConfig, args)
    if not args.plot_only:
        run_beta_sweep(config, args.out, progress=not args.no_progress)  # train and measure; writes the data files
    for path in plots.plot_beta_sweep(args.out):  # drawn from the saved data files only
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
