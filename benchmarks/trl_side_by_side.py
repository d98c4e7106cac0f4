r"""TRL's ``RLOOTrainer`` and this package's trainers side by side on one GPT-2, scored by exact KL(q‖π*).

The task is ``models/gpt2_words.py``: a 2-layer GPT-2 (26,016 parameters) over 6 words after ``<bos>``,
:math:`T = 5` (7,776 sequences), :math:`r(x)` = the number of "cat", :math:`\beta = 0.5`. Both sides start from
the same checkpoint and fine-tune every weight towards the same target,

.. math:: \pi^*(x) = \pi_0(x)\,e^{r(x)/\beta} / Z, \qquad J(q) = \mathbb{E}_q[r] - \beta\,\mathrm{KL}(q\|\pi_0)
          = \beta \log Z - \beta\,\mathrm{KL}(q\|\pi^*),

and every ``--eval-every`` sequences the policy is scored by enumerating all 7,776 sequences
(:func:`bayes_klrl.exact.policy_metrics`): the curve is (sequences, training seconds, KL(q‖π*)).

- ``--side trl``: :class:`trl.RLOOTrainer` given the checkpoint's *path*; one prompt (``<bos>``) per step with
  ``num_generations`` = ``--num-sequences`` completions of exactly ``T`` tokens (the model gives bos/eos/pad
  probability 0), the sequence reward :math:`r(x) - \beta\sum_t(\log q - \log\pi_0)(x_t)` (TRL's k1 in the reward),
  the leave-one-out baseline over the group, the loss :math:`-\frac1N\sum_i A_i\,q(x_i)/q_{\text{old}}(x_i)`
  (ratio 1: one update per batch), AdamW, a linear decay of the learning rate to 0, gradient norm clipped to 1.
  Every setting is written to the JSON. TRL's policy is scored through a second copy of the model whose weights
  are copied from TRL's at each check (wrapped as :class:`~bayes_klrl.lm.hf.HFCausalLM` with the word vocabulary).
- ``--side ours``: :func:`bayes_klrl.training.fit` with
  ``make_trainer(--method, task, task.make_policy(--policy), --num-sequences, lr=…, **options)``; the options are
  the shared optimizer flags the method accepts (AdamW, schedule, warm-up, clipping, weight decay) and
  ``--ours-options`` (JSON), passed through as they are.
- ``--side both``: both, one after the other, per learning rate and seed.

Runs are appended to ``OUT/trl_rloo.json`` (TRL) or ``OUT/ours_<method>.json`` (a run with the same side, method,
learning rate, seed and length replaces the earlier one; the file is written atomically after every run). Each
file has the runs (settings, curve, final exact figures) and a summary per (side, method, lr): the median over
seeds of the sequences until KL ≤ each ``--kl-goals`` value (at the resolution of ``--eval-every``; a seed that
never gets there counts as +∞, and the median is ``null`` if that is where it falls), the KL after the last
sequence, and training seconds per 1,000 sequences (evaluation excluded).

Example::

    OMP_NUM_THREADS=1 python benchmarks/trl_side_by_side.py --side trl --lrs 3e-4,1e-3,3e-3 --seeds 0 \
        --sequences 20000 --out benchmarks/results
    python benchmarks/trl_side_by_side.py --quick --side both --out /tmp/sbs     # a few steps, a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from bayes_klrl.exact import ExactPosterior, exact_posterior, policy_metrics
from bayes_klrl.modelfile import resolve_model
from bayes_klrl.storage import write_json

SIDES = ("trl", "ours", "both")
TRL_METHOD = "trl_rloo"
TASK_NAME = "gpt2_words"


@dataclass(frozen=True)
class SideBySideConfig:
    """Settings of one invocation (each field is a command-line flag; tuples are comma-separated)."""

    side: str = field(default="trl", metadata={"help": "which trainer(s) to run: trl, ours or both"})
    lrs: tuple[float, ...] = field(default=(1e-3,), metadata={"help": "peak learning rates, e.g. 3e-4,1e-3,3e-3"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "seeds, e.g. 0,1,2"})
    sequences: int = field(default=20_000, metadata={"help": "sequences (reward evaluations) per run"})
    num_sequences: int = field(default=16, metadata={"help": "sequences per step (TRL: one prompt's generations)"})
    eval_every: int = field(
        default=320, metadata={"help": "sequences between exact KL checks (a multiple of the batch)"}
    )
    out: Path = field(default=Path("benchmarks/results"), metadata={"help": "folder of the results JSON"})
    kl_goals: tuple[float, ...] = field(default=(0.05, 0.005), metadata={"help": "KL(q||pi*) levels to count to"})
    lr_schedule: str = field(default="linear", metadata={"help": "both sides: constant, linear or cosine"})
    warmup_steps: int = field(default=0, metadata={"help": "both sides: steps of linear warm-up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "both sides: gradient-norm clip (0: none)"})
    weight_decay: float = field(default=0.0, metadata={"help": "both sides: AdamW's decoupled weight decay"})
    method: str = field(default="rl", metadata={"help": "ours: the trained method (bayes_klrl.methods)"})
    policy: str = field(default="copy", metadata={"help": "ours: task.make_policy kind (copy: every weight)"})
    ours_options: str = field(default="{}", metadata={"help": "ours: JSON dict of more make_trainer options"})
    beta: float = field(default=0.5, metadata={"help": "the task's KL coefficient"})
    word: str = field(default="cat", metadata={"help": "the task's rewarded word"})
    checkpoint: str = field(default="", metadata={"help": "GPT-2 folder (default: the task's models/tiny_gpt2)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    quick: bool = field(default=False, metadata={"help": "two steps: 32 sequences, checks every 16"})

    QUICK: ClassVar[dict] = {"sequences": 32, "eval_every": 16}

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}, got {self.side!r}")
        if not self.lrs or not all(math.isfinite(lr) and lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must be finite numbers > 0, got {self.lrs}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.num_sequences < 2:
            raise ValueError(f"num_sequences must be >= 2 (the leave-one-out baseline), got {self.num_sequences}")
        for name in ("sequences", "eval_every"):
            value = getattr(self, name)
            if value < self.num_sequences or value % self.num_sequences:
                raise ValueError(
                    f"{name} must be a positive multiple of num_sequences={self.num_sequences}, got {value}"
                )
        if not self.kl_goals or not all(g > 0 for g in self.kl_goals):
            raise ValueError(f"kl_goals must be numbers > 0, got {self.kl_goals}")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"lr_schedule must be constant, linear or cosine, got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps, max_grad_norm and weight_decay must be >= 0")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.extra_options()  # checks the JSON

    @property
    def steps(self) -> int:
        return self.sequences // self.num_sequences

    @property
    def eval_steps(self) -> int:
        return self.eval_every // self.num_sequences

    def extra_options(self) -> dict:
        """``--ours-options`` as a dict."""
        try:
            value = json.loads(self.ours_options)
        except json.JSONDecodeError as exc:
            raise ValueError(f"ours_options is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"ours_options must be a JSON object, got {self.ours_options!r}")
        return value

    def sides(self) -> tuple[str, ...]:
        return ("trl", "ours") if self.side == "both" else (self.side,)


# -- the task ---------------------------------------------------------------------------------------------------
def load_words_module():
    """``models/gpt2_words.py`` as a module (its task, model class, checkpoint path and word list)."""
    path = resolve_model(TASK_NAME)
    name = "bayes_klrl_model_gpt2_words_side_by_side"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(name, None)
            raise
    return sys.modules[name]


@dataclass(frozen=True)
class Setting:
    """The task, its exact posterior and the checkpoint both sides start from."""

    module: object
    task: object
    posterior: ExactPosterior
    checkpoint: Path

    def describe(self) -> dict:
        prior = policy_metrics(self.task, self.task.prior, self.posterior)
        return {
            "name": self.task.name,
            "beta": self.task.beta,
            "length": self.task.length,
            "vocab_size": self.task.vocab_size,
            "words": list(self.module.WORDS),
            "word": self.word,
            "num_sequences": self.task.num_sequences,
            "log_z": self.posterior.log_z,
            "kl_prior_to_posterior": prior.kl_q_to_posterior,
            "expected_reward_prior": prior.expected_reward,
            "expected_reward_posterior": float((self.posterior.log_probs.exp() * self.posterior.rewards).sum()),
            "checkpoint": str(self.checkpoint),
        }

    @property
    def word(self) -> str:
        return self.module.WORDS[next(iter(self.task.reward.keywords))]


def make_setting(config: SideBySideConfig) -> Setting:
    module = load_words_module()
    checkpoint = Path(config.checkpoint) if config.checkpoint else Path(module.CHECKPOINT)
    with _quiet():
        task = module.task(beta=config.beta, word=config.word, checkpoint=checkpoint)
    return Setting(module=module, task=task, posterior=exact_posterior(task), checkpoint=checkpoint)


def kl_of(setting: Setting, policy) -> float:
    """Exact KL(q‖π*) of ``policy`` (an AutoregressiveLM over the task's vocabulary)."""
    return policy_metrics(setting.task, policy, setting.posterior).kl_q_to_posterior


# -- TRL -------------------------------------------------------------------------------------------------------
def trl_settings(config: SideBySideConfig, lr: float, seed: int, length: int) -> dict:
    """Every ``RLOOConfig`` field this runner sets (the rest are TRL's defaults, some read back into the JSON);
    ``output_dir`` is a temporary folder TRL writes nothing to (``save_strategy="no"``)."""
    return {
        "output_dir": "(temporary)",
        "learning_rate": lr,
        "lr_scheduler_type": config.lr_schedule,
        "warmup_steps": config.warmup_steps,
        "max_grad_norm": config.max_grad_norm,
        "weight_decay": config.weight_decay,
        "optim": "adamw_torch",
        "max_steps": config.steps,
        "per_device_train_batch_size": config.num_sequences,
        "num_generations": config.num_sequences,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
        "num_iterations": 1,
        "beta": config.beta,
        "max_completion_length": length,  # the model never ends early: every completion has T tokens
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "normalize_advantages": False,
        "mask_truncated_completions": False,
        "disable_dropout": True,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": config.steps,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_vllm": False,
    }


#: fields of the resolved RLOOConfig written to the JSON besides the ones set (TRL's defaults that matter)
TRL_DEFAULTS_RECORDED = (
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "epsilon",
    "epsilon_high",
    "generation_batch_size",
    "reward_weights",
    "reward_clip_range",
    "repetition_penalty",
    "min_p",
    "shuffle_dataset",
    "sync_ref_model",
)


def run_trl(config: SideBySideConfig, setting: Setting, lr: float, seed: int, *, progress: bool = True) -> dict:
    """One ``RLOOTrainer`` run from the checkpoint's path; the exact KL every ``eval_every`` sequences."""
    try:
        import datasets
        import transformers
        import trl
        from transformers import AutoTokenizer, TrainerCallback
    except ImportError as exc:
        raise ImportError(f"the TRL side needs trl, transformers and datasets: {exc}") from None
    from bayes_klrl.lm.hf import HFCausalLM

    module, task = setting.module, setting.task
    checkpoint = str(setting.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    word_ids = module.word_ids(tokenizer)
    rewarded = word_ids[module.WORDS.index(setting.word)]
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    length = task.length

    def reward(completions, completion_ids, **kwargs) -> list[float]:
        """r(x): occurrences of the rewarded word's id; refuses completions that are not T words."""
        for ids in completion_ids:
            if len(ids) != length or specials.intersection(ids):
                raise RuntimeError(f"TRL produced the completion {list(ids)}, not {length} word tokens")
        return [float(sum(1 for i in ids if i == rewarded)) for ids in completion_ids]

    reward.__name__ = f"count_{setting.word}"

    # the scored copy: TRL's weights are copied into it at each check (TRL patches its model's forward)
    with _quiet():
        scored_model, _ = module.load_model(checkpoint)
    scored = HFCausalLM(scored_model, tokenizer, [tokenizer.bos_token_id], vocabulary=word_ids, lora=None)

    curve: list[dict] = []
    label = f"trl lr={lr:g} seed={seed}"

    class ExactKL(TrainerCallback):
        """Scores the policy at step 0 and every ``eval_steps`` steps; the clock excludes the scoring."""

        def __init__(self):
            self.started = 0.0
            self.scoring = 0.0

        def _score(self, step: int, model) -> None:
            t0 = time.perf_counter()
            wall = t0 - self.started - self.scoring
            with torch.no_grad():
                state = {k: v.detach() for k, v in model.state_dict().items()}
                scored_model.load_state_dict(state)
            kl = kl_of(setting, scored)
            curve.append({"sequences": step * config.num_sequences, "wall_seconds": wall, "kl_q_to_posterior": kl})
            if progress:
                _print_progress(label, curve[-1], config.sequences)
            self.scoring += time.perf_counter() - t0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.started = time.perf_counter()
            self._score(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % config.eval_steps == 0 or state.global_step == config.steps:
                self._score(state.global_step, model)

    settings = trl_settings(config, lr, seed, length)
    with tempfile.TemporaryDirectory(prefix="trl_side_by_side_") as output_dir:
        dataset = datasets.Dataset.from_dict({"prompt": [tokenizer.bos_token] * config.steps})
        with _quiet():
            args = trl.RLOOConfig(**{**settings, "output_dir": output_dir})
            trainer = trl.RLOOTrainer(
                model=checkpoint,
                reward_funcs=reward,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                callbacks=[ExactKL()],
            )
        prompt_ids = trainer.processing_class(text=[tokenizer.bos_token])["input_ids"][0]
        if list(prompt_ids) != [tokenizer.bos_token_id]:
            raise RuntimeError(f"TRL tokenizes the prompt as {prompt_ids}, not [bos]")
        for cls in (transformers.PrinterCallback, transformers.ProgressCallback):
            trainer.remove_callback(cls)
        with _quiet():
            trainer.train()
        recorded = {k: _plain(getattr(args, k)) for k in TRL_DEFAULTS_RECORDED if hasattr(args, k)}
        final_model = trainer.model
        scored_model.load_state_dict({k: v.detach() for k, v in final_model.state_dict().items()})
    final = dataclasses.asdict(policy_metrics(task, scored, setting.posterior))
    return _run_record(
        side="trl",
        method=TRL_METHOD,
        lr=lr,
        seed=seed,
        config=config,
        settings={
            "trainer": "trl.RLOOTrainer",
            "model": "the checkpoint's path (full fine-tuning; TRL loads the policy and the reference from it)",
            "prompt": "<bos>, one per step",
            "loss": "-(1/N) sum_i A_i q(x_i)/q_old(x_i), A_i = R_i - mean_{j!=i} R_j, R = r - beta sum_t (log q - log pi0)",
            "rloo_config": {k: _plain(v) for k, v in settings.items()},
            "trl_defaults": recorded,
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__},
        },
        curve=curve,
        final=final,
    )


# -- ours ------------------------------------------------------------------------------------------------------
def ours_options(config: SideBySideConfig, method: str) -> tuple[dict, dict]:
    """``(options, not_applied)``: the shared optimizer flags the method accepts, then ``--ours-options``.

    Thin on purpose: whatever :func:`bayes_klrl.methods.make_trainer` accepts at the time is passed through; the
    shared flags it does not know are listed as not applied.
    """
    from bayes_klrl import methods

    shared = {
        "optimizer": "adamw",
        "weight_decay": config.weight_decay,
        "lr_schedule": config.lr_schedule,
        "warmup_steps": config.warmup_steps,
        "max_grad_norm": config.max_grad_norm if config.max_grad_norm > 0 else None,
    }
    accepted = set(getattr(methods, "OPTIMIZER_OPTIONS", ()))
    spec = methods.METHODS.get(method)
    if spec is None or spec.kind != "trained":
        raise ValueError(f"unknown trained method {method!r}; choose from {', '.join(methods.trained_methods())}")
    accepted |= set(getattr(spec, "options", ()))
    options = {k: v for k, v in shared.items() if k in accepted}
    not_applied = {k: v for k, v in shared.items() if k not in accepted}
    options.update(config.extra_options())
    return options, not_applied


def run_ours(config: SideBySideConfig, setting: Setting, lr: float, seed: int, *, progress: bool = True) -> dict:
    """One :func:`bayes_klrl.training.fit` run of ``config.method``; the exact KL every ``eval_every`` sequences."""
    from bayes_klrl.methods import make_trainer
    from bayes_klrl.training import fit

    task = setting.task
    options, not_applied = ours_options(config, config.method)
    policy = task.make_policy(config.policy)
    trainer = make_trainer(config.method, task, policy, config.num_sequences, lr=lr, **options)
    label = f"ours:{config.method} lr={lr:g} seed={seed}"
    curve: list[dict] = []

    def evaluate(q) -> dict:
        kl = kl_of(setting, q)
        if progress:
            done = len(curve) * config.eval_every
            _print_progress(label, {"sequences": done, "kl_q_to_posterior": kl}, config.sequences)
        curve.append({"kl_q_to_posterior": kl})
        return {"kl_q_to_posterior": kl}

    result = fit(trainer, steps=config.steps, seed=seed, log_every=config.eval_steps, evaluate=evaluate)
    curve = [
        {
            "sequences": int(row["reward_evaluations"]),
            "wall_seconds": float(row["wall_seconds"]),
            "kl_q_to_posterior": float(row["kl_q_to_posterior"]),
        }
        for row in result.history
    ]
    optim = getattr(trainer, "optim", None)
    resolved = optim.as_dict() if hasattr(optim, "as_dict") else None
    final = dataclasses.asdict(policy_metrics(task, result.policy, setting.posterior))
    return _run_record(
        side="ours",
        method=config.method,
        lr=lr,
        seed=seed,
        config=config,
        settings={
            "trainer": f"bayes_klrl.methods.make_trainer({config.method!r}) -> {type(trainer).__name__}",
            "policy": config.policy,
            "trainable_parameters": sum(p.numel() for p in result.policy.parameters() if p.requires_grad),
            "num_sequences": config.num_sequences,
            "steps": config.steps,
            "options": {k: _plain(v) for k, v in options.items()},
            "options_not_applied": {k: _plain(v) for k, v in not_applied.items()},
            "optimizer_resolved": resolved,
            "versions": {"torch": torch.__version__},
        },
        curve=curve,
        final=final,
    )


# -- records, summary, files -----------------------------------------------------------------------------------
def _run_record(*, side, method, lr, seed, config, settings, curve, final) -> dict:
    wall = curve[-1]["wall_seconds"] if curve else float("nan")
    sequences = curve[-1]["sequences"] if curve else 0
    return {
        "side": side,
        "method": method,
        "lr": lr,
        "seed": seed,
        "sequences": config.sequences,
        "num_sequences": config.num_sequences,
        "eval_every": config.eval_every,
        "settings": settings,
        "curve": curve,
        "final": final,
        "wall_seconds": wall,
        "seconds_per_1000_sequences": 1000.0 * wall / sequences if sequences else None,
        "code": _code_state(),
    }


def sequences_to(curve: Sequence[dict], goal: float) -> int | None:
    """Sequences at the first check with KL(q‖π*) ≤ ``goal`` (``None`` if none; the check at 0 counts too)."""
    for point in curve:
        if point["kl_q_to_posterior"] <= goal:
            return int(point["sequences"])
    return None


def _median(values: Sequence[float]) -> float | None:
    """The median, ``None`` for +∞ or an empty list."""
    if not values:
        return None
    value = statistics.median(values)
    return float(value) if math.isfinite(value) else None


def _goal_key(goal: float) -> str:
    return f"sequences_to_kl_{goal:g}"


SEED_FIELDS = ("seed", "data_seed")


def _without_seeds(settings):
    """``settings`` with every seed field (at any depth) left out: what the seeds of one setting share."""
    if isinstance(settings, dict):
        return {k: _without_seeds(v) for k, v in settings.items() if k not in SEED_FIELDS}
    return settings


def summarize(runs: Sequence[dict], goals: Sequence[float]) -> list[dict]:
    """Per (side, method, lr, sequences, settings but seeds): medians over seeds (a seed missing a goal counts
    as +∞)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        options = json.dumps(_without_seeds(run.get("settings", {})), sort_keys=True, default=str)
        groups.setdefault((run["side"], run["method"], run["lr"], run["sequences"], options), []).append(run)
    rows = []
    for (side, method, lr, sequences, _), members in sorted(groups.items(), key=lambda kv: kv[0]):
        members = sorted(members, key=lambda r: r["seed"])
        row = {"side": side, "method": method, "lr": lr, "sequences": sequences, "seeds": [r["seed"] for r in members],
               "settings": members[0].get("settings", {})}  # fmt: skip
        for goal in goals:
            per_seed = [sequences_to(r["curve"], goal) for r in members]
            row[_goal_key(goal)] = _median([math.inf if s is None else s for s in per_seed])
            row[_goal_key(goal) + "_per_seed"] = per_seed
        finals = [r["curve"][-1]["kl_q_to_posterior"] for r in members]
        row["kl_after_sequences"] = _median(finals)
        row["kl_after_sequences_per_seed"] = finals
        speeds = [r["seconds_per_1000_sequences"] for r in members if r["seconds_per_1000_sequences"] is not None]
        row["seconds_per_1000_sequences"] = _median(speeds)
        row["seconds_per_1000_sequences_per_seed"] = speeds
        rows.append(row)
    return rows


def results_path(out: Path, side: str, method: str) -> Path:
    return Path(out) / ("trl_rloo.json" if side == "trl" else f"ours_{method}.json")


def _run_key(run: dict) -> tuple:
    """Runs with the same key replace each other: side, method, lr, seed, sizes and every setting (so runs of
    one method with other options sit side by side in one file)."""
    settings = json.dumps(run.get("settings", {}), sort_keys=True, default=str)
    return (run["side"], run["method"], run["lr"], run["seed"], run["sequences"], run["num_sequences"], settings)


def merge_runs(runs: list[dict], record: dict) -> list[dict]:
    """``runs`` with ``record`` appended, replacing a run of the same side, method, lr, seed and length."""
    return [r for r in runs if _run_key(r) != _run_key(record)] + [record]


def load_runs(path: Path) -> list[dict]:
    """The runs already in ``path`` (none if it does not exist); a file that is not ours is refused."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        runs = data["runs"]
        assert isinstance(runs, list)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a results file of this script ({type(exc).__name__}); use another --out"
        ) from None
    return runs


def save_results(path: Path, runs: list[dict], config: SideBySideConfig, setting: Setting, task_info: dict) -> dict:
    """Write the runs and their summary to ``path`` atomically; returns the document."""
    document = {
        "description": __doc__.splitlines()[0],
        "task": task_info,
        "kl_goals": list(config.kl_goals),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_count": os.cpu_count(),
        },
        "summary": summarize(runs, config.kl_goals),
        "runs": runs,
    }
    write_json(path, document)
    return document


