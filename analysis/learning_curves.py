r"""SVI against REINFORCE on the same task and seeds, scored exactly at every logged step.

Fits the Pyro SVI guide (leave-one-out ELBO) and the plain-torch REINFORCE trainer (KL in the reward) from the
same seeds; logs the exact ELBO(q) and, computed separately, J(q)/β (they must coincide: ELBO = J/β), and
KL(q‖π*) against reward evaluations and wall time; measures the gradient variance of the SVI estimators
(loo, trace, tracegraph) at the start and at the end of training.

Writes into --out: history.csv, gradient_variance.csv, summary.json, learning_curves.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/learning_curves.py --quick --out runs/report/learning_curves

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from bayes_klrl import plots  # noqa: E402
from bayes_klrl.report import LearningCurvesConfig, add_config_arguments, config_from_args, run_learning_curves  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/report/learning_curves"), help="output folder (%(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(parser, LearningCurvesConfig)
    args = parser.parse_args(argv)
    config = config_from_args(LearningCurvesConfig, args)
    if not args.plot_only:
        run_learning_curves(config, args.out, progress=not args.no_progress)  # train and measure; writes the data files
    for path in plots.plot_learning_curves(args.out):  # drawn from the saved data files only
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
