r"""Run several inference methods on one task and score them side by side (the ``compare`` command).

:func:`run_compare` runs each method of :data:`~bayes_klrl.methods.METHODS` named in
:class:`CompareConfig` and returns a :class:`Comparison`; :func:`save_comparison` writes it:

- ``metrics.json``: the task, β, the exact figures (``null`` when the task is too large to enumerate), the
  meaning of every column, and one :class:`~bayes_klrl.methods.Row` per method; ``metrics.csv``: the rows;
- ``history_<method>.csv``: a trained method's learning curve (exact KL(q‖π*) every ``log_every`` steps);
- ``<method>.nc``: the method's draws as ArviZ InferenceData (importance draws for ``is`` and the trained
  policies, chains for ``mcmc``).

Trained methods also keep ``<method>/checkpoint.pt`` in the output folder while they train (``--resume``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import check_choices, option, with_fields
from .diagnostics import save_netcdf
from .exact import ExactPosterior, exact_posterior
from .methods import METHODS, OPTIMIZER_OPTIONS, MethodResult, Row, RunContext, bracket_rows, trained_methods
from .methods.options import CHOICES
from .modelfile import ModelFileError
from .rl.recipes import recipe_flags
from .storage import write_csv, write_json
from .task import DEFAULT_MAX_ENUMERATION, Task
from .training import OptimizerSettings

__all__ = [
    "CompareConfig",
    "Comparison",
    "bounds_table",
    "claim_output",
    "earlier_run_files",
    "check_compare_defaults",
    "format_table",
    "prepare_output",
    "run_compare",
    "save_comparison",
]


def _method_names() -> tuple[str, ...]:
    return tuple(METHODS)  # a function: the registry may grow after this module is imported


@dataclass(frozen=True)
@with_fields(recipe_flags, after="kl_target")  # the recipe options: generated from rl.recipes.Recipe's fields
class CompareConfig:
    """Settings of a comparison; each field's help is the ``compare`` command line's help."""

    methods: tuple[str, ...] = option(("exact", "svi", "rl", "grpo"), "methods to run, in order", choices=_method_names)
    steps: int = option(1500, "optimizer steps of each trained method")
    num_sequences: int = option(1024, "sequences (and reward evaluations) per step, the same for every method")
    lr: float = option(0.02, "(peak) learning rate of every trained method")
    optimizer: str = option("adam", "optimizer of every trained method (adamw: decoupled weight decay)",
                            choices=CHOICES["optimizer"])  # fmt: skip
    weight_decay: float = option(0.0, "weight decay (adam: added to the gradient; adamw: decoupled)")
    lr_schedule: str = option("constant", "learning-rate schedule after the warm-up (linear, cosine: decay to 0)",
                              choices=CHOICES["lr_schedule"])  # fmt: skip
    warmup_steps: int = option(0, "optimizer steps of linear learning-rate warm-up from 0")
    max_grad_norm: float | None = option(None, "clip the gradient's global L2 norm to this (none: no clipping)")
    seed: int = option(0, "seeds every method's run alike")
    policy: str = option("auto", "the policy: tabular (a logit table per prefix), full (a trainable copy of the prior), "
                         "lora (Hugging Face priors), auto (lora for Hugging Face priors, else tabular when it fits, "
                         "else full); copy = full", choices=CHOICES["policy"])  # fmt: skip
    estimator: str = option("loo", "SVI gradient estimator", choices=CHOICES["estimator"])
    sites: str | None = option(None, "SVI's sample sites: one sequence-level site scored in one pass, or one per "
                               "token (none: the estimator's own)", choices=CHOICES["sites"])  # fmt: skip
    kl_target: float | None = option(None, "PPO adaptive-KL target in nats (none: beta stays fixed)")
    log_every: int = option(50, "steps between logged points of the learning curves")
    eval_samples: int = option(1024, "Monte Carlo samples scoring each policy (importance sampling, k-hat)")
    max_enumeration: int = option(DEFAULT_MAX_ENUMERATION, "largest V^T enumerated exactly")
    checkpoint_every: int = option(0, "steps between checkpoints (0: only at the end and on Ctrl-C)")
    resume: bool = option(False, "continue trained methods from their checkpoints in the output folder")
    mcmc_kernel: str = option("auto", "MCMC kernel (auto: Gibbs up to 256 tokens with the prior, else imh)",
                              choices=CHOICES["mcmc_kernel"])  # fmt: skip
    mcmc_proposal: str = option("prior", "independence-MH proposal: the prior or a policy trained earlier in the run",
                                choices=lambda: ("prior", *trained_methods()))  # fmt: skip
    chains: int = option(8, "MCMC chains, run as one batch")
    draws: int = option(1000, "MCMC draws kept per chain")
    warmup: int = option(200, "MCMC warm-up steps per chain, discarded")
    particles: int = option(256, "smc: particles per SMC run")
    smc_runs: int = option(16, "smc: independent SMC runs, and as many conditional runs on exact posterior draws")
    twist: str = option("learned", "smc: the twist (look-ahead) of the intermediate targets: none (bootstrap), exact "
                        "(the soft value, enumerable tasks), learned (contrastive twist learning), policy (log q - "
                        "log pi0 of --twist-policy: importance sampling with it)", choices=CHOICES["twist"])  # fmt: skip
    resample_threshold: float = option(0.5, "smc: resample a run when its normalized ESS falls below this (0: never)")
    twist_steps: int = option(200, "smc --twist learned: contrastive twist-learning steps of --num-sequences particles")
    twist_lr: float = option(0.05, "smc --twist learned: Adam learning rate of the twist")
    twist_policy: str = option("rl", "smc --twist policy: the trained method whose policy is the twist",
                               choices=lambda: trained_methods())  # fmt: skip
    max_rejection_draws: int = option(
        1_000_000, "smc: most prior draws rejection sampling may make for exact posterior draws (tasks with reward_max)"
    )

    def __post_init__(self):
        methods = self.methods
        if isinstance(methods, str):  # "exact,rl" as the command line spells it, not the letters e, x, a ...
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        object.__setattr__(self, "methods", tuple(methods))
        if not self.methods:
            raise ValueError("no methods given")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        repeated = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if repeated:
            raise ValueError(f"method(s) {', '.join(repeated)} given more than once in methods")
        if self.steps < 0 or self.num_sequences < 2 or self.eval_samples < 2:
            raise ValueError("steps must be >= 0, num_sequences and eval_samples >= 2")
        optimizer = OptimizerSettings(  # checks lr, weight decay, warm-up and clipping in one place
            lr=self.lr, **{name: getattr(self, name) for name in OPTIMIZER_OPTIONS}
        )
        if self.steps:
            optimizer.horizon(self.steps)  # a decay with no steps left after the warm-up
        if self.steps and self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} runs past the end of the run (steps={self.steps})")
        if self.steps and self.replay is not None and self.replay > self.steps:
            raise ValueError(
                f"replay={self.replay} keeps more batches than the run draws (steps={self.steps}); give at most "
                f"{self.steps}"
            )
        if self.minibatches is not None and self.minibatches >= 1 and self.num_sequences % self.minibatches:
            raise ValueError(
                f"num_sequences={self.num_sequences} does not split into minibatches={self.minibatches} equal "
                "minibatches; give a divisor"
            )
        if self.log_every < 1 or self.checkpoint_every < 0:
            raise ValueError("log_every must be >= 1 and checkpoint_every >= 0")
        if self.kl_target is not None and not (math.isfinite(self.kl_target) and self.kl_target > 0):
            raise ValueError(f"kl_target must be a finite number > 0 (nats), got {self.kl_target}")
        check_choices(self)  # every field declared with choices (the methods were checked above, by name)
        if self.chains < 1 or self.draws < 4 or self.warmup < 0:
            raise ValueError("chains must be >= 1, draws >= 4 and warmup >= 0")
        for flag, value, low in (("--particles", self.particles, 1), ("--smc-runs", self.smc_runs, 1),
                                 ("--twist-steps", self.twist_steps, 0), ("--max-rejection-draws", self.max_rejection_draws, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
        if not (0.0 <= self.resample_threshold <= 1.0):
            raise ValueError(f"--resample-threshold must be in [0, 1], got {self.resample_threshold}")
        if not (math.isfinite(self.twist_lr) and self.twist_lr > 0):
            raise ValueError(f"--twist-lr must be a finite number > 0, got {self.twist_lr}")
        for method in self.methods:
            try:
                METHODS[method].check(self)
            except ValueError as exc:  # say which method refuses (--replay with the default methods: grpo)
                raise ValueError(f"{method}: {exc}") from None


def check_compare_defaults(defaults: dict, path: str | os.PathLike) -> dict:
    """A model file's ``COMPARE_DEFAULTS`` (from :func:`bayes_klrl.modelfile.load_model`), checked: every name is a
    :class:`CompareConfig` field, else a one-line :class:`~bayes_klrl.modelfile.ModelFileError` naming the file."""
    known = {f.name for f in dataclasses.fields(CompareConfig)}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ModelFileError(
            f"model file '{path}': COMPARE_DEFAULTS has unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return dict(defaults)


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`run_compare`, nothing written yet.

    :ivar task: the task.
    :ivar config: the settings.
    :ivar results: one :class:`~bayes_klrl.methods.MethodResult` per method, in run order.
    :ivar posterior: the exact posterior, or ``None`` when the task is too large to enumerate.
    """

    task: Task
    config: CompareConfig
    results: dict[str, MethodResult] = field(default_factory=dict)
    posterior: ExactPosterior | None = None

    @property
    def rows(self) -> list[Row]:
        return [r.row for r in self.results.values()]

    @property
    def fits(self) -> dict:
        """The training records of the trained methods (policy and learning curve)."""
        return {name: r.fit for name, r in self.results.items() if r.fit is not None}

    @property
    def metrics(self) -> dict:
        """The ``metrics.json`` document."""
        p, config = self.posterior, self.config
        return {
            "task": self.task.name,
            "beta": self.task.beta,
            "vocab_size": self.task.vocab_size,
            "length": self.task.length,
            "seed": config.seed,
            "steps": config.steps,
            "num_sequences": config.num_sequences,
            "exact": (
                {"log_z": p.log_z, "expected_reward": p.expected_reward, "entropy": p.entropy}
                if p is not None
                else None
            ),
            "methods": [row.to_dict() for row in self.rows],
            "columns": Row.columns(),
        }


