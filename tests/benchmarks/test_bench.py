"""``benchmarks/bench.py`` at tiny sizes: every figure is produced, finite and positive. No timing assertions (noisy
machines)."""

import dataclasses
import json
import math

import bench
import pytest
from bench import (
    BenchConfig,
    bench_exact,
    bench_grpo_overhead,
    bench_importance,
    bench_mcmc,
    bench_sample_efficiency,
    bench_svi_overhead,
    bench_svi_overhead_hf,
    format_table,
    hf_available,
    run_bench,
    transformers_available,
)

from bayes_klrl.exact import exact_posterior, policy_metrics

from ..conftest import small_markov_task

#: a run of every measurement in a few seconds; kl_goal above KL(pi0 || pi*) so one step reaches it
TINY = BenchConfig(
    repeats=1,
    is_samples=512,
    pyro_is_samples=4,
    svi_num_sequences=16,
    svi_steps=2,
    svi_warmup=1,
    mcmc_chains=2,
    mcmc_samples=3,
    mcmc_warmup=1,
    exact_tasks=("markov",),
    efficiency_seeds=(0,),
    efficiency_num_sequences=16,
    efficiency_max_steps=2,
    efficiency_eval_every=1,
    kl_goal=50.0,
    gpt2_num_sequences=4,
    gpt2_length=3,
    gpt2_steps=1,
    smc_tasks=("markov",),
    smc_particles=16,
    smc_variance_task="markov",
    smc_variance_particles=8,
    smc_variance_runs=4,
    smc_twist_steps=2,
    smc_twist_sequences=16,
)
HEADLINE_RATIOS = (
    "is_speedup_vs_pyro_importance",
    "svi_step_over_plain_torch_step",
    "grpo_step_over_rloo_step",
    "mcmc_speedup_vs_pyro_mcmc_chains",
)


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_side_by_side(record, key):
    assert record.key == key
    assert all(finite_positive(v) for v in (record.ours, record.baseline, record.ratio))
    assert record.ratio == pytest.approx(record.ours / record.baseline)
    assert record.ours_samples and all(finite_positive(v) for v in record.ours_samples + record.baseline_samples)


def test_importance_bench_estimates_the_same_log_z():
    task = small_markov_task()
    record = bench_importance(task, num_samples=2000, pyro_samples=100, repeats=2, seed=0)
    check_side_by_side(record, "is_speedup_vs_pyro_importance")
    assert len(record.ours_samples) == 2
    exact = exact_posterior(task).log_z
    for ours, pyro_estimate in record.settings["log_z_estimates"]:  # both sides run the same estimator
        assert ours == pytest.approx(exact, abs=0.15) and pyro_estimate == pytest.approx(exact, abs=0.4)


def test_svi_overhead_bench_times_every_interleaved_step():
    record = bench_svi_overhead(small_markov_task(), num_sequences=16, steps=3, repeats=2, warmup=1)
    check_side_by_side(record, "svi_step_over_plain_torch_step")
    assert len(record.ours_samples) == len(record.baseline_samples) == 6
    assert record.ratio == pytest.approx(record.ours / record.baseline)  # time over time: SVI in the numerator
    assert record.goal == ("<=", 1.1)


def test_svi_overhead_on_a_tiny_gpt2_times_both_trainers():
    if not transformers_available()[0]:
        pytest.skip("transformers is not installed: the figure is skipped (see the test below)")
    record = bench_svi_overhead_hf(num_sequences=4, length=3, steps=2, repeats=1, warmup=1)
    check_side_by_side(record, "svi_step_over_rl_step_hf")
    assert len(record.ours_samples) == len(record.baseline_samples) == 2
    assert record.goal == ("<=", 1.1) and record.settings["length"] == 3


def test_tiny_gpt2_figure_is_skipped_with_a_note_without_transformers(monkeypatch):
    monkeypatch.setattr(bench, "transformers_available", lambda: (False, "skipped: transformers not installed"))
    monkeypatch.setattr(bench, "hf_available", lambda: (False, "skipped: not under test"))  # no SmolLM2 load
    report = run_bench(
        dataclasses.replace(TINY, mcmc_kernels=(), exact_tasks=(), efficiency_methods=()), progress=False
    )
    figures = report.figures()
    assert figures["svi_step_over_rl_step_hf"] is None and figures["svi_hf_status"].startswith("skipped")
    assert "tiny GPT-2: skipped" in format_table(report)
    assert finite_positive(figures["svi_step_over_plain_torch_step"])  # the toy figure is still measured


def test_grpo_overhead_bench_times_every_interleaved_step():
    task = small_markov_task()
    record = bench_grpo_overhead(task, num_sequences=32, steps=3, repeats=2, warmup=1)
    check_side_by_side(record, "grpo_step_over_rloo_step")
    assert len(record.ours_samples) == len(record.baseline_samples) == 6
    assert record.goal == ("<=", 1.2) and record.settings["num_sequences"] == 32


def test_grpo_ratio_is_a_finite_key_of_the_figures():
    report = run_bench(
        dataclasses.replace(TINY, mcmc_kernels=(), exact_tasks=(), efficiency_methods=()), progress=False
    )
    figures = json.loads(json.dumps(report.figures()))
    assert finite_positive(figures["grpo_step_over_rloo_step"])
    assert figures["goals"]["grpo_step_over_rloo_step"] == "<= 1.2"
    assert "GRPO step / RLOO step" in format_table(report)


@pytest.mark.parametrize("kernel", ["imh", "gibbs"])
def test_mcmc_bench_runs_both_sides(kernel):
    record = bench_mcmc(small_markov_task(), kernel, num_chains=3, num_samples=4, warmup=1, repeats=1)
    check_side_by_side(record, f"mcmc_speedup_vs_pyro_mcmc_chains_{kernel}")
    assert record.goal == (">=", 10.0) and record.settings["num_chains"] == 3


