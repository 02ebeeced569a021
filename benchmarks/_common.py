"""Shared helpers for the benchmarks: a paper-preset model and timing."""

from __future__ import annotations

import platform
import resource
import statistics
import time

import torch

from interp_ext.config import get_preset
from interp_ext.models import build_model


def paper_model(seed: int = 0, device: str = "cpu"):
    return build_model(get_preset("paper").model, 50257, seed=seed, device=device)


def random_batches(n: int, batch: int = 8, pos: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50257, (n, batch, pos), generator=torch.Generator().manual_seed(seed))


def machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, repeats: int) -> tuple[float, object]:
    """(median seconds over ``repeats`` calls of ``fn``, the last call's result)."""
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


class timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def plain_passes(model, batches: torch.Tensor) -> float:
    """Seconds for one plain forward + backward per batch."""
    with timer() as t:
        for b in batches:
            model.zero_grad(set_to_none=True)
            model(b, return_type="loss").backward()
    model.zero_grad(set_to_none=True)
    return t.seconds
