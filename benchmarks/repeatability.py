"""Bit-for-bit repeats and float-level agreement of the stacked trainer (paper preset).

For bf16 autocast on and off, trains the same seeds on the same random batches
several ways and compares the parameters after ``--steps`` steps:

* the default (deterministic algorithms) twice: equal bit for bit?
* with ``train.deterministic`` off,
* one seed at a time (``train.seed_chunk = 1``) instead of the device's default
  (one vmap over all seeds on a GPU),
* one seed on ``--device`` against the same seed on the CPU (20 steps).

"rel" is |difference| / |parameters| over all parameters together.

Usage: python benchmarks/repeatability.py [--device cuda] [--seeds 4] [--steps 50]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from train_throughput import make_stacked, sync

from interp_ext.config import get_preset


def run(cfg, n: int, device: str, steps: int, deterministic: bool = True, chunk: int = 0):
    trainer = make_stacked(cfg, n, device, deterministic)
    trainer.cfg.train.seed_chunk = chunk
    losses = []
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(trainer.train_step().float().cpu())
    sync(device)
    elapsed = time.perf_counter() - start
    params = {k: v.detach().float().cpu().clone() for k, v in trainer.params.items()}
    return params, torch.stack(losses), elapsed


def diff(a: dict, b: dict) -> tuple[bool, float, float]:
    same = all(torch.equal(a[k], b[k]) for k in a)
    largest = max(float((a[k] - b[k]).abs().max()) for k in a)
    num = sum(float((a[k] - b[k]).norm()) ** 2 for k in a) ** 0.5
    den = sum(float(b[k].norm()) ** 2 for k in a) ** 0.5
    return same, largest, num / den


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    dev, n, steps = args.device, args.seeds, args.steps
    for bf16 in (True, False):
        cfg = get_preset("paper")
        cfg.train.device, cfg.train.bf16 = dev, bf16
        a, la, ta = run(cfg, n, dev, steps)
        b, _, tb = run(cfg, n, dev, steps)
        c, lc, tc = run(cfg, n, dev, steps, deterministic=False)
        d, ld, td = run(cfg, n, dev, steps, chunk=1)
        print(
            f"bf16={bf16} paper preset, {n} seeds, {steps} steps on {dev}; loss step 1 {la[0].tolist()} "
            f"step {steps} {la[-1].tolist()}; all finite {bool(torch.isfinite(la).all())}"
        )
        same, largest, _ = diff(a, b)
        print(
            f"  deterministic repeat: bit for bit {same} (max |dparam| {largest:.3g}); {ta:.2f} s vs {tb:.2f} s"
        )
        same, largest, rel = diff(a, c)
        print(
            f"  nondeterministic vs deterministic: equal {same}, max |dparam| {largest:.3g}, rel {rel:.3g}; "
            f"loss diff {float((la - lc).abs().max()):.3g}; {tc:.2f} s"
        )
        same, largest, rel = diff(a, d)
        print(
            f"  one seed at a time vs one vmap: equal {same}, max |dparam| {largest:.3g}, rel {rel:.3g}; "
            f"loss diff {float((la - ld).abs().max()):.3g}; {td:.2f} s"
        )
        cpu = copy.deepcopy(cfg)
        cpu.train.device = "cpu"
        e, le, _ = run(cpu, 1, "cpu", 20)
        f, lf, _ = run(cfg, 1, dev, 20)
        same, largest, rel = diff(f, e)
        print(
            f"  {dev} vs cpu, 1 seed 20 steps: equal {same}, max |dparam| {largest:.3g}, rel {rel:.3g}; "
            f"loss diff {float((le - lf).abs().max()):.3g} (losses {le[-1].item():.5f} / {lf[-1].item():.5f})"
        )
    if dev.startswith("cuda"):
        print("peak cuda memory GiB", torch.cuda.max_memory_allocated() / 2**30)


if __name__ == "__main__":
    main()
