r"""Train a LoRA policy on the SmolLM2 sentiment task (CPU-sized) and measure it against the prior.

Loads the shipped task ``smollm2_sentiment`` (SmolLM2-135M-Instruct, 16 tokens, MiniLM contrastive reward),
trains ``prior.trainable_copy()`` (LoRA) with SVI or REINFORCE (RLOO, KL in the reward; trainers from
:func:`bayes_klrl.methods.make_trainer`) through :func:`bayes_klrl.training.fit`, then draws ``--eval-samples`` continuations from the prior and from the policy and
writes into ``--out``:

- ``metrics.json``: Monte Carlo figures with standard errors, for the prior and the policy as :math:`q`:
  mean reward, :math:`\mathrm{KL}(q\|\pi_0) \approx \overline{\log q - \log \pi_0}`,
  :math:`\mathrm{ELBO} \approx \overline{\log\pi_0 + r/\beta - \log q}`, :math:`J = \beta\,\mathrm{ELBO}`, and
  importance sampling :math:`\log\hat Z = \operatorname{logmeanexp}(\log w)`,
  :math:`\log w = \log\pi_0 + r/\beta - \log q`, with its normalized ESS and PSIS :math:`\hat k`;
  plus timings and the settings;
- ``history.csv``: the trainer's statistics every ``--log-every`` steps;
- ``samples_before.txt`` / ``samples_after.txt``: the continuations with their rewards;
- ``adapter.pt``: the LoRA weights only (the trainable parameters).

Needs the ``[lm]`` extra (transformers) and the SmolLM2 weights. Example (about 25 minutes on 2 CPU cores)::

    python analysis/smollm2_run.py --method rl --steps 250 --batch 8 --out /tmp/lm_run

``--quick`` is a smoke run of a few steps.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from bayes_klrl.config import Preset, add_config_arguments, check_choices, config_from_args, option
from bayes_klrl.methods import make_trainer
from bayes_klrl.modelfile import load_task
from bayes_klrl.training import fit


@dataclass(frozen=True)
class Config(Preset):
    """One LoRA training run on ``smollm2_sentiment`` and its evaluation."""

    steps: int = option(250, "training steps")
    batch: int = option(8, "sequences per step (>= 2, the leave-one-out baseline)")
    method: str = option("rl", "SVI (Pyro, LOO ELBO) or REINFORCE (RLOO)", choices=("svi", "rl"))
    lr: float = option(1e-3, "Adam learning rate of the LoRA weights")
    beta: float = option(0.25, "KL coefficient")
    length: int = option(16, "continuation tokens")
    reward: str = option("embedding", "the task's reward", choices=("embedding", "lexicon"))
    eval_samples: int = option(64, "continuations drawn from prior and policy")
    eval_batch: int = option(16, "continuations per sampling/scoring call")
    log_every: int = option(10, "steps between history rows")
    seed: int = option(0, "seeds training; evaluation uses seed + 1 and seed + 2")
    device: str = option("cpu", "cpu or cuda")
    threads: int = option(0, "torch CPU threads (0: torch's default)")

    #: a smoke run: a few steps and draws (minutes on CPU, most of it loading the models)
    QUICK: ClassVar[dict] = {"steps": 4, "batch": 4, "eval_samples": 8, "eval_batch": 8, "log_every": 2}

    def __post_init__(self):
        check_choices(self)
        if self.batch < 2:
            raise ValueError(f"batch must be >= 2 (the leave-one-out baseline), got {self.batch}")
        for name in ("steps", "eval_samples", "eval_batch", "log_every", "lr", "beta", "length"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--quick", action="store_true", help="a smoke run (options given still override it)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_arguments(p, Config, presets={"quick": Config.QUICK})
    return p


def _logmeanexp(x: torch.Tensor) -> float:
    return float(torch.logsumexp(x, 0) - math.log(x.numel()))


def _mean_se(x: torch.Tensor) -> dict:
    x = x.double()
    return {"mean": float(x.mean()), "se": float(x.std() / math.sqrt(x.numel()))}


@torch.no_grad()
def draw_and_score(task, lm, num_samples: int, batch: int, seed: int) -> dict:
    """``num_samples`` continuations of ``lm`` with log q, log π0 and r (all ``(N,)``) and their texts."""
    generator = torch.Generator(lm.device).manual_seed(seed)
    xs, log_q, log_prior, rewards = [], [], [], []
    for start in range(0, num_samples, batch):
        x = lm.sample(min(batch, num_samples - start), task.length, generator=generator)  # (n, T)
        xs.append(x)
        log_q.append(lm.log_prob(x))
        log_prior.append(task.prior.log_prob(x) if lm is not task.prior else log_q[-1])
        rewards.append(task.rewards(x))
    x = torch.cat(xs)
    return {
        "x": x,
        "texts": task.decode(x),
        "log_q": torch.cat(log_q).double().cpu(),
        "log_prior": torch.cat(log_prior).double().cpu(),
        "rewards": torch.cat(rewards).double().cpu(),
    }


def mc_metrics(draws: dict, beta: float) -> dict:
    r"""Monte Carlo figures of :math:`q` from its own samples (see the module docstring)."""
    log_w = draws["log_prior"] + draws["rewards"] / beta - draws["log_q"]  # (N,)
    w = torch.softmax(log_w, 0)
    out = {
        "reward": _mean_se(draws["rewards"]),
        "kl_to_prior": _mean_se(draws["log_q"] - draws["log_prior"]),
        "elbo": _mean_se(log_w),
        "objective": _mean_se(beta * log_w),
        "is_log_z": _logmeanexp(log_w),
        "is_ess_fraction": float(1.0 / (w.square().sum() * log_w.numel())),
    }
    try:
        from bayes_klrl.infer.importance import pareto_khat  # ArviZ 0.x or 1.x

        out["psis_khat"] = pareto_khat(log_w)[0]
    except Exception as exc:  # k̂ is a diagnostic; its absence does not stop the run
        out["psis_khat"] = None
        out["psis_error"] = f"{type(exc).__name__}: {exc}"
    return out


def write_samples(path: Path, draws: dict, title: str) -> None:
    order = torch.argsort(draws["rewards"], descending=True)
    lines = [f"# {title}: {len(order)} continuations, sorted by reward; columns: reward, log q - log pi0, text"]
    for i in order.tolist():
        kl = float(draws["log_q"][i] - draws["log_prior"][i])
        lines.append(f"{float(draws['rewards'][i]):+.3f}\t{kl:+.3f}\t{json.dumps(draws['texts'][i])}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(config: Config, out: str | Path, *, progress: bool = False) -> dict:
    """Train and evaluate (see the module docstring); write every file into ``out`` and return ``metrics.json``."""
    out = Path(out)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t0 = time.perf_counter()
    task = load_task(
        "smollm2_sentiment", beta=config.beta, length=config.length, device=config.device, reward=config.reward
    )
    timings["load_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    before = draw_and_score(task, task.prior, config.eval_samples, config.eval_batch, config.seed + 1)
    timings["eval_prior_seconds"] = time.perf_counter() - t0
    write_samples(out / "samples_before.txt", before, f"prior pi0, beta={task.beta}")
    print(f"prior: mean reward {before['rewards'].mean():.3f} over {config.eval_samples} samples", flush=True)

    policy = task.make_policy("lora")  # LoRA on shared frozen weights
    num_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    trainer = make_trainer(config.method, task, policy, config.batch, lr=config.lr)
    result = fit(trainer, steps=config.steps, seed=config.seed, log_every=config.log_every, progress=progress)
    timings["train_seconds"] = result.wall_seconds
    timings["seconds_per_step"] = result.wall_seconds / max(1, config.steps)

    t0 = time.perf_counter()
    after = draw_and_score(task, result.policy, config.eval_samples, config.eval_batch, config.seed + 2)
    timings["eval_policy_seconds"] = time.perf_counter() - t0
    write_samples(out / "samples_after.txt", after, f"policy after {config.steps} {config.method} steps")

    keys = sorted({k for row in result.history for k in row})
    with open(out / "history.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(result.history)
    adapter = {n: p.detach().cpu() for n, p in result.policy.named_parameters() if p.requires_grad}
    torch.save(adapter, out / "adapter.pt")

    prior_metrics, policy_metrics = mc_metrics(before, task.beta), mc_metrics(after, task.beta)
    metrics = {
        "task": task.name,
        "beta": task.beta,
        "length": task.length,
        "method": config.method,
        "settings": {**dataclasses.asdict(config), "out": str(out)},
        "trainable_parameters": num_trainable,
        "prior_parameters": sum(p.numel() for p in task.prior.parameters()),
        "prior": prior_metrics,
        "policy": policy_metrics,
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    print(json.dumps({"prior": prior_metrics, "policy": policy_metrics, "timings": timings}, indent=2), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = config_from_args(Config, args, base=Config.QUICK if args.quick else None)
    run(config, args.out, progress=not args.no_progress)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
