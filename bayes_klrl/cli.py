"""The ``bayes-klrl`` command line (also ``python -m bayes_klrl``).

Subcommands: ``compare`` (run methods on a task and score them against the exact posterior), ``tasks``
(list the shipped tasks), ``bench`` (speed and sample-efficiency ratios measured side by side) and
``report`` (the analysis figures). Errors in user input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _methods(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare string
    return key.strip(), parsed


def build_parser(*, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The argument parser; with ``suppress_defaults`` the compare options the user did not give are absent from
    the parsed namespace (how a model file's ``COMPARE_DEFAULTS`` fill in only what the command line left open)."""
    from .compare import METHODS, TRAINED, CompareConfig
    from .infer.mcmc import KERNELS

    defaults = CompareConfig()
    parser = argparse.ArgumentParser(
        prog="bayes-klrl",
        description="KL-regularized RL as Bayesian inference: compare SVI, RL and exact posteriors on a task.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "compare",
        help="run methods on a task and score them against the posterior",
        description="Run inference methods on MODEL and write DIR/metrics.json, metrics.csv and learning curves.",
    )
    p.add_argument("model", metavar="MODEL", help="a shipped task's name (see 'bayes-klrl tasks') or a model file path")
    p.add_argument(
        "--methods",
        type=_methods,
        default=defaults.methods,
        help=f"comma-separated, from {','.join(METHODS)} (default: {','.join(defaults.methods)})",
    )
    p.add_argument("--beta", type=float, default=None, help="override the task's KL coefficient beta (> 0)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per trained method (%(default)s)")
    p.add_argument(
        "--num-sequences",
        type=int,
        default=defaults.num_sequences,
        help="sequences sampled per step, the same for every method (%(default)s)",
    )
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (%(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed, shared by all methods (%(default)s)")
    p.add_argument(
        "--policy", choices=("auto", "tabular", "copy"), default=defaults.policy, help="policy class (%(default)s)"
    )
    p.add_argument(
        "--estimator",
        choices=("loo", "trace", "tracegraph"),
        default=defaults.estimator,
        help="SVI estimator (%(default)s)",
    )
    p.add_argument(
        "--kl-estimator", choices=("k1", "k3"), default=defaults.kl_estimator, help="PPO KL estimator (%(default)s)"
    )
    p.add_argument("--kl-target", type=float, default=None, help="PPO adaptive-KL target in nats (default: fixed beta)")
    p.add_argument(
        "--eval-samples",
        type=int,
        default=defaults.eval_samples,
        help="Monte Carlo samples for the final figures of tasks too large to enumerate (%(default)s)",
    )
    p.add_argument(
        "--log-every", type=int, default=defaults.log_every, help="steps between logged points (%(default)s)"
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=0, help="steps between checkpoints (default: end and Ctrl-C)"
    )
    p.add_argument(
        "--mcmc-kernel",
        choices=("auto", *KERNELS),
        default=defaults.mcmc_kernel,
        help="MCMC kernel: single-site Gibbs, independence MH with the prior as proposal, or auto "
        "(Gibbs up to 256 tokens, unless --mcmc-proposal is a policy) (%(default)s)",
    )
    p.add_argument(
        "--mcmc-proposal",
        choices=("prior", *TRAINED),
        default=defaults.mcmc_proposal,
        help="independence-MH proposal: the prior or a policy trained earlier in --methods (%(default)s)",
    )
    p.add_argument("--chains", type=int, default=defaults.chains, help="MCMC chains, vectorized (%(default)s)")
    p.add_argument("--draws", type=int, default=defaults.draws, help="MCMC draws kept per chain (%(default)s)")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="MCMC warm-up steps per chain (%(default)s)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue trained methods from their checkpoints in DIR (a method without one starts afresh; "
        "the settings must match the checkpoint's, --steps may grow)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword passed to the model file's task(), e.g. --set length=4 (repeatable)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (%(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if suppress_defaults:
        for action in p._actions:
            if action.dest not in ("help", "model"):
                action.default = argparse.SUPPRESS

    sub.add_parser(
        "tasks", help="list the shipped tasks", description="List shipped tasks with V, T, beta, enumerability."
    )
    for name, help_text in MODULE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        _command_module(name).add_arguments(p)
    return parser


#: subcommands whose module (``bayes_klrl.<name>``) defines ``add_arguments(parser)`` and ``command(args)``
MODULE_COMMANDS = {
    "bench": "measure speed and sample-efficiency ratios side by side",
    "report": "run the analysis scripts and write every figure with its data",
}


def _command_module(name: str):
    return importlib.import_module(f".{name}", __package__)


def _compare(args, given: set[str]) -> int:
    import dataclasses

    from .compare import CompareConfig, format_table, run_compare
    from .modelfile import load_model
    from .task import RewardError

    # the model file is imported once; its COMPARE_DEFAULTS sit below the command line
    task, from_file, path = load_model(args.model, **dict(args.overrides))
    if args.beta is not None:
        task = task.replace(beta=args.beta)
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    config = CompareConfig(**{**from_file, **{k: v for k, v in vars(args).items() if k in fields and k in given}})
    used = [k for k in from_file if k not in given]
    if used:
        print("model file defaults: " + ", ".join(f"{k}={from_file[k]}" for k in used))
    enumerable = f"{task.num_sequences:,} sequences, enumerable" if task.is_enumerable() else "not enumerable"
    print(f"task {task.name}: V={task.vocab_size}, T={task.length}, beta={task.beta:g} ({enumerable})")
    try:
        comparison = run_compare(task, config, args.out, progress=not args.no_progress)
    except RewardError as exc:  # the reward passed the construction check but failed on a later batch
        raise ValueError(f"model file '{path}': {exc}") from exc
    exact = comparison.metrics["exact"]
    if exact is not None:
        print(
            f"exact: log Z = {exact['log_z']:.6f}, E[r] = {exact['expected_reward']:.4f}, H = {exact['entropy']:.4f} nats"
        )
    print(format_table(comparison.metrics))
    for note in _diagnostic_notes(comparison.metrics["methods"]):
        print(note)
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def _diagnostic_notes(rows: list[dict]) -> list[str]:
    """One line per row whose diagnostics say its figures should not be trusted yet."""
    from .diagnostics import RHAT_MAX

    notes = []
    for row in rows:
        rhat = row.get("rhat")
        if rhat is not None and rhat > RHAT_MAX:
            other = "imh" if row.get("kernel") == "gibbs" else "gibbs"
            notes.append(
                f"note: {row['method']} R-hat {rhat:.3f} > {RHAT_MAX}: the chains disagree, so its figures are not "
                f"reliable yet; run longer (--draws, --warmup) or try --mcmc-kernel {other}"
            )
        if row.get("khat_label") == "unreliable" and row["method"] != "is":
            notes.append(
                f"note: {row['method']} k-hat {row['khat']:.2f} with ESS {row['ess']:.3f}: the policy is not yet a "
                "reliable importance proposal for the posterior (train longer, or read its KL where it is exact)"
            )
    return notes


def _tasks(args) -> int:
    from .modelfile import ModelFileError, describe_model, shipped_tasks
    from .task import DEFAULT_MAX_ENUMERATION

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args, set(vars(build_parser(suppress_defaults=True).parse_args(argv))))
        if args.command == "tasks":
            return _tasks(args)
        return _command_module(args.command).command(args)
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
