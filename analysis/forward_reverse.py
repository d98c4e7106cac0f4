r"""Reverse KL (SVI, REINFORCE) against forward KL (DPG) on a task whose posterior has two modes.

Trains each method with a unigram policy (i.i.d. tokens, which cannot represent π*) and a tabular one (which
can), and follows both exact divergences KL(q‖π*) and KL(π*‖q); reports where the final policies put their
mass: near mode A, near mode B, or between.

Writes into --out: history.csv, regions.csv, summary.json, forward_reverse.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/forward_reverse.py --quick --out runs/report/forward_reverse

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from bayes_klrl import plots  # noqa: E402
from bayes_klrl.report import ForwardReverseConfig, add_config_arguments, config_from_args, run_forward_reverse  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/report/forward_reverse"), help="output folder (%(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="the quick preset (options given still override it)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figure from the data in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(parser, ForwardReverseConfig)
    args = parser.parse_args(argv)
    config = config_from_args(ForwardReverseConfig, args)
    if not args.plot_only:
        run_forward_reverse(config, args.out, progress=not args.no_progress)  # train and measure; writes the data files
    for path in plots.plot_forward_reverse(args.out):  # drawn from the saved data files only
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
