"""Data-parallel training on torch.distributed (gloo, 2 CPU ranks started with torch.multiprocessing.spawn):
with identical sampling it repeats a one-process run of the same global batch to 1e-6; with each rank's own
stream it reaches the same exact KL(q||pi*) within Monte Carlo noise; checkpoints come from rank 0 and resume."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bayes_klrl import fit
from bayes_klrl.exact import policy_metrics
from bayes_klrl.infer.svi import SVITrainer
from bayes_klrl.modelfile import load_task
from bayes_klrl.rl import ReinforceTrainer

pytestmark = pytest.mark.slow  # two processes importing torch and pyro, 20-200 steps of 1,024 sequences

GLOBAL_BATCH = 1024
STEPS = 20
#: parameters of a 2-rank run with identical sampling vs one process (float sums in another order)
SAME_PARAMETERS_ATOL = 1e-6
TRAINERS = {
    "rl": ReinforceTrainer,
    "grpo": ReinforceTrainer,
    "svi": SVITrainer,
    "rl_replay": ReinforceTrainer,
    "svi_replay": SVITrainer,
}
OPTIONS = {
    "rl": {},
    "grpo": {"kl_in": "loss", "kl_estimator": "k3", "advantage": "group-std"},
    "svi": {},
    "rl_replay": {"replay": 3},
    "svi_replay": {"replay": 3},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(method: str, *, steps: int, identical: bool, seed: int = 0, checkpoint_dir=None, resume=False):
    task = load_task("markov")
    trainer = TRAINERS[method](task, task.make_policy("tabular"), GLOBAL_BATCH, lr=0.02, **OPTIONS[method])
    trainer.identical_sampling = identical
    result = fit(trainer, steps=steps, seed=seed, log_every=steps, checkpoint_dir=checkpoint_dir, resume=resume)
    return result.policy.logits.detach().clone(), policy_metrics(task, result.policy).kl_q_to_posterior


def _worker(rank: int, port: int, out: str, jobs: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results = {}
        for name, method, kwargs in jobs:
            results[name] = _train(method, **kwargs)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, jobs) -> dict:
    out = str(tmp_path / "ranks.pt")
    mp.spawn(_worker, args=(_free_port(), out, jobs), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("method", list(TRAINERS))
def test_two_ranks_with_identical_sampling_repeat_one_process(tmp_path, method):
    torch.set_num_threads(1)
    ranks = _spawn(tmp_path, [("dp", method, {"steps": STEPS, "identical": True})])
    single, _ = _train(method, steps=STEPS, identical=False)
    assert not torch.allclose(single, load_task("markov").make_policy("tabular").logits, atol=1e-3)  # it trained
    assert torch.allclose(ranks["dp"][0], single, atol=SAME_PARAMETERS_ATOL)


def test_two_ranks_with_their_own_streams_reach_the_same_kl(tmp_path):
    torch.set_num_threads(1)
    ranks = _spawn(tmp_path, [("dp", "rl", {"steps": 200, "identical": False})])
    kls = [_train("rl", steps=200, identical=False, seed=s)[1] for s in (0, 1)]
    spread = abs(kls[0] - kls[1])
    assert abs(ranks["dp"][1] - sum(kls) / 2) < max(4 * spread, 0.1 * kls[0])


@pytest.mark.parametrize("method", ["rl", "rl_replay", "svi_replay"])
def test_a_data_parallel_run_resumes_exactly(tmp_path, method):
    """The replays: rank 0's checkpoint holds every rank's kept batches."""
    torch.set_num_threads(1)
    ckpt = str(tmp_path / "ckpt")
    ranks = _spawn(
        tmp_path,
        [
            ("straight", method, {"steps": 12, "identical": False}),
            ("first", method, {"steps": 6, "identical": False, "checkpoint_dir": ckpt}),
            ("resumed", method, {"steps": 12, "identical": False, "checkpoint_dir": ckpt, "resume": True}),
        ],
    )
    assert torch.equal(ranks["straight"][0], ranks["resumed"][0])


def test_a_checkpoint_of_another_world_size_is_refused_in_one_line(tmp_path):
    """Checked before the trainer's state, which holds one part per rank (a replay buffer)."""
    torch.set_num_threads(1)
    ckpt = str(tmp_path / "ckpt")
    _train("rl_replay", steps=3, identical=False, checkpoint_dir=ckpt)  # one process
    resume = {"steps": 6, "identical": False, "checkpoint_dir": ckpt, "resume": True}
    with pytest.raises(Exception, match="written by 1 data-parallel rank"):
        _spawn(tmp_path, [("resumed", "rl_replay", resume)])
