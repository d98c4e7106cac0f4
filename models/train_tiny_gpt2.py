r"""Train the prior of the "gpt2_words" task: a 2-layer GPT-2 fitted by maximum likelihood to a random Markov source.

The corpus: sentences of :math:`T = 5` words over the six words of :mod:`gpt2_words` (``the cat dog sees runs
big``), drawn from a first-order Markov chain :math:`p` with random logits (``--concentration`` their standard
deviation, ``--source-seed`` their seed; :meth:`bayes_klrl.lm.MarkovLM.random`), so the prior has structure and
:math:`p` is known exactly. The model reads ``<bos>`` and the sentence and minimizes the per-sentence NLL

.. math:: \mathcal{L}(\theta) = -\frac{1}{N}\sum_{n} \log p_\theta(x^{(n)} \mid \texttt{<bos>}), \qquad
          \mathbb{E}_{x\sim p}[-\log p_\theta(x)] = H(p) + \mathrm{KL}(p\,\|\,p_\theta),

and the script reports the exact :math:`H(p)` and :math:`\mathrm{KL}(p\|p_\theta)` over all :math:`6^5 = 7{,}776`
sentences. The model suppresses its special tokens inside its LM head
(:class:`gpt2_words.WordsGPT2LMHeadModel`), so it is trained, saved and sampled with probability 0 on them; the
script checks that the softmax over all 9 ids and the one over the 6 word ids give the same sentence
log-probabilities (to ``--check-tolerance``) before it writes anything.

Written to ``--out`` (default ``models/tiny_gpt2/``): ``config.json``, ``generation_config.json``,
``model.safetensors`` (no pickle), the tokenizer (``tokenizers`` WordLevel + whitespace pre-tokenizer, wrapped as
:class:`~transformers.PreTrainedTokenizerFast` with ``<bos>``/``<eos>``/``<pad>``) and ``training.json`` (the
settings and the figures above).

Usage::

    python models/train_tiny_gpt2.py                  # writes models/tiny_gpt2/ in well under a minute
    python models/train_tiny_gpt2.py --steps 50 --out /tmp/gpt2 --seed 1

Every random draw comes from the seeds (source, corpus, initialization, batches); with the same torch build and
thread count, a rerun writes the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bayes_klrl.exact import enumerate_sequences
from bayes_klrl.lm import MarkovLM
from bayes_klrl.storage import write_json

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "tiny_gpt2"


def _task_module():
    """``models/gpt2_words.py``, imported by path (it defines the model class and the word list)."""
    name = "bayes_klrl_model_gpt2_words_for_training"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "gpt2_words.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class TrainConfig:
    """Options of a training run (each field is a command-line flag)."""

    seed: int = field(default=0, metadata={"help": "seed of the corpus, the initialization and the batches"})
    source_seed: int = field(default=3, metadata={"help": "seed of the Markov source's logits"})
    concentration: float = field(default=1.5, metadata={"help": "s.d. of the source's logits (larger: peakier)"})
    steps: int = field(default=800, metadata={"help": "AdamW steps"})
    out: Path = field(default=DEFAULT_OUT, metadata={"help": "folder to write the model and tokenizer to"})
    batch_size: int = field(default=128, metadata={"help": "sentences per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (cosine decay to lr/10)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    num_train: int = field(default=20_000, metadata={"help": "training sentences drawn from the source"})
    n_embd: int = field(default=32, metadata={"help": "GPT-2 width"})
    n_layer: int = field(default=2, metadata={"help": "GPT-2 blocks"})
    n_head: int = field(default=2, metadata={"help": "attention heads"})
    n_positions: int = field(default=8, metadata={"help": "positions (prompt + continuation <= this)"})
    log_every: int = field(default=200, metadata={"help": "print the loss every this many steps (0: never)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    check_tolerance: float = field(
        default=1e-5, metadata={"help": "max |log p| difference allowed between the 9-id and the 6-word softmax"}
    )


@dataclass(frozen=True)
class TrainResult:
    """What a run reached; NLLs and entropies in nats per sentence of 5 words."""

    path: Path
    num_parameters: int
    initial_cross_entropy: float
    cross_entropy: float
    source_entropy: float
    kl_source_to_model: float
    max_view_difference: float
    seconds: float


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=type(f.default), default=f.default, help=f.metadata["help"]
        )
    config = TrainConfig(**vars(parser.parse_args(argv)))
    for name in ("steps", "batch_size", "num_train", "threads", "n_embd", "n_layer", "n_head"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.n_positions < 1 + _task_module().LENGTH:
        parser.error(f"--n-positions must be >= {1 + _task_module().LENGTH} (the prompt and the sentence)")
    if config.n_embd % config.n_head:
        parser.error("--n-embd must be a multiple of --n-head")
    return config


def build_tokenizer(words: tuple[str, ...], special_tokens: tuple[str, str, str]):
    """A word-level tokenizer: ids 0..2 the special tokens ``(pad, bos, eos)``, then ``words``.

    ``tokenizers`` WordLevel model with a whitespace pre-tokenizer, wrapped as ``PreTrainedTokenizerFast``; no
    post-processor, so ``tokenizer("<bos>")`` is ``[bos_id]`` and nothing is added to a text.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos = special_tokens
    vocab = {token: i for i, token in enumerate((*special_tokens, *words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([pad, bos, eos])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad)


def sentence_log_probs(model, bos_id: int, ids: torch.Tensor, restrict: list[int] | None = None) -> torch.Tensor:
    r""":math:`\log p_\theta(x \mid \texttt{<bos>})` of word-id sentences ``(N, T)``: ``(N,)``, float64.

    :param restrict: ``None``: the softmax over every id (what TRL samples from); a list of ids: the softmax
        over those ids only (the package's view), ``ids`` holding ids from that list.
    """
    inputs = torch.cat([torch.full((ids.shape[0], 1), bos_id, dtype=torch.long), ids], dim=1)  # (N, 1+T)
    logits = model(input_ids=inputs).logits[:, :-1].double()  # (N, T, V): position t predicts token t+1
    if restrict is not None:
        index = {token: i for i, token in enumerate(restrict)}
        logits = logits[..., restrict]  # (N, T, K)
        ids = ids.clone().apply_(lambda token: index[token])
    return torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1).sum(-1)


def train(config: TrainConfig) -> TrainResult:
    """Draw the corpus, fit the GPT-2, check the two views agree, save model and tokenizer.

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
    words_module = _task_module()
    words, length = words_module.WORDS, words_module.LENGTH
    config_class, model_class = words_module.model_classes()
    tokenizer = build_tokenizer(words, words_module.SPECIAL_TOKENS)
    bos_id, eos_id, pad_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    word_ids = words_module.word_ids(tokenizer)
    to_ids = torch.tensor(word_ids)  # word index -> tokenizer id

    # -- seeding: every random draw below comes from one of these
    source = MarkovLM.random(len(words), concentration=config.concentration, seed=config.source_seed)
    corpus = to_ids[source.sample(config.num_train, length, generator=torch.Generator().manual_seed(config.seed))]
    batches = torch.Generator().manual_seed(config.seed + 2)
    torch.manual_seed(config.seed)  # the model's initialization draws from the global stream

    model_config = config_class(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,  # no dropout: sampling, scoring and training see one distribution
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    model_config.auto_map = {}  # TRL reads config.auto_map when the architecture is not a transformers class
    model = model_class(model_config)
    num_parameters = sum(p.numel() for p in model.parameters())

    everything = enumerate_sequences(len(words), length)  # (6^5, T) word indices
    log_source = source.log_prob(everything).double()  # (6^5,)
    source_entropy = float(-(log_source.exp() * log_source).sum())

    @torch.no_grad()
    def cross_entropy() -> float:
        model.eval()
        value = float(-(log_source.exp() * sentence_log_probs(model, bos_id, to_ids[everything])).sum())
        model.train()
        return value

    initial = cross_entropy()
    if config.log_every:
        print(f"{num_parameters:,} parameters; H(source) = {source_entropy:.4f}, cross-entropy at init {initial:.4f}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
    )
    model.train()
    running = float("nan")
    for step in range(1, config.steps + 1):
        ids = corpus[torch.randint(config.num_train, (config.batch_size,), generator=batches)]  # (B, T)
        inputs = torch.cat([torch.full((ids.shape[0], 1), bos_id, dtype=torch.long), ids], dim=1)  # (B, 1+T)
        labels = inputs.clone()
        labels[:, 0] = -100  # the prompt is not predicted
        loss = model(input_ids=inputs, labels=labels).loss * length  # NLL per sentence
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        running = value if math.isnan(running) else 0.95 * running + 0.05 * value
        if config.log_every and (step % config.log_every == 0 or step == config.steps):
            print(f"step {step:5d}  train NLL {running:.4f}  cross-entropy {cross_entropy():.4f}")

    model.eval()
    with torch.no_grad():
        full = sentence_log_probs(model, bos_id, to_ids[everything])  # TRL's view: softmax over 9 ids
        words_only = sentence_log_probs(model, bos_id, to_ids[everything], restrict=word_ids)  # ours: 6 words
    difference = float((full - words_only).abs().max())
    if not difference <= config.check_tolerance:
        raise RuntimeError(
            f"the 9-id and 6-word views differ by {difference:.2e} > {config.check_tolerance:.0e}: "
            "the special tokens are not suppressed"
        )
    total_mass = float(full.exp().sum())
    final = float(-(log_source.exp() * full).sum())
    seconds = time.perf_counter() - started
    result = TrainResult(
        path=Path(config.out),
        num_parameters=num_parameters,
        initial_cross_entropy=initial,
        cross_entropy=final,
        source_entropy=source_entropy,
        kl_source_to_model=final - source_entropy,
        max_view_difference=difference,
        seconds=seconds,
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # config.json + model.safetensors (safetensors only; transformers 5 has no pickle path)
    tokenizer.save_pretrained(out)
    if not (out / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    for key in ("out", "log_every", "threads"):
        settings.pop(key)
    figures = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("path", "seconds")}
    figures["sequence_mass"] = total_mass
    write_json(
        out / "training.json",
        {"settings": settings, "figures": figures, "torch": str(torch.__version__), "words": list(words)},
    )
    return result


def main(argv: list[str] | None = None) -> TrainResult:
    config = parse_args(argv)
    result = train(config)
    print(
        f"{result.num_parameters:,} parameters, {result.seconds:.1f} s; nats per sentence: cross-entropy "
        f"{result.cross_entropy:.4f} (at init {result.initial_cross_entropy:.4f}), source entropy "
        f"{result.source_entropy:.4f}, KL(source || model) = {result.kl_source_to_model:.4f}; "
        f"9-id vs 6-word log-probs differ by at most {result.max_view_difference:.1e}; wrote {result.path}"
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
