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


def middle_checkpoint(run):
    """(seed, step, model) at the middle checkpoint of the run's first seed."""
    seed = run.seeds[0]
    steps = run.steps_for(seed)
    step = steps[len(steps) // 2]
    return seed, step, run.model(seed, step)


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


def replay_setup(preset: str, tmp):
    """A freshly trained 12-step run of ``preset`` (one seed, the embedded corpus) and what a
    Stream 3 benchmark times on it: (run, a replay from step 6, its loss function, the probe
    batches, the probe at a parameter point, the parameters at step 6)."""
    from pathlib import Path

    from interp_ext import override
    from interp_ext.geometry.gradients import loss_function
    from interp_ext.measurement.replays import probe_factory
    from interp_ext.training import train
    from interp_ext.trajectory import Replay

    cfg = override(
        get_preset(preset),
        data__corpus="synthetic",
        train__steps=12,
        train__checkpoint_every=6,
        train__n_seeds=1,
    )
    run = train(cfg, Path(tmp) / "run", progress=False)
    replay = Replay(run, 0, 6)
    loss_fn = loss_function(replay.model, replay.names)
    batches = run.probe_set()["lm"]
    chunk = 4 if replay.model.cfg.d_vocab <= 4096 else 1
    probe_at = probe_factory(loss_fn, replay.names, batches, torch.float32, "cpu", chunk)
    theta0 = {n: p.detach().clone() for n, p in replay.model.named_parameters()}
    return run, replay, loss_fn, batches, probe_at, theta0
