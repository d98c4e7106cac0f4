r"""The posterior five ways: exact enumeration, importance sampling, MCMC, and the SVI and RL policies.

On the word task by default: the most probable sentences of π* with their probability under each method,
decoded to text, and each method's total variation to π* over all 16^5 sequences.

Writes into --out: top_sequences.csv, summary.json, posterior_bars.png.

Example (the quick settings take well under a minute on 2 CPU cores)::

    python analysis/posterior.py --quick --out runs/report/posterior

``--plot-only`` redraws the figure from the data already in ``--out``. The same experiment runs inside
``bayes-klrl report`` (see :mod:`bayes_klrl.report`).
"""

from bayes_klrl.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("posterior", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
