"""Cost of the member matrix at one checkpoint (the ``members`` family), in gradient-equivalents.

1 gradient-equivalent (GE) = one per-batch gradient over the run's probe set (16 batches of 8 at
the tiny preset). The member matrix at one probe batch size costs per-batch gradients over its
probe sequences plus one forward-over-reverse pass with two tangents per row set (grad E_A and
2 Hbar P_A gbar), and the flow direction's fresh batch gradients; the family measures it at each
probe size (8 and 32 sequences by default, on the same 256 sequences).

Runs on a freshly trained tiny-preset run (12 steps) in a temporary folder; the circuit is 4
heads (2 per layer) with one layer-matched control head each: 8 row sets, S, N and E.

Usage: python benchmarks/members.py [--preset tiny] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from _common import machine, peak_rss_mib, replay_setup
from _common import median_time as timed

from circuits import Circuit
from interp_ext.adamw import denominators
from interp_ext.data import FRESH_DRAWS, PROBE_DRAWS
from interp_ext.families.members import MembersSettings, probe_sequences, saddle_rows
from interp_ext.stream3.reinforcement import member_matrix

MEMBERS = ["L1H0", "L1H1", "L0H0", "L0H1"]
CONTROLS = ["L1H2", "L1H3", "L0H2", "L0H3"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--fresh", type=int, default=16)
    parser.add_argument("--groups", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, replay, loss_fn, batches, probe_at, theta0 = replay_setup(args.preset, tmp)
        base = peak_rss_mib()
        step = replay.step
        model = replay.model
        ge, _ = timed(lambda: probe_at(theta0).grads, args.repeats)
        ckpt = run.checkpoint(0, step)
        d = denominators(ckpt["exp_avg_sq"], float(ckpt["adam_step"]), run.config.train.betas[1])
        seqs = probe_sequences(run, 0, step, args.sequences, PROBE_DRAWS)
        fresh = torch.stack([run.batch(0, step, draw=FRESH_DRAWS + j) for j in range(args.fresh)])
        sets = {h: [h] for h in MEMBERS + CONTROLS}
        unions = {"C": MEMBERS, "CTRL": CONTROLS}
        costs = {}
        for size in (8, 32):
            probe = seqs.reshape(-1, size, seqs.shape[-1])
            costs[size], _ = timed(
                lambda p=probe, size=size: member_matrix(
                    model,
                    p,
                    fresh,
                    sets,
                    d,
                    run.config.train.weight_decay,
                    args.groups,
                    unions,
                    chunk=max(1, 32 // size),
                ),
                args.repeats,
            )
        circuit = Circuit("c", MEMBERS)
        settings = MembersSettings(
            circuit="L1H0,L1H1,L0H0,L0H1", sequences=args.sequences, fresh=args.fresh
        )
        saddle_time, saddle = timed(
            lambda: saddle_rows(model, settings, circuit, d, seqs, fresh, 4), args.repeats
        )
        hvps = next(r["value"] for r in saddle if r["metric"] == "saddle_hvps")
        hvp_time = saddle_time / hvps
        peak = peak_rss_mib()
    print(f"machine: {machine()}")
    print(
        f"{args.preset} preset; 1 GE (per-batch gradients over the probe set, {batches.shape[0]} "
        f"batches of {batches.shape[1]}): {ge * 1e3:.0f} ms"
    )
    print(
        f"member matrix, 8 row sets x S/N/E, {args.sequences} probe sequences, {args.fresh} fresh "
        f"batches of {run.config.train.batch_size}, {args.groups} groups:"
    )
    for size, seconds in costs.items():
        print(f"  probe batches of {size}: {seconds:.2f} s = {seconds / ge:.1f} GE")
    total = sum(costs.values())
    print(f"both sizes: {total:.2f} s = {total / ge:.1f} GE")
    print(
        f"saddle signature (rho of C and 4 members, 3 soft modes of C): {hvps:.0f} Hessian-vector "
        f"products of the first {settings.saddle_sequences} sequences' mean loss, {saddle_time:.2f} s = "
        f"{saddle_time / ge:.1f} GE ({hvp_time * 1e3:.0f} ms each)"
    )
    print(f"peak RSS growth: {peak - base:.0f} MiB")


if __name__ == "__main__":
    main()
