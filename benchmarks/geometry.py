"""Cost of one checkpoint's geometry measurement on the paper preset.

Time of ``measure_checkpoint`` (B per-batch gradients with vmap(grad), the B x B
Gram eigenproblem, top-k eigenvectors, held-out energy) relative to B (+ H
held-out) plain forward + backward passes on the same batches, and peak memory
growth relative to B x n_params x 4 bytes. Then the part of it that reads the
dashboard's companions from the same gradients: the centred spectrum, the
gradient SNR, the split-half noise floors, and the per-group and per-head Gram
matrices basis-free Stream 2 compares (no extra backward pass), as a share of
the whole checkpoint.

Usage: python benchmarks/geometry.py [--batches 64] [--heldout 16] [--chunk N]
Run it in its own process: peak memory is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import machine, paper_model, peak_rss_mib, plain_passes, random_batches, timer

from interp_ext.geometry import measure_checkpoint, per_batch_gradients, spectral
from interp_ext.geometry.dashboard import companion_metrics, gram_blocks, select_params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=64)
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved repetitions (the ratio is taken within each round)",
    )
    p.add_argument(
        "--chunk", type=int, default=None, help="batches per vmap (default: automatic, 1 on CPU)"
    )
    args = p.parse_args()
    model = paper_model()
    n_params = sum(q.numel() for q in model.parameters())
    lm, held = random_batches(args.batches), random_batches(args.heldout, seed=1)
    plain_passes(model, lm[:1])  # warm-up
    base_rss = peak_rss_mib()
    print(f"machine: {machine()}")
    print(
        f"paper preset: {n_params:,} parameters, B = {args.batches}, held-out H = {args.heldout} (SPEC section 4), vmap chunk {args.chunk or 'automatic (1 on CPU)'}"
    )
    ratios, ratios_same, ratios_g = [], [], []
    for r in range(args.rounds):
        with timer() as t_geo:
            metrics = measure_checkpoint(model, lm, k=4, heldout=held, chunk=args.chunk)
        if r == 0:
            geo_rss = peak_rss_mib()
        t_plain = plain_passes(model, lm)
        t_plain_held = plain_passes(model, held)
        with timer() as t_g:
            measure_checkpoint(model, lm, k=4, heldout=None, chunk=args.chunk)
        ratios.append(t_geo.seconds / t_plain)
        ratios_same.append(t_geo.seconds / (t_plain + t_plain_held))
        ratios_g.append(t_g.seconds / t_plain)
        print(
            f"round {r + 1}: measure_checkpoint {t_geo.seconds:.1f} s; B plain fwd+bwd {t_plain:.1f} s; H plain {t_plain_held:.1f} s -> "
            f"{ratios[-1]:.2f}x B passes, {ratios_same[-1]:.2f}x B + H passes (same number of gradients); "
            f"without held-out batches {t_g.seconds:.1f} s -> {ratios_g[-1]:.2f}x B passes"
        )
    g_bytes = args.batches * n_params * 4 / 2**20
    print(
        f"time: median {statistics.median(ratios):.2f}x B plain passes; {statistics.median(ratios_same):.2f}x the B + H passes it needs (floor {(args.batches + args.heldout) / args.batches:.2f}x)"
    )
    print(f"G alone (no held-out energy): median {statistics.median(ratios_g):.2f}x B plain passes")
    print(
        f"peak RSS growth: {geo_rss - base_rss:.0f} MiB vs B x n_params x 4 bytes = {g_bytes:.0f} MiB -> {(geo_rss - base_rss) / g_bytes:.2f}x"
    )
    print("metrics:", {k: round(v, 4) for k, v in metrics.items()})
    grads = per_batch_gradients(model, lm, chunk=args.chunk)
    raw = spectral.gram(grads)
    blocks = gram_blocks(model, select_params(model, "all"))
    with timer() as t_comp:
        companion_metrics(grads, raw, None, 4, False)
    with timer() as t_grams:
        spectral.block_grams(grads, blocks)
    added = t_comp.seconds + t_grams.seconds
    print(
        f"companions from the same gradients: centred spectrum, SNR and split-half floors {t_comp.seconds:.2f} s; "
        f"{len(blocks)} Gram matrices (groups, layers, heads) {t_grams.seconds:.2f} s -> {added:.2f} s = "
        f"{100 * added / t_geo.seconds:.1f}% of one checkpoint's geometry ({t_geo.seconds:.1f} s, all included)"
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