def test_exact_bench_counts_sequences():
    (speed,) = bench_exact({"small": small_markov_task()}, repeats=2)
    assert speed.num_sequences == 27 and len(speed.seconds) == 2 and finite_positive(speed.sequences_per_second)


def test_sample_efficiency_counts_evaluations_at_the_first_check_below_the_goal():
    task = small_markov_task()
    posterior = exact_posterior(task)
    e = bench_sample_efficiency(
        task, "rl", seeds=[0, 1], num_sequences=64, max_steps=300, eval_every=5, kl_goal=0.05, posterior=posterior
    )
    assert e.reached == 2 and finite_positive(e.median)
    for evaluations, kl in zip(e.evaluations, e.final_kl):
        assert evaluations % (5 * 64) == 0 and kl <= 0.05
    assert policy_metrics(task, task.make_policy(), posterior).kl_q_to_posterior > 0.05  # not reached at step 0


def test_sample_efficiency_reports_a_miss_as_none():
    e = bench_sample_efficiency(
        small_markov_task(), "svi", seeds=[0], num_sequences=8, max_steps=2, eval_every=1, kl_goal=1e-9
    )
    assert e.evaluations == (None,) and e.median is None and e.reached == 0 and e.final_kl[0] > 1e-9


def test_run_bench_figures_have_every_key_finite_and_positive():
    report = run_bench(TINY, progress=False)
    figures = json.loads(json.dumps(report.figures()))  # JSON-serializable as it stands
    for key in HEADLINE_RATIOS:
        assert finite_positive(figures[key]), key
    assert set(figures["mcmc_speedup_vs_pyro_mcmc_chains_by_kernel"]) == {"imh", "gibbs"}
    assert figures["mcmc_speedup_vs_pyro_mcmc_chains"] == min(
        figures["mcmc_speedup_vs_pyro_mcmc_chains_by_kernel"].values()
    )
    assert set(figures["exact_sequences_per_second"]) == {"markov"}
    assert set(figures["reward_evaluations_to_kl_goal"]) == {"svi", "rl", "ppo"}
    values = [*figures["exact_sequences_per_second"].values(), *figures["reward_evaluations_to_kl_goal"].values()]
    assert all(finite_positive(v) for v in values)
    assert figures["reward_evaluations_to_kl_goal"]["rl"] == 16  # one step of 16 sequences
    assert set(figures["smc_run_over_sample_and_score"]) == {"markov"}
    assert finite_positive(figures["smc_run_over_sample_and_score"]["markov"])
    assert finite_positive(figures["smc_log_z_variance_ratio"]) and finite_positive(figures["smc_bracket_width_ratio"])
    for key in ("python", "torch", "pyro", "torch_threads", "cpu_count"):
        assert figures["machine"][key] is not None
    table = format_table(report)
    assert "importance sampling" in table and "SVI step / REINFORCE step" in table and ">= 50" in table
    assert "SMC run vs one sample-and-score pass (markov)" in table and "twisted SMC / IS prior" in table


def test_real_lm_figure_is_skipped_cleanly_without_the_extra():
    available, status = hf_available()
    if available:
        pytest.skip("the [lm] extra is installed here; its figure is measured instead")
    report = run_bench(
        dataclasses.replace(TINY, mcmc_kernels=(), exact_tasks=(), efficiency_methods=()), progress=False
    )
    figures = report.figures()
    assert figures["hf_sampling_speedup_vs_generate"] is None and figures["hf_status"].startswith("skipped")
    assert "skipped" in format_table(report)


def test_bench_command_writes_json_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(BenchConfig, "QUICK", dataclasses.asdict(TINY))
    path = tmp_path / "out" / "bench.json"
    assert bench.main(["--quick", "--json", str(path), "--no-progress", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "torch threads" in out and "measurement" in out and f"wrote {path}" in out
    doc = json.loads(path.read_text())
    assert doc["quick"] is True and doc["config"]["repeats"] == 1
    assert all(finite_positive(doc[key]) for key in HEADLINE_RATIOS)
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # written atomically, no temporary left


@pytest.mark.parametrize(
    "argv, message",
    [(["--repeats", "0"], "repeats must be an integer >= 1"), (["--threads", "0"], "--threads must be >= 1")],
    ids=["repeats0", "threads0"],
)
def test_bad_bench_arguments_are_one_line_errors(argv, message, capsys):
    assert bench.main(["--quick", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="svi_steps must be an integer >= 1"):
        BenchConfig(svi_steps=0)
    with pytest.raises(ValueError, match="unknown method"):
        BenchConfig(efficiency_methods=("dpo",))


def test_a_broken_real_lm_extra_is_reported_not_raised(monkeypatch):
    def broken(**kwargs):
        raise ImportError("gguf is too old\nsecond line")

    monkeypatch.setattr(bench, "hf_available", lambda: (True, "measured"))
    monkeypatch.setattr(bench, "bench_hf_sampling", broken)
    report = run_bench(
        dataclasses.replace(TINY, mcmc_kernels=(), exact_tasks=(), efficiency_methods=()), progress=False
    )
    assert report.figures()["hf_sampling_speedup_vs_generate"] is None
    assert report.hf_status == "failed: ImportError: gguf is too old"
    assert finite_positive(report.figures()["is_speedup_vs_pyro_importance"])  # the other figures are kept


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--json", "--repeats", "--threads", "--seed", "--no-progress"):
        assert flag in out


def test_quick_preset_is_the_quick_config():
    quick = BenchConfig.quick()
    assert quick.repeats == 3 and quick.efficiency_seeds == (0, 1) and BenchConfig().repeats == 5
