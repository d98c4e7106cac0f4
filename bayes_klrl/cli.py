"""The ``bayes-klrl`` command line (also ``python -m bayes_klrl``).

Subcommands: ``compare`` (run methods on a task and score them against the exact posterior), ``tasks``
(list the shipped tasks), and, from a checkout of the repository, ``report`` (the analysis figures,
``analysis/report.py``) and ``bench`` (speed and sample-efficiency ratios, ``benchmarks/bench.py``).
The options of ``compare`` are the fields of :class:`~bayes_klrl.compare.CompareConfig`. Errors in user input
print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import re
import sys
import warnings
from pathlib import Path

from . import compare  # called as compare.<name>, so that tests can replace compare.run_compare
from .config import add_config_arguments, config_from_args, given_options
from .diagnostics import reading_notes
from .methods import METHODS, OPTIMIZER_OPTIONS, trained_methods
from .modelfile import ModelFileError, describe_model, load_model, shipped_tasks
from .sweep import add_executor_arguments, check_executor, executor_from_args, grid, run_sweep, save_sweep, sweep_rows
from .task import DEFAULT_MAX_ENUMERATION, RewardError, resolve_policy_kind
from .training import init_distributed_from_env

__all__ = ["main", "build_parser"]

#: subcommands that run a script of the repository checkout: name -> (path from the repository root, help)
SCRIPTS = {
    "report": ("analysis/report.py", "run the analysis experiments and write every figure with its data"),
    "bench": ("benchmarks/bench.py", "measure speed and sample-efficiency ratios side by side"),
}


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare string
    return key.strip(), parsed


def _numbers(kind):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag (argparse prints its whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. ``compare``'s options not given on the command line parse to ``None``, so a model
    file's ``COMPARE_DEFAULTS`` can fill them in below the command line."""
    parser = _Parser(
        prog="bayes-klrl",
        description="KL-regularized RL as Bayesian inference: compare SVI, RL and exact posteriors on a task.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "compare",
        help="run methods on a task and score them against the posterior",
        description="Run inference methods on MODEL and write DIR/metrics.json, metrics.csv, learning curves "
        "and ArviZ NetCDF files.",
    )
    p.add_argument("model", metavar="MODEL", help="a shipped task's name (see 'bayes-klrl tasks') or a model file path")
    p.add_argument("--beta", type=float, default=None, help="override the task's KL coefficient beta (> 0)")
    p.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword passed to the model file's task(), e.g. --set length=4 (repeatable)",
    )
    p.add_argument(
        "--out",
        default="runs/compare",
        help="output folder (default: runs/compare); one that holds an earlier run is refused unless --resume or "
        "--overwrite is given",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in --out: its results and checkpoints are deleted before this run starts",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_arguments(p.add_argument_group("comparison settings"), compare.CompareConfig, skip=("max_enumeration",))
    g = p.add_argument_group(
        "sweeps",
        "several seeds and/or betas: one comparison per (beta, seed) in DIR/beta<b>_seed<s>/, run through an "
        "executor, gathered in DIR/sweep.json and sweep.csv; the same seeds give the same metrics on any executor",
    )
    g.add_argument(
        "--seeds", type=_numbers(int), default=None, metavar="S,S,...", help="seeds of the sweep (e.g. 0,1,2)"
    )
    g.add_argument("--betas", type=_numbers(float), default=None, metavar="B,B,...", help="betas of the sweep")
    add_executor_arguments(g)

    sub.add_parser(
        "tasks", help="list the shipped tasks", description="List shipped tasks with V, T, beta, enumerability."
    )
    for name, (script, help_text) in SCRIPTS.items():
        s = sub.add_parser(
            name,
            help=help_text + f" (runs {script}; needs the repository checkout)",
            description=f"Runs {script} of the repository checkout; its options follow.",
            add_help=False,
        )
        s.add_argument("args", nargs=argparse.REMAINDER, help=f"options of {script} (see --help)")
    return parser


def _script_main(name: str):
    """``main`` of the checkout's script for subcommand ``name``; a ValueError when there is no checkout."""
    relative = SCRIPTS[name][0]
    path = Path(__file__).resolve().parents[1] / relative
    if not path.is_file():
        raise ValueError(
            f"'bayes-klrl {name}' runs {relative} from the repository checkout, which this installation does not "
            "have; clone the repository and install it with pip install -e '.[figures]'"
        )
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python analysis/report.py` would: the script imports its neighbours
    spec = importlib.util.spec_from_file_location(f"_bayes_klrl_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.main


def _compare(args) -> int:
    rank, world_size = init_distributed_from_env()  # under torchrun: data-parallel training, rank 0 reports
    say = print if rank == 0 else (lambda *a, **k: None)
    # the model file is imported once; its COMPARE_DEFAULTS sit below the command line
    task, from_file, path = load_model(args.model, **dict(args.overrides))
    from_file = compare.check_compare_defaults(from_file, path)
    if args.beta is not None:
        if "beta" in dict(args.overrides):
            raise ValueError("--beta and --set beta=... both given; use one")
        task = task.replace(beta=args.beta)
    config = config_from_args(compare.CompareConfig, args, base=from_file)
    given = given_options(compare.CompareConfig, args)
    used = [k for k in from_file if k not in given]
    if used:
        say("model file defaults: " + ", ".join(f"{k}={from_file[k]}" for k in used))
    for note in unused_option_notes(config, given):
        say(note)
    sweeping = args.seeds is not None or args.betas is not None or args.executor not in (None, "serial")
    if sweeping and world_size > 1:
        raise ValueError("a sweep (--seeds, --betas, --executor) cannot run under torchrun; launch one or the other")
    if not sweeping:
        for flag in ("workers", "scheduler", "threads"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} applies to sweeps (--seeds, --betas or --executor)")
    plan = _plan_sweep(args, config, given) if sweeping else None  # every refusal before the folder is touched
    # an unusable folder, or one holding an earlier run, is found before any training
    out, created = compare.claim_output(args.out, resume=config.resume, overwrite=args.overwrite, clear=rank == 0)
    try:
        if plan is not None:
            return _sweep(args, out, *plan)
        return _run(args, config, task, path, out, rank, world_size, say)
    except BaseException:
        compare.remove_if_empty(created)  # a refused or interrupted run leaves no empty folder behind
        raise


def _run(args, config, task, path, out, rank, world_size, say) -> int:
    enumerable = f"{task.num_sequences:,} sequences, enumerable" if task.is_enumerable() else "not enumerable"
    say(f"task {task.name}: V={task.vocab_size}, T={task.length}, beta={task.beta:g} ({enumerable})")
    if any(m in trained_methods() for m in config.methods):
        chosen = resolve_policy_kind(task, config.policy)
        say(f"policy: {chosen}" + (f" ({config.policy})" if config.policy != chosen else ""))
    if world_size > 1:
        say(f"data parallel: {world_size} ranks, {config.num_sequences // world_size} sequences each per step")
    try:
        comparison = compare.run_compare(task, config, checkpoint_dir=out, progress=not args.no_progress and rank == 0)
    except RewardError as exc:  # the reward passed the construction check but failed on a later batch
        raise ValueError(f"model file '{path}': {exc}") from exc
    if rank != 0:  # the other ranks trained alongside; rank 0 writes and prints
        return 0
    compare.save_comparison(comparison, out)
    p = comparison.posterior
    if p is not None:
        print(f"exact: log Z = {p.log_z:.6f}, E[r] = {p.expected_reward:.4f}, H = {p.entropy:.4f} nats")
    rows = [row.to_dict() for row in comparison.rows]
    print(compare.format_table(rows))
    bounds = compare.bounds_table(rows)
    if bounds is not None:
        print("log Z bounds (smc) and KL brackets, Monte Carlo; exact figures beside them where enumerable:")
        print(bounds)
    for note in reading_notes(rows):
        print(note)
    for row in rows:
        if row.get("importance_failed"):
            print(f"note: {row['method']}'s importance-sampling columns are empty: {row['importance_failed']}")
    print(f"wrote {out / 'metrics.json'}")
    return 0


def _plan_sweep(args, config, given: dict) -> tuple:
    """The sweep's runs, executor and workers, every flag checked (nothing is created or started)."""
    if args.seeds is not None and "seed" in given:
        raise ValueError("--seed and --seeds both given; use --seeds")
    if args.betas is not None and args.beta is not None:
        raise ValueError("--beta and --betas both given; use --betas")
    if args.betas is not None and any(not b > 0 for b in args.betas):
        raise ValueError(f"--betas: every beta must be > 0, got {','.join(f'{b:g}' for b in args.betas)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    executor, workers = executor_from_args(args)
    runs = grid(
        args.model,
        config,
        seeds=args.seeds or (config.seed,),
        betas=args.betas or (args.beta,),
        out=args.out,
        overrides=dict(args.overrides),
        threads=1 if args.threads is None else args.threads,
    )
    check_executor(executor, workers=workers, scheduler=args.scheduler, runs=len(runs))
    return runs, executor, workers


def _sweep(args, out: Path, runs, executor: str, workers: int) -> int:
    where = {"serial": "in this process", "process": f"on {workers} local processes"}.get(
        executor, f"on Dask ({args.scheduler or f'a LocalCluster of {workers} workers'})"
    )
    print(f"sweep: {len(runs)} runs ({', '.join(r.name for r in runs)}) {where}")
    results = run_sweep(runs, executor=executor, workers=workers, scheduler=args.scheduler,
                        progress=not args.no_progress)  # fmt: skip
    save_sweep(results, out)
    columns = ["folder", "method", "kl_q_to_posterior", "elbo", "expected_reward", "wall_seconds"]
    print(compare.format_table(sweep_rows(results), columns))
    print(f"wrote {out / 'sweep.json'} and one folder per run")
    return 0


def unused_option_notes(config, given: dict) -> list[str]:
    """One line per option given on the command line that a chosen method does not read: none of them (the
    option is ignored), or some trained methods but not others (those ignore it: ``--kl-estimator k3`` with
    ``svi``). The optimizer settings and ``--policy`` are read by every trained method."""
    trained = trained_methods()
    readers: dict[str, list[str]] = {}
    for name, method in METHODS.items():
        for option in method.options:
            readers.setdefault(option, []).append(name)
    for option in ("lr", "policy", *OPTIMIZER_OPTIONS):
        readers.setdefault(option, list(trained))
    notes = []
    for option in given:
        if option not in readers:
            continue
        flag = "--" + option.replace("_", "-")
        ignoring = [m for m in config.methods if m in trained and m not in readers[option]]
        if not set(readers[option]) & set(config.methods):
            shown = "every trained method" if set(readers[option]) == set(trained) else ", ".join(readers[option])
            notes.append(f"note: {flag} applies to {shown}, none of which is in --methods; ignored")
        elif ignoring and set(readers[option]) <= set(trained):  # a sampler's option (--particles): no note
            notes.append(f"note: {flag} is not an option of {', '.join(ignoring)}, which ignore(s) it")
    return notes


def _tasks(args) -> int:
    tasks = shipped_tasks()
    if not tasks:
        print("no shipped tasks found (set BAYES_KLRL_MODELS to the models/ folder)")
        return 1
    print(f"{'task':<22} {'V':>7} {'T':>3} {'beta':>7}  enumerable  file")
    for name, path in tasks.items():
        try:
            info = describe_model(path)
        except ModelFileError as exc:
            print(f"{name:<22} {'?':>7} {'?':>3} {'?':>7}  {'?':<10}  {path}  ({exc})")
            continue
        v, t = info["vocab_size"], info["length"]
        print(f"{name:<22} {v:>7} {t:>3} {info['beta']:>7g}  {str(v**t <= DEFAULT_MAX_ENUMERATION):<10}  {path}")
    return 0


#: options whose value is a comma-separated list that may start with a minus sign
_LIST_OPTIONS = ("--betas", "--seeds")


def _join_negative_lists(argv: list[str]) -> list[str]:
    """``--betas -0.5,0.7`` as ``--betas=-0.5,0.7``: argparse reads a value starting with ``-`` that is not one
    plain number as an option ("expected one argument"); joined, the value reaches the check that names it."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if token in _LIST_OPTIONS and len(following) > 1 and following[0] == "-" and following[1] in "0123456789.":
            out.append(f"{token}={following}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def as_flags(message: str) -> str:
    """A library error about :class:`~bayes_klrl.compare.CompareConfig` fields, reworded with the flags the user
    typed: ``kl_in='reward'`` → ``--kl-in reward``, ``replay=None`` → ``--replay none``, ``group_size`` →
    ``--group-size``; a one-word field is a flag where it opens the message (``epochs and ...``)."""
    names = {f.name for f in dataclasses.fields(compare.CompareConfig)}

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def assignment(match: re.Match) -> str:
        name, value = match.group(1), match.group(2).strip("'\"")
        return f"{flag(name)} {'none' if value == 'None' else value}" if name in names else match.group(0)

    message = re.sub(r"(?<![\w-])([a-z_]+)=('[^']*'|\"[^\"]*\"|[^\s,;)]+)", assignment, message)
    message = re.sub(r"(?<![\w-])([a-z]+_[a-z_]+)\b(?!=)", lambda m: flag(m[1]) if m[1] in names else m[0], message)
    return re.sub(r"^((?:\w+: )?)([a-z]+)\b(?= )", lambda m: m[1] + (flag(m[2]) if m[2] in names else m[2]), message)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():  # the filters and the one-line format last as long as the command
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")  # its refactor notice
        warnings.showwarning = _show_warning
        return _main(argv)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, ``bayes-klrl: warning: ...`` (Python's own format starts with a file path and
    repeats the source line), for the package's warnings; others keep Python's format."""
    stream = sys.stderr if file is None else file
    if getattr(category, "__module__", "").startswith("bayes_klrl"):
        stream.write(f"bayes-klrl: warning: {message}\n")
    else:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))


def _main(argv: list[str]) -> int:
    try:
        if argv and argv[0] in SCRIPTS:  # the script parses its own options (and prints its own --help)
            return _script_main(argv[0])(argv[1:])
        args = build_parser().parse_args(_join_negative_lists(argv))
        if args.command == "compare":
            try:
                return _compare(args)
            except ValueError as exc:
                raise ValueError(as_flags(str(exc))) from exc
        return _tasks(args)
    except (ValueError, FileNotFoundError) as exc:  # user input: one line, no traceback
        print(f"bayes-klrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "bayes-klrl: interrupted; checkpoints (if any) are in the output folder, rerun with --resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
