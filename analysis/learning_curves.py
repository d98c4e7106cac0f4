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

from bayes_klrl.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("learning_curves", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
