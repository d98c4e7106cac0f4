r"""Train a LoRA policy on the SmolLM2 sentiment task (CPU-sized) and measure it against the prior.

Loads the shipped task ``smollm2_sentiment`` (SmolLM2-135M-Instruct, 16 tokens, MiniLM contrastive reward),
trains ``prior.trainable_copy()`` (LoRA) with SVI or REINFORCE (RLOO, KL in the reward) through
:func:`bayes_klrl.fit`, then draws ``--eval-samples`` continuations from the prior and from the policy and
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

Example (about 25 minutes on 2 CPU cores)::

    python analysis/smollm2_run.py --method rl --steps 250 --batch 8 --out /tmp/lm_run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch

from bayes_klrl import fit
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.modelfile import load_task
from bayes_klrl.rl import ReinforceTrainer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=250, help="training steps")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (>= 2, the leave-one-out baseline)")
    p.add_argument("--method", choices=("svi", "rl"), default="rl", help="SVI (Pyro, LOO ELBO) or REINFORCE (RLOO)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the LoRA weights")
    p.add_argument("--beta", type=float, default=0.25, help="KL coefficient")
    p.add_argument("--length", type=int, default=16, help="continuation tokens")
    p.add_argument("--reward", choices=("embedding", "lexicon"), default="embedding", help="the task's reward")
    p.add_argument("--eval-samples", type=int, default=64, help="continuations drawn from prior and policy")
    p.add_argument("--eval-batch", type=int, default=16, help="continuations per sampling/scoring call")
    p.add_argument("--log-every", type=int, default=10, help="steps between history rows")
    p.add_argument("--seed", type=int, default=0, help="seeds training; evaluation uses seed + 1 and seed + 2")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


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
        import arviz as az

        out["psis_khat"] = float(az.psislw(log_w.numpy().copy())[1])
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t0 = time.perf_counter()
    task = load_task("smollm2_sentiment", beta=args.beta, length=args.length, device=args.device, reward=args.reward)
    timings["load_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    before = draw_and_score(task, task.prior, args.eval_samples, args.eval_batch, args.seed + 1)
    timings["eval_prior_seconds"] = time.perf_counter() - t0
    write_samples(args.out / "samples_before.txt", before, f"prior pi0, beta={task.beta}")
    print(f"prior: mean reward {before['rewards'].mean():.3f} over {args.eval_samples} samples", flush=True)

    policy = task.make_policy("copy")  # LoRA on shared frozen weights
    num_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    if args.method == "svi":
        trainer = SVITrainer(task, policy, args.batch, lr=args.lr)
    else:
        trainer = ReinforceTrainer(task, policy, args.batch, lr=args.lr)
    result = fit(trainer, steps=args.steps, seed=args.seed, log_every=args.log_every, progress=True)
    timings["train_seconds"] = result.wall_seconds
    timings["seconds_per_step"] = result.wall_seconds / max(1, args.steps)

    t0 = time.perf_counter()
    after = draw_and_score(task, result.policy, args.eval_samples, args.eval_batch, args.seed + 2)
    timings["eval_policy_seconds"] = time.perf_counter() - t0
    write_samples(args.out / "samples_after.txt", after, f"policy after {args.steps} {args.method} steps")

    keys = sorted({k for row in result.history for k in row})
    with open(args.out / "history.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(result.history)
    adapter = {n: p.detach().cpu() for n, p in result.policy.named_parameters() if p.requires_grad}
    torch.save(adapter, args.out / "adapter.pt")

    prior_metrics, policy_metrics = mc_metrics(before, task.beta), mc_metrics(after, task.beta)
    metrics = {
        "task": task.name,
        "beta": task.beta,
        "length": task.length,
        "method": args.method,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "trainable_parameters": num_trainable,
        "prior_parameters": sum(p.numel() for p in task.prior.parameters()),
        "prior": prior_metrics,
        "policy": policy_metrics,
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    print(json.dumps({"prior": prior_metrics, "policy": policy_metrics, "timings": timings}, indent=2), flush=True)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
