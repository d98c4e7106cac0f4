r"""Train the prior of the "words_sentiment" task: a tiny transformer fitted by maximum likelihood to the toy grammar.

The corpus is drawn from the grammar of :mod:`bayes_klrl.tasks.words` (16 words, sentences of 5 tokens); the model
minimizes the per-sentence negative log-likelihood

.. math:: \mathcal{L}(\theta) = -\frac{1}{N} \sum_{n=1}^{N} \log p_\theta(x^{(n)}), \qquad
          \mathbb{E}_{x \sim p}[-\log p_\theta(x)] = H(p) + \mathrm{KL}(p \,\|\, p_\theta) \ge H(p),

so the held-out NLL is bounded below by the grammar's entropy :math:`H(p)`, which is known exactly; the script
reports both, and the exact cross-entropy over the grammar's 360 sentences.

Usage::

    python models/train_tiny_transformer.py                      # writes models/tiny_transformer.pt
    python models/train_tiny_transformer.py --steps 20 --out /tmp/lm.pt --seed 1

Everything random is drawn from generators seeded by ``--seed`` (corpus, held-out set, initialization,
batches); with the same torch build and thread count, a rerun writes the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bayes_klrl.lm.transformer import TinyTransformerLM, TransformerConfig
from bayes_klrl.tasks.words import LENGTH, VOCAB_SIZE, grammar_distribution, sample_corpus

DEFAULT_OUT = Path(__file__).resolve().parent / "tiny_transformer.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Options of a training run (each field is a command-line flag)."""

    seed: int = field(default=0, metadata={"help": "seed of the corpus, the initialization and the batches"})
    steps: int = field(default=3000, metadata={"help": "number of AdamW steps"})
    out: Path = field(default=DEFAULT_OUT, metadata={"help": "where to write the checkpoint"})
    batch_size: int = field(default=128, metadata={"help": "sentences per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (cosine decay to lr/10)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    num_train: int = field(default=20_000, metadata={"help": "training sentences drawn from the grammar"})
    num_heldout: int = field(default=4_000, metadata={"help": "held-out sentences (drawn with another seed)"})
    d_model: int = field(default=32, metadata={"help": "transformer width"})
    n_layer: int = field(default=2, metadata={"help": "transformer blocks"})
    n_head: int = field(default=2, metadata={"help": "attention heads"})
    log_every: int = field(default=250, metadata={"help": "print the losses every this many steps (0: never)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (1: tiny tensors, no oversubscription)"})


@dataclass(frozen=True)
class TrainResult:
    """What a run reached; NLLs in nats per sentence of 5 tokens."""

    path: Path
    num_parameters: int
    initial_heldout_nll: float
    heldout_nll: float
    train_nll: float
    cross_entropy: float
    grammar_entropy: float
    seconds: float


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=type(f.default), default=f.default, help=f.metadata["help"]
        )
    args = parser.parse_args(argv)
    config = TrainConfig(**vars(args))
    for name in ("steps", "batch_size", "num_train", "num_heldout", "threads"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    return config


@torch.no_grad()
def mean_nll(lm: TinyTransformerLM, sentences: torch.Tensor) -> float:
    r""":math:`-\frac1N\sum_n \log p_\theta(x^{(n)})` in nats per sentence."""
    return float(-lm.log_prob(sentences).double().mean())


def train(config: TrainConfig) -> TrainResult:
    """Draw the corpus, fit the transformer by maximum likelihood, save it, and report held-out NLL vs entropy.

    Runs with ``config.threads`` torch threads and restores the previous number afterwards.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig) -> TrainResult:
    started = time.perf_counter()
    # -- seeding: every random draw below comes from one of these
    train_x = sample_corpus(config.num_train, seed=config.seed)  # (N, T)
    heldout_x = sample_corpus(config.num_heldout, seed=config.seed + 1_000_003)  # (M, T)
    batches = torch.Generator().manual_seed(config.seed + 2)

    model_config = TransformerConfig(
        vocab_size=VOCAB_SIZE,
        max_length=LENGTH,
        d_model=config.d_model,
        n_layer=config.n_layer,
        n_head=config.n_head,
    )
    lm = TinyTransformerLM(model_config, seed=config.seed)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
    )
    initial = mean_nll(lm, heldout_x)
    if config.log_every:
        print(f"{lm.num_parameters:,} parameters; held-out NLL at init {initial:.4f} nats/sentence")

    running = float("nan")
    for step in range(1, config.steps + 1):
        index = torch.randint(config.num_train, (config.batch_size,), generator=batches)  # (B,)
        loss = -lm.log_prob(train_x[index]).mean()  # NLL per sentence
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.95 * running + 0.05 * value
        if config.log_every and (step % config.log_every == 0 or step == config.steps):
            print(f"step {step:5d}  train NLL {running:.4f}  held-out NLL {mean_nll(lm, heldout_x):.4f}")

    lm.eval()
    grammar = grammar_distribution(LENGTH)
    with torch.no_grad():
        cross_entropy = grammar.cross_entropy(lm.log_prob(grammar.sentences))
    heldout = mean_nll(lm, heldout_x)
    seconds = time.perf_counter() - started
    result = TrainResult(
        path=Path(config.out),
        num_parameters=lm.num_parameters,
        initial_heldout_nll=initial,
        heldout_nll=heldout,
        train_nll=mean_nll(lm, train_x),
        cross_entropy=cross_entropy,
        grammar_entropy=grammar.entropy,
        seconds=seconds,
    )
    metadata = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    for key in ("out", "log_every", "threads"):
        metadata.pop(key)
    metadata.update(
        {k: v for k, v in dataclasses.asdict(result).items() if k not in ("path", "seconds", "num_parameters")}
    )
    lm.save(config.out, metadata={"training": metadata, "torch": str(torch.__version__)})
    return result


def main(argv: list[str] | None = None) -> TrainResult:
    config = parse_args(argv)
    result = train(config)
    print(
        f"{result.num_parameters:,} parameters, {result.seconds:.1f} s; nats per sentence: held-out NLL "
        f"{result.heldout_nll:.4f} (train {result.train_nll:.4f}), exact cross-entropy {result.cross_entropy:.4f}, "
        f"grammar entropy {result.grammar_entropy:.4f} (KL(grammar || model) = "
        f"{result.cross_entropy - result.grammar_entropy:.4f}); wrote {result.path}"
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