def prepare_output(out: str | Path, flag: str = "--out") -> Path:
    """Create the output folder and check it is writable, before any long work (a ValueError names the problem)."""
    if str(out).strip() == "":
        raise ValueError(f"{flag} is empty; give an output folder")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {out} cannot be written ({exc.strerror or exc})") from exc
    if not os.access(out, os.W_OK):
        raise ValueError(f"{flag} {out} is not writable")
    return out


def _run_files_in(folder: Path) -> list[Path]:
    """The files a comparison or a sweep writes in ``folder`` (by name: nothing else is ever counted or removed)."""
    names = ["metrics.json", "metrics.csv", "sweep.json", "sweep.csv"]
    for method in METHODS:
        names += [f"history_{method}.csv", f"{method}.nc"]
    found = [folder / n for n in names if (folder / n).is_file()]
    return found + sorted(p for p in folder.glob("*/checkpoint.pt") if p.is_file())  # a method's (or smc_twist's)


def earlier_run_files(out: str | Path) -> list[Path]:
    """The results and checkpoints of earlier comparisons or sweeps in ``out`` and in its sweep runs' folders
    (``seed<s>``, ``beta<b>_seed<s>``), sorted; empty when ``out`` does not exist."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = _run_files_in(out)
    for sub in sorted(out.iterdir()):
        if sub.is_dir() and re.fullmatch(r"(beta[^/]+_)?seed-?\d+", sub.name):
            found += _run_files_in(sub)
    return sorted(found)


def _created_by(out: Path) -> Path | None:
    """The outermost folder of ``out``'s path that does not exist yet (what creating ``out`` would create)."""
    created = None
    for folder in [out, *out.parents]:
        if folder.exists():
            break
        created = folder
    return created


