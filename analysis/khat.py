r"""The PSIS k̂ of the SVI and RL policies as proposals for π*, over training.

For each task, method and seed, every --log-every steps: Pareto k̂ and normalized ESS of the weights
π0·exp(r/β)/q under draws from the policy, the number of distinct sequences among those draws, and the exact
KL(q‖π*) and KL(π*‖q).

Writes into --out: khat.csv, summary.json, khat.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/khat.py --quick --out runs/report/khat

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from bayes_klrl import plots  # noqa: E402
from bayes_klrl.report import KhatConfig, add_config_arguments, config_from_args, run_khat  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/report/khat"), help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(parser, KhatConfig)
    args = parser.parse_args(argv)
    config = config_from_args(KhatConfig, args)
    if not args.plot_only:
        run_khat(config, args.out, progress=not args.no_progress)  # train and measure; writes the data files
    for path in plots.plot_khat(args.out):  # drawn from the saved data files only
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
