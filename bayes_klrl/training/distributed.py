r"""Data parallelism under torch.distributed: the process group (rank, world size) and each rank's seed."""

from __future__ import annotations

import hashlib
import os

import torch

__all__ = ["init_distributed_from_env", "rank_seed", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the torch.distributed process group, ``(0, 1)`` when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``...): backend nccl with CUDA, else gloo. Nothing happens without ``WORLD_SIZE`` > 1.
    Returns ``(rank, world_size)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return world()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of data-parallel rank ``rank`` of a run seeded ``seed`` (rank 0 keeps ``seed``)."""
    if rank == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
