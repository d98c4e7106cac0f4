r"""The analysis report: every experiment of ``analysis/``, each saved with its data and drawn from it.

Runs the experiments (all, or ``--only a,b``) with their full settings or their quick presets into
``DIR/<experiment>/`` and writes the index ``DIR/report.json``: per experiment its figures, data files,
seconds, the command and the script that redo it alone, and whether it was quick.

- ``learning_curves``: SVI vs RL; ELBO = J/β at every logged step, KL against reward evaluations and wall time,
  gradient variance of the SVI estimators;
- ``beta_sweep``: the posterior from a large β to a tiny one; RL without the KL term collapses;
- ``forward_reverse``: reverse KL (SVI, RL) against forward KL (DPG) on a two-mode task;
- ``posterior``: exact vs importance sampling vs MCMC vs SVI vs RL on the top sequences;
- ``khat``: PSIS k̂ of the SVI and RL policies over training;
- ``mcmc``: ArviZ trace, rank and ESS plots of the MCMC kernels (``mcmc_diagnostics.py``);
- ``recipes``: RLOO, GRPO, GRPO with the ratio correction and Dr. GRPO trained to their fixed points over a β
  sweep, scored exactly against π* and placed against the Bayes frontier;
- ``trl_curves``: TRL's RLOOTrainer against this package's trainers on a GPT-2, drawn from the saved results of
  ``benchmarks/trl_side_by_side.py`` (trains nothing): KL(q‖π*) against sequences, and the learning-rate sweep.

Example (every figure in a few minutes on 2 CPU cores)::

    python analysis/report.py --quick --out runs/report

``--plot-only`` redraws the figures from the data already in ``DIR/<experiment>/``. The experiments are
independent: ``--workers 2`` runs them on a local process pool, ``--executor dask`` on a Dask cluster
(:mod:`bayes_klrl.sweep`); each writes only its own folder, and the report gathers them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType

from _common import has_saved_data

from bayes_klrl.compare import prepare_output
from bayes_klrl.config import parse_names
from bayes_klrl.storage import write_json
from bayes_klrl.sweep import add_executor_arguments, call_in_file, executor_from_args, make_executor

#: the experiment scripts (files of this folder), in the report's order; each has NAME, Config, run, plot, main
MODULES = (
    "learning_curves",
    "beta_sweep",
    "forward_reverse",
    "posterior",
    "khat",
    "mcmc_diagnostics",
    "recipes",
    "trl_curves",
    "smc_bounds",
)


def experiments() -> dict[str, ModuleType]:
    """The experiment modules by experiment name (``NAME``; ``mcmc`` for ``mcmc_diagnostics.py``)."""
    modules = [importlib.import_module(name) for name in MODULES]
    return {module.NAME: module for module in modules}


def description(module: ModuleType) -> str:
    """The first line of the experiment's docstring."""
    return (module.__doc__ or module.NAME).strip().splitlines()[0]


def run_experiment(module: ModuleType, config, out: str | Path, *, progress: bool = False, plot_only: bool = False):
    """Run ``module`` (an experiment script) with ``config`` into ``out``, then draw its figures from the saved
    data (``plot_only``: only draw).

    :returns: ``{"figures": [...], "data": [...], "seconds": ...}`` with paths relative to ``out``.
    """
    out = Path(out)
    if plot_only and not has_saved_data(out):
        raise ValueError(f"--plot-only but no saved data in {out}; run {module.NAME} without it first")
    t0 = time.perf_counter()
    if not plot_only:
        module.run(config, out, progress=progress)
    figures = module.plot(out)
    seconds = time.perf_counter() - t0
    data = sorted(p.name for p in out.iterdir() if p.suffix in (".csv", ".json", ".nc"))
    return {"figures": [p.name for p in figures], "data": data, "seconds": seconds}


def parser() -> argparse.ArgumentParser:
    names = ",".join(module.NAME for module in experiments().values())
    p = argparse.ArgumentParser(prog="report", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/report"), help="output folder (%(default)s)")
    p.add_argument("--quick", action="store_true", help="small settings: every figure in a few minutes on 2 CPU cores")
    p.add_argument(
        "--only",
        type=parse_names,
        default=None,
        help=f"comma-separated experiments to run, from {names} (default: all)",
    )
    p.add_argument(
        "--plot-only", action="store_true", help="only redraw the figures from the data already in DIR/<experiment>/"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = p.add_argument_group("executor", "the experiments are independent: run them side by side")
    add_executor_arguments(g)
    return p


def report(args: argparse.Namespace) -> int:
    """Run the selected experiments into ``DIR/<name>/`` and write ``DIR/report.json`` listing the figures."""
    known = experiments()
    only = tuple(known) if args.only is None else args.only
    unknown = [n for n in only if n not in known]
    if unknown or not only:
        raise ValueError(
            f"unknown experiment(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    prepare_output(args.out)  # an unusable folder is found before any experiment runs
    out = Path(args.out)
    index_path = out / "report.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    executor, workers = executor_from_args(args)
    progress = not args.no_progress and executor == "serial"
    with make_executor(executor, workers=workers, scheduler=args.scheduler) as pool:
        futures = {}
        for name in only:
            print(f"[{name}] {description(known[name])}" + ("" if executor == "serial" else " (submitted)"), flush=True)
            if executor == "serial":
                future = pool.submit(run_named, name, args.quick, out / name, plot_only=args.plot_only,
                                     progress=progress)  # fmt: skip
            else:  # a worker imports this file itself, then runs the experiment
                future = pool.submit(call_in_file, __file__, "run_named", name, args.quick, str(out / name),
                                     plot_only=args.plot_only, threads=args.threads or 1)  # fmt: skip
            futures[future] = name
            if executor == "serial":
                _record(index, index_path, out, known[name], future.result(), args)
        if executor != "serial":
            for future in concurrent.futures.as_completed(futures):
                name = futures[future]
                print(f"[{name}] done", flush=True)
                _record(index, index_path, out, known[name], future.result(), args)
    return 0


def run_named(name: str, quick: bool, out: str | Path, *, plot_only: bool = False, progress: bool = False) -> dict:
    """:func:`run_experiment` of the experiment called ``name`` with its full or quick settings (what every
    executor runs; a worker of a pool or cluster imports this file by path first)."""
    module = experiments()[name]
    config = module.Config.quick() if quick else module.Config()
    return run_experiment(module, config, out, progress=progress, plot_only=plot_only)


def _record(index: dict, index_path: Path, out: Path, module: ModuleType, entry: dict, args) -> None:
    """Add one experiment's entry to ``report.json`` (written atomically after each) and print its figures."""
    name = module.NAME
    if args.plot_only and name in index:  # keep the record of the run that made the data
        index[name]["figures"] = entry["figures"]
        entry = index[name]
    quick = " --quick" if args.quick else ""
    entry["command"] = f"bayes-klrl report{quick} --only {name} --out {out}"
    entry["script"] = f"python analysis/{Path(module.__file__).name}{quick} --out {out / name}"
    entry["quick"] = bool(args.quick)
    index[name] = entry
    write_json(index_path, index)
    for figure in entry["figures"]:
        print(f"  {out / name / figure}")
    print(f"  ({entry['seconds']:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    known = experiments()
    unknown = [n for n in args.only or () if n not in known]
    if unknown or args.only == ():
        print(
            f"report: error: unknown experiment(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    try:
        return report(args)
    except ValueError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