def run(config: SideBySideConfig, *, progress: bool = True) -> dict[str, dict]:
    """Every (side, lr, seed) of ``config``; each results file is rewritten after each run. Returns the documents."""
    if "ours" in config.sides():
        ours_options(config, config.method)  # an unknown method fails before anything is loaded
    setting = make_setting(config)
    task_info = setting.describe()
    config.out.mkdir(parents=True, exist_ok=True)
    documents = {}
    for side in config.sides():
        method = TRL_METHOD if side == "trl" else config.method
        path = results_path(config.out, side, method)
        runs = load_runs(path)
        for lr in config.lrs:
            for seed in config.seeds:
                runner = run_trl if side == "trl" else run_ours
                record = runner(config, setting, lr, seed, progress=progress)
                runs = merge_runs(runs, record)
                documents[side] = save_results(path, runs, config, setting, task_info)
                if progress:
                    _print_done(record, config.kl_goals, path)
    return documents


# -- output ----------------------------------------------------------------------------------------------------
def _print_progress(label: str, point: dict, total: int) -> None:
    wall = point.get("wall_seconds")
    clock = f"  {wall:7.1f} s" if wall is not None else ""
    print(
        f"[{label}] {point['sequences']:>7,}/{total:,} sequences  KL(q||pi*) {point['kl_q_to_posterior']:.5f}{clock}",
        flush=True,
    )


