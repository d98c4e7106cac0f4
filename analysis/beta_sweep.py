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

from bayes_klrl.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main("beta_sweep", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
