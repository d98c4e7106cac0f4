"""``analysis/trl_curves.py`` on the shipped results of ``benchmarks/trl_side_by_side.py``: it draws without
training or TRL, its CSV says what the benchmark's own summary says, and a missing folder is one line."""

from __future__ import annotations

import csv
import importlib
import json
import statistics
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
#: |median final KL from curves.csv − the benchmark summary's kl_after_sequences| (both read the same floats)
TOLERANCE = 1e-12
SETTINGS = {"TRL RLOO", "bayes_klrl rl", "bayes_klrl rl, replay 32"}


def trl_curves():
    return importlib.import_module("trl_curves")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trl_curves")
    assert trl_curves().main(["--no-progress", "--out", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _benchmark_summary() -> list[dict]:
    rows = []
    for path in [RESULTS / "trl_rloo.json", *sorted(RESULTS.glob("ours_*.json"))]:
        rows += json.loads(path.read_text(encoding="utf-8"))["summary"]
    return rows


def test_default_results_folder_is_the_repository_s():
    assert Path(trl_curves().Config().results) == RESULTS


def test_draws_the_png_and_csv_from_the_shipped_results(drawn):
    png = (drawn / "trl_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 8_000
    rows = _rows(drawn / "curves.csv")
    assert SETTINGS <= {r["setting"] for r in rows}
    keys = [(r["setting"], r["lr"], r["seed"], r["sequences"]) for r in rows]
    assert len(keys) == len(set(keys)), "one row per (setting, lr, seed, sequences)"
    assert {"kl_q_to_posterior", "wall_seconds"} <= set(rows[0])


def test_best_lr_median_final_kl_is_the_benchmark_summary_s(drawn):
    """Per setting: the median over seeds of the last KL of each run (from curves.csv), at the lr where it is
    smallest, is the ``kl_after_sequences`` of that setting and lr in the results JSON's summary."""
    finals: dict[tuple, dict[int, tuple[int, float]]] = {}
    for r in _rows(drawn / "curves.csv"):
        seeds = finals.setdefault((r["setting"], float(r["lr"])), {})
        point = (int(r["sequences"]), float(r["kl_q_to_posterior"]))
        seeds[int(r["seed"])] = max(seeds.get(int(r["seed"]), point), point)
    medians = {key: statistics.median(kl for _, kl in seeds.values()) for key, seeds in finals.items()}
    label = trl_curves().setting_label
    summary = {(label(s["side"], s["method"], s["settings"]), float(s["lr"])): s for s in _benchmark_summary()}
    saved = json.loads((drawn / "summary.json").read_text())["settings"]
    for setting in {name for name, _ in medians}:
        best_lr, best = min(((lr, m) for (name, lr), m in medians.items() if name == setting), key=lambda p: p[1])
        assert abs(best - summary[setting, best_lr]["kl_after_sequences"]) <= TOLERANCE, setting
        assert saved[setting]["best_lr"] == best_lr
        assert abs(saved[setting]["best"]["kl_after_sequences"] - best) <= TOLERANCE


def test_setting_label_names_the_options_that_are_not_the_optimizer_s():
    label = trl_curves().setting_label
    optimizer = {"optimizer": "adamw", "weight_decay": 0.0, "lr_schedule": "linear", "max_grad_norm": 1.0}
    assert label("trl", "trl_rloo", {"rloo_config": {}}) == "TRL RLOO"
    assert label("ours", "rl", {"options": optimizer}) == "bayes_klrl rl"
    assert label("ours", "rl", {"options": {**optimizer, "replay": 32}}) == "bayes_klrl rl, replay 32"


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_results_is_one_line_and_exit_code_2(tmp_path, capsys, make):
    results = tmp_path / "results"
    if make == "empty":
        results.mkdir()
    out = tmp_path / "out"
    assert trl_curves().main(["--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trl_curves: error:") and len(err.splitlines()) == 1
    assert str(results) in err
    assert not out.exists()