def _print_done(record: dict, goals: Sequence[float], path: Path) -> None:
    reached = ", ".join(f"KL<={g:g} at {sequences_to(record['curve'], g)}" for g in goals)
    print(
        f"done {record['side']}:{record['method']} lr={record['lr']:g} seed={record['seed']}: final KL "
        f"{record['curve'][-1]['kl_q_to_posterior']:.5f}; {reached}; {record['seconds_per_1000_sequences']:.2f} s per "
        f"1,000 sequences -> {path}",
        flush=True,
    )


@contextlib.contextmanager
def _quiet():
    """Hide the libraries' notes (weight-loading bars, deprecations) from the progress output."""
    previous = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("transformers").setLevel(previous)


def _code_state() -> dict:
    """The repository's commit and whether the library had uncommitted changes (``None`` outside a checkout)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "bayes_klrl")
    return {"commit": git("rev-parse", "HEAD"), "library_changed": None if changed is None else bool(changed)}


def _plain(value):
    """A JSON-able version of a setting (enums and paths as strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(getattr(value, "value", value))


# -- command line ----------------------------------------------------------------------------------------------
def _tuple_of(kind):
    def parse(text: str):
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


def parse_args(argv: list[str] | None = None) -> SideBySideConfig:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Example: " + __doc__.split("Example::", 1)[1].strip().splitlines()[0],
    )
    defaults = SideBySideConfig()
    for f in dataclasses.fields(SideBySideConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif isinstance(default, tuple):
            kind = type(default[0])
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            parser.add_argument(
                flag, type=_tuple_of(kind), default=default, help=f"{f.metadata['help']} (default {shown})"
            )
        elif f.name == "side":
            parser.add_argument(flag, choices=SIDES, default=default, help=f.metadata["help"])
        else:
            parser.add_argument(
                flag, type=type(default), default=default, help=f"{f.metadata['help']} (default %(default)s)"
            )
    args = vars(parser.parse_args(argv))
    if args["quick"]:
        for key, value in SideBySideConfig.QUICK.items():
            if args[key] == getattr(defaults, key):
                args[key] = value
    try:
        return SideBySideConfig(**args)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        run(config)
    except KeyboardInterrupt:
        print("trl_side_by_side: interrupted; the results file holds the runs that finished", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        print(
            f"trl_side_by_side: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1
    finally:
        torch.set_num_threads(previous_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
