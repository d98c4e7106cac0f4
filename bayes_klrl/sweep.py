r"""Grids of independent comparisons (seeds × β) run through a ``concurrent.futures``-style executor.

A sweep is a list of :class:`SweepRun`\ s, each one ``compare`` run that loads its own task, trains with its own
seed and writes only its own folder. :func:`run_sweep` submits them to an executor and gathers their metrics in
the order of the grid:

- ``serial``: in this process, one after another (the default);
- ``process``: a local pool of ``workers`` processes (:class:`concurrent.futures.ProcessPoolExecutor`, spawned);
- ``dask``: a Dask ``distributed`` cluster, the scheduler at ``scheduler`` (``tcp://host:8786``) or, without an
  address, a :class:`distributed.LocalCluster` of ``workers`` single-threaded processes. Install with
  ``pip install 'bayes_klrl[cluster]'``.

Every run sets torch's thread count (``threads``, default 1) before it starts, whatever the executor, so a
sweep's metrics do not depend on where it ran: the same seeds give the same ``metrics.json`` serially, on the
pool and on the cluster (wall times aside). Nothing is scheduled or communicated by this module beyond
``submit`` and ``result``.

Example::

    >>> runs = grid("markov", CompareConfig(methods=("exact", "rl"), steps=50), seeds=(0, 1), betas=(0.5, 1.0),
    ...             out="runs/sweep")
    >>> rows = run_sweep(runs, executor="process", workers=2)
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import importlib.util
import multiprocessing
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .compare import CompareConfig, prepare_output, remove_if_empty, run_compare, save_comparison
from .modelfile import load_model
from .storage import write_csv, write_json

__all__ = [
    "EXECUTORS",
    "SweepRun",
    "add_executor_arguments",
    "call_in_file",
    "check_executor",
    "executor_from_args",
    "grid",
    "make_executor",
    "run_one",
    "run_sweep",
    "save_sweep",
]

EXECUTORS = ("serial", "process", "dask")
_CLUSTER_HINT = "pip install 'bayes_klrl[cluster]' (dask[distributed])"


@dataclass(frozen=True)
class SweepRun:
    """One comparison of a sweep: what a worker needs to run it (plain values only, so it pickles).

    :ivar model: a shipped task's name or a model file path (loaded by the worker).
    :ivar overrides: keyword arguments of the model file's ``task()``, as ``(key, value)`` pairs.
    :ivar beta: the β of this run (``None``: the task's own).
    :ivar config: the compare settings, ``seed`` included.
    :ivar out: this run's own output folder.
    :ivar threads: torch threads the run uses.
    """

    model: str
    overrides: tuple[tuple[str, object], ...]
    beta: float | None
    config: CompareConfig
    out: str
    threads: int = 1

    @property
    def name(self) -> str:
        return Path(self.out).name


def grid(
    model: str,
    config: CompareConfig,
    *,
    seeds: Sequence[int],
    betas: Sequence[float | None] = (None,),
    out: str | Path,
    overrides: dict | None = None,
    threads: int = 1,
) -> list[SweepRun]:
    """The runs of a seeds × β grid, each writing ``out/beta<β>_seed<s>/`` (``seed<s>`` when β is the task's).

    :raises ValueError: on an empty or repeated seed or β list.
    """
    seeds, betas = tuple(int(s) for s in seeds), tuple(betas) or (None,)
    for name, values in (("seeds", seeds), ("betas", betas)):
        if not values:
            raise ValueError(f"{name} is empty")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} has repeated values: {', '.join(map(str, values))}")
    if any(b is not None and not b > 0 for b in betas):
        raise ValueError(f"every beta must be > 0, got {', '.join(map(str, betas))}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    runs = []
    for beta in betas:
        for seed in seeds:
            folder = f"seed{seed}" if beta is None else f"beta{beta:g}_seed{seed}"
            runs.append(
                SweepRun(
                    model=str(model),
                    overrides=tuple(sorted((overrides or {}).items())),
                    beta=None if beta is None else float(beta),
                    config=dataclasses.replace(config, seed=seed),
                    out=str(Path(out) / folder),
                    threads=int(threads),
                )
            )
    return runs


def run_one(run: SweepRun) -> dict:
    """Run one comparison (in whatever process the executor chose) and write its folder; returns its
    ``metrics.json`` document."""
    if _INTERRUPTED.is_set():  # a worker that saw Ctrl-C starts no queued run
        raise KeyboardInterrupt
    torch.set_num_threads(run.threads)
    task, _, _ = load_model(run.model, **dict(run.overrides))
    if run.beta is not None:
        task = task.replace(beta=run.beta)
    out = prepare_output(run.out)
    try:
        comparison = run_compare(task, run.config, checkpoint_dir=out, progress=False)
    except KeyboardInterrupt:  # the run has saved its checkpoint
        if multiprocessing.parent_process() is not None:  # only a pool's worker process remembers it
            _INTERRUPTED.set()
        raise
    save_comparison(comparison, out)
    return {**comparison.metrics, "folder": run.name}


#: set in a pool's worker process once Ctrl-C reached it: the runs queued to it are not started
_INTERRUPTED = threading.Event()


class _InlineExecutor(cf.Executor):
    """Runs each submitted call at once, in this process (the ``serial`` executor)."""

    def submit(self, fn, /, *args, **kwargs):
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to .result(), as a pool would; Ctrl-C stops the loop that submits
            future.set_exception(exc)
        return future


@contextlib.contextmanager
def make_executor(kind: str = "serial", *, workers: int = 1, scheduler: str | None = None) -> Iterator[cf.Executor]:
    """A ``concurrent.futures.Executor`` of ``kind`` (see the module docstring), closed on exit.

    :raises ValueError: an unknown kind or a bad worker count; ``ImportError`` (one line) when ``dask`` is asked
        for and ``distributed`` is not installed.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if scheduler is not None and kind != "dask":
        raise ValueError("a scheduler address needs --executor dask")
    if kind == "serial":
        yield _InlineExecutor()
    elif kind == "process":
        # spawn, not fork: a forked child would inherit torch's thread pools and any open progress bars
        with cf.ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn")) as ex:
            yield ex
    else:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ImportError(f"--executor dask needs the distributed package: {_CLUSTER_HINT}") from exc
        if scheduler is not None:
            with Client(scheduler) as client:
                yield client.get_executor()
        else:
            with (
                LocalCluster(
                    n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                yield client.get_executor()


def check_executor(kind: str, *, workers: int, scheduler: str | None = None, runs: int | None = None) -> None:
    """Refuse, before anything is created or started, an executor that cannot run: an unknown kind, fewer than
    one worker or more workers than ``runs``, ``dask`` without the ``distributed`` package, or a scheduler
    address where nothing answers (a TCP connection is tried for 5 s; errors name the flags).

    :raises ValueError: one line.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or int(workers) < 1:
        raise ValueError(f"--workers must be >= 1, got {workers!r}")
    if runs is not None and kind != "serial" and int(workers) > runs:
        raise ValueError(f"--workers {workers} is more than the {runs} run(s) of this sweep; give at most {runs}")
    if scheduler is not None and kind != "dask":
        raise ValueError("--scheduler needs --executor dask")
    if kind == "dask":
        if importlib.util.find_spec("distributed") is None:
            raise ValueError(f"--executor dask needs the distributed package: {_CLUSTER_HINT}")
        if scheduler is not None:
            _check_scheduler(scheduler)


def _check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Try a TCP connection to a ``tcp://host:port`` (or ``host:port``) scheduler address."""
    import socket
    import urllib.parse

    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:  # a port that is not a number
        host, port = None, None
    if not host or not port:
        raise ValueError(f"--scheduler {address}: expected an address like tcp://host:8786")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"--scheduler {address}: no Dask scheduler answers there ({reason})") from None


def call_in_file(path: str, function: str, *args, threads: int = 1, **kwargs):
    """Import the Python file ``path`` (its folder first on ``sys.path``, as running it would) and call its
    ``function``: how a script's work (an experiment of ``analysis/``) is sent to an executor's worker, which
    cannot import a script by module name."""
    torch.set_num_threads(int(threads))
    folder = str(Path(path).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = f"_bayes_klrl_file_{Path(path).stem}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return getattr(module, function)(*args, **kwargs)


def add_executor_arguments(group) -> None:
    """The flags that choose an executor (``--executor``, ``--workers``, ``--scheduler``, ``--threads``), on an
    argparse parser or group; :func:`executor_from_args` reads them."""
    group.add_argument("--executor", choices=EXECUTORS, default=None,
                       help="where the runs go: this process (serial, default), a local pool of --workers "
                       "processes, or a Dask cluster (--scheduler, else a LocalCluster of --workers)")  # fmt: skip
    group.add_argument(
        "--workers", type=int, default=None, help="processes of the pool or the LocalCluster (default 2)"
    )
    group.add_argument("--scheduler", default=None, metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786")
    group.add_argument(
        "--threads", type=int, default=None, help="torch threads of each run on a pool or cluster (default 1)"
    )


def executor_from_args(args) -> tuple[str, int]:
    """``(kind, workers)`` from :func:`add_executor_arguments`' flags: ``--workers`` above 1 alone means the local
    pool; a pool or cluster has 2 workers unless told."""
    kind = args.executor or ("process" if args.workers and args.workers > 1 else "serial")
    workers = args.workers if args.workers is not None else (1 if kind == "serial" else 2)
    return kind, workers


def run_sweep(
    runs: Sequence[SweepRun],
    *,
    executor: str = "serial",
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
) -> list[dict]:
    """Submit every run to the executor and gather their ``metrics.json`` documents, in the order of ``runs``.

    The output folders are checked (created, writable) before anything is submitted. A run that fails stops the
    sweep with its error once the runs already submitted have finished; the folders of finished runs stay. On
    Ctrl-C the running runs save their checkpoints (``--resume`` continues the sweep) and no queued run starts.
    """
    for run in runs:
        prepare_output(run.out)
    try:
        return _gather(runs, executor=executor, workers=workers, scheduler=scheduler, progress=progress)
    except KeyboardInterrupt:
        for run in runs:
            remove_if_empty(Path(run.out))  # the folders of runs that never started
        raise


def _gather(runs, *, executor: str, workers: int, scheduler: str | None, progress: bool) -> list[dict]:
    results: list[dict | None] = [None] * len(runs)
    with make_executor(executor, workers=workers, scheduler=scheduler) as pool:
        futures = {pool.submit(run_one, run): i for i, run in enumerate(runs)}
        bar = tqdm(total=len(runs), desc="runs", disable=None if progress else True, leave=False)
        try:
            for future in cf.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        except KeyboardInterrupt:  # the running runs save their checkpoints; the queued ones never start
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()
    return results  # type: ignore[return-value]


def sweep_rows(results: Sequence[dict]) -> list[dict]:
    """One row per run and method: the run's folder, seed and β, then the method's metrics row."""
    rows = []
    for doc in results:
        for method in doc["methods"]:
            rows.append({"folder": doc["folder"], "seed": doc["seed"], "beta": doc["beta"], **method})
    return rows


def save_sweep(results: Sequence[dict], out: str | Path) -> Path:
    """Write ``out/sweep.json`` (every run's metrics) and ``out/sweep.csv`` (:func:`sweep_rows`); returns ``out``."""
    out = prepare_output(out)
    write_json(out / "sweep.json", {"runs": list(results)})
    write_csv(out / "sweep.csv", sweep_rows(results))
    return out
