"""Cost of Stream 3's full component matrix at one checkpoint (paper preset, one seed).

K[A, B] for n circuit components plus ``rest`` (n + 1 in all), relative to one
gradient pass over the same B batches (vmap(grad)); target <= 3 (n + 1)
gradient-equivalents. Peak memory reported as process RSS.

Usage: python benchmarks/autocatalysis.py [--batches 16] [--heads 2]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, paper_model, peak_rss_mib, random_batches, timer

from circuits import Circuit
from interp_ext.stream3.energy import component_matrix_flat, model_probe, sgd_direction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=16)
    p.add_argument(
        "--chunk", type=int, default=None, help="batches per vmap (default: automatic, 1 on CPU)"
    )
    args = p.parse_args()
    model = paper_model()
    batches = random_batches(args.batches)
    circuit = Circuit("bench", ["L1H2", "L0H3"]).with_rest()
    masks = circuit.flat_masks(model)
    n = len(masks)
    base = peak_rss_mib()
    probe = model_probe(model, batches, args.chunk)
    with timer() as t_grad:
        _ = probe.grads
    d = sgd_direction(probe)
    with timer() as t_k:
        frame, _ = component_matrix_flat(probe, masks, d)
    peak = peak_rss_mib()
    ratio = (t_grad.seconds + t_k.seconds) / t_grad.seconds
    print(f"machine: {machine()}")
    print(
        f"paper preset, B = {args.batches} batches of 8 x 64, components {list(masks)} (n + 1 = {n})"
    )
    print(
        f"one gradient pass over the batches: {t_grad.seconds:.1f} s; K matrix on top: {t_k.seconds:.1f} s"
    )
    print(
        f"total = {ratio:.2f} gradient-equivalents (target <= 3 (n + 1) = {3 * n}); per component {(ratio - 1) / n:.2f}"
    )
    print(f"peak RSS growth {peak - base:.0f} MiB")
    print(frame[["A", "B", "K_norm"]].round(5).to_string(index=False))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
