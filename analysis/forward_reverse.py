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

from bayes_klrl.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("forward_reverse", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