def remove_if_empty(folder: Path | None) -> None:
    """Remove ``folder`` and its subfolders if no file lies anywhere below it (a refused run leaves nothing)."""
    if folder is None or not folder.is_dir():
        return
    if any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    folder.rmdir()


def claim_output(
    out: str | Path, *, resume: bool = False, overwrite: bool = False, clear: bool = True, flag: str = "--out"
) -> tuple[Path, Path | None]:
    """Check an output folder before any work and make it ready: a folder holding an earlier run's results or
    checkpoints (:func:`earlier_run_files`) is refused unless ``resume`` (continue it) or ``overwrite`` (its
    earlier files are deleted first, so nothing stale is left); ``resume`` with no checkpoint in it is refused
    too. Files that are not a run's are never touched.

    :param clear: delete the earlier files on ``overwrite`` (``False`` on the data-parallel ranks other than 0,
        which only check).
    :returns: ``(out, created)``: the folder, and the outermost folder this call created (``None`` if it
        existed), which :func:`remove_if_empty` takes away again when the run is refused later.
    :raises ValueError: one line, naming ``flag``, ``--resume`` or ``--overwrite`` as the user typed them.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite both given: continue the earlier run or replace it, not both")
    if str(out).strip() == "":
        raise ValueError(f"{flag} is empty; give an output folder")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder")
    found = earlier_run_files(out)
    if resume and not any(p.name == "checkpoint.pt" for p in found):
        raise ValueError(f"--resume: {flag} {out} holds no checkpoint to resume from; run without --resume")
    if found and not (resume or overwrite):
        shown = ", ".join(str(p.relative_to(out)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise ValueError(
            f"{flag} {out} already holds a run ({shown}); add --resume to continue it, --overwrite to replace it, "
            "or choose another folder"
        )
    created = _created_by(out)
    out = prepare_output(out, flag)
    if overwrite and clear:
        for path in found:
            path.unlink(missing_ok=True)
        for folder in sorted({p.parent for p in found} - {out}, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a method's or a sweep run's folder emptied by the deletion
    return out, created


def run_compare(
    task: Task, config: CompareConfig, *, checkpoint_dir: str | Path | None = None, progress: bool = False
) -> Comparison:
    """Run ``config.methods`` on ``task`` in order; trained methods checkpoint into ``checkpoint_dir/<method>``.

    Example::

        >>> comparison = run_compare(load_task("markov"), CompareConfig(methods=("exact", "svi"), steps=200))
        >>> [row.method for row in comparison.rows]
        ['exact', 'svi']
    """
    if config.resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder holding the checkpoints to resume from")
    enumerable = task.is_enumerable(config.max_enumeration)
    if "exact" in config.methods and not enumerable:
        raise ValueError(
            f"method 'exact' needs V^T <= {config.max_enumeration:,} but task '{task.name}' has {task.num_sequences:,} "
            "sequences; drop 'exact' from --methods"
        )
    posterior, exact_seconds = None, None
    if enumerable:
        t0 = time.perf_counter()
        posterior = exact_posterior(task, max_sequences=config.max_enumeration)
        exact_seconds = time.perf_counter() - t0
    for name in config.methods:  # refusals that need the task, before any method runs
        try:
            METHODS[name].check_task(task, config, enumerable)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    results: dict[str, MethodResult] = {}
    for name in config.methods:
        context = RunContext(
            task=task,
            config=config,
            posterior=posterior,
            exact_seconds=exact_seconds,
            fits={n: r.fit for n, r in results.items() if r.fit is not None},
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
            progress=progress,
        )
        results[name] = METHODS[name].run(context)
    results = bracket_rows(task, results)  # with smc in the run: every trained policy's KL bracket
    return Comparison(task=task, config=config, results=results, posterior=posterior)


def save_comparison(comparison: Comparison, out: str | Path) -> Path:
    """Write ``metrics.json``, ``metrics.csv``, ``history_<method>.csv`` and ``<method>.nc`` into ``out``
    (each atomically), and list them in ``metrics.json`` (``files``). Files that an earlier comparison in the same
    folder listed and this one does not rewrite are removed, so the folder never mixes two runs' results (nothing
    else in the folder is touched; checkpoints stay for ``--resume``). Returns ``out``."""
    out = prepare_output(out)
    written = []
    for name, result in comparison.results.items():
        if result.fit is not None:
            written.append(write_csv(out / f"history_{name}.csv", result.fit.history).name)
        if result.inference_data is not None:
            written.append(save_netcdf(result.inference_data, out / f"{name}.nc").name)
    written += ["metrics.json", "metrics.csv"]
    stale = [f for f in _files_of_earlier_run(out) if f not in written and (out / f).is_file()]
    write_json(out / "metrics.json", {**comparison.metrics, "files": written})
    write_csv(out / "metrics.csv", [row.to_dict() for row in comparison.rows])
    for name in stale:  # results of an earlier comparison in this folder that this one does not replace
        (out / name).unlink()
    return out


def _files_of_earlier_run(out: Path) -> list[str]:
    """The files an earlier :func:`save_comparison` listed in ``out/metrics.json`` (only those are ever removed)."""
    try:
        files = json.loads((out / "metrics.json").read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and "/" not in f and "\\" not in f]


#: the columns of the bounds table ``compare`` prints when ``smc`` ran
BOUNDS_COLUMNS = (
    "method",
    "log_z_lower",
    "log_z",
    "log_z_upper",
    "kl_q_to_posterior_lower",
    "kl_q_to_posterior",
    "kl_q_to_posterior_upper",
    "kl_posterior_to_q_lower",
    "kl_posterior_to_q",
    "kl_posterior_to_q_upper",
)


def bounds_table(rows: Sequence[Row | dict]) -> str | None:
    """The bounds on log Z and the KL brackets beside the exact figures (when the task is enumerable), as a text
    table of the rows that have them; ``None`` when no ``smc`` ran."""
    rows = [r.to_dict() if isinstance(r, Row) else r for r in rows]
    keep = [r for r in rows if r.get("log_z_lower") is not None or r.get("kl_q_to_posterior_lower") is not None]
    if not keep:
        return None
    exact = [r for r in rows if r["method"] == "exact"]
    return format_table(exact + keep, BOUNDS_COLUMNS)


def format_table(rows: Sequence[Row | dict], columns: Sequence[str] | None = None) -> str:
    """The rows as a fixed-width text table: the shared columns, then the diagnostics any row has."""
    rows = [r.to_dict() if isinstance(r, Row) else r for r in rows]
    if columns is None:
        diagnostics = ("khat", "khat_label", "max_weight_ratio", "ess", "rhat", "ess_bulk", "infeasible_mass",
                       "kl_feasible_to_posterior")  # fmt: skip
        shared = [c for c in Row.SHARED if c != "scored"]
        columns = shared + [c for c in diagnostics if any(row.get(c) is not None for row in rows)]

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    lines = [header, "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
