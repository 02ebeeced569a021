"""Scale-out with ``torch.distributed`` (launched by ``torchrun``), SPEC section 3.

Seeds are partitioned across ranks (rank r trains seeds[r::world_size] as its own
stacked ensemble); every rank writes only its own seeds' checkpoint and
activation files, and its metric rows are parts of the append-only metrics
store that no other rank writes. Rank 0 prepares the run directory
(tokenizer, token streams, probe set, config) while the others wait at a
barrier. Cross-seed measurements read every seed's checkpoints from the shared
run directory after a barrier.

Single-process use (no ``WORLD_SIZE`` in the environment, or 1) is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside a distributed launch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return world()[1] > 1


def init(device: str = "cpu") -> None:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA)."""
    if not is_distributed() or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def my_seeds(seeds: list[int]) -> list[int]:
    """This rank's share of the seeds."""
    _, size = world()
    if size > len(seeds):
        raise ValueError(
            f"{size} processes for {len(seeds)} seeds: each rank needs at least one seed; launch at most {len(seeds)} processes"
        )
    return share(seeds)


def shard(seeds: list[int], device: str = "cpu") -> list[int]:
    """The seeds this process measures: its share under torchrun, all of them otherwise.

    Joins the process group first, so a measurement launched by ``torchrun``
    can synchronise with :func:`on_rank_zero` afterwards.
    """
    init(device)
    return my_seeds(list(seeds)) if is_distributed() else list(seeds)


def share(items: list) -> list:
    """Round-robin share of a work list (e.g. checkpoint steps of a cross-seed metric); may be empty."""
    return rank_share(items, *world())


def rank_share(items: list, rank: int, size: int) -> list:
    """Rank ``rank``'s round-robin share of ``items`` among ``size`` ranks."""
    return list(items)[rank::size]


@contextmanager
def on_rank_zero() -> Iterator[bool]:
    """Wait for every rank, let rank 0 alone run the block, then release all (yields is_rank_zero).

    For summaries over all seeds (confidence intervals, fits) once each rank has
    written its own seeds' rows.
    """
    barrier()
    try:
        yield world()[0] == 0
    finally:
        barrier()


@contextmanager
def rank_zero_first() -> Iterator[bool]:
    """Rank 0 runs the block first; the others wait, then run it (yields is_rank_zero)."""
    rank, _ = world()
    if rank != 0:
        barrier()
    yield rank == 0
    if rank == 0:
        barrier()
