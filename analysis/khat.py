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

from bayes_klrl.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("khat", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
