"""Cost of one measured step of the exact Stream 3 ledger (the ``work`` family), in gradient-equivalents.

1 gradient-equivalent (GE) = one per-batch gradient over the probe set (B batches, the family's
own chunking). A measured step costs: the real step (the replay), the mean gradient of M fresh
training batches feeding the shadow moment (paid at every replayed step, measured or not),
per-batch gradients at theta_tau and theta_{tau+1} (the energies, hence dE), and at each of the
two Gauss-Legendre nodes per-batch gradients plus one forward-over-reverse pass with every
tracked set's tangent vmapped (grad E_A for all sets at once). A detail step adds per-batch
gradients at theta +- d_drift and theta +- d_noise (the curvature terms).

Runs on a freshly trained tiny-preset run (the study's model; 12 steps) in a temporary folder;
timings are medians over repeats in one process.

Usage: python benchmarks/work.py [--preset tiny] [--repeats 5] [--drift-batches 16]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from _common import machine, peak_rss_mib, replay_setup
from _common import median_time as timed

from circuits import Circuit
from interp_ext.families.work import step_work
from interp_ext.measurement.replays import mean_gradient, tracked_sets
from interp_ext.stream3.line_integrals import random_draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--drift-batches", type=int, default=16)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--detail-every", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, replay, loss_fn, batches, probe_at, theta0 = replay_setup(args.preset, tmp)
        base = peak_rss_mib()
        names = replay.names
        circuit = Circuit("c", ["L1H0", "L0H1"])
        partition, sets = tracked_sets(run, 0, circuit, 2, replay.model)
        ge, _ = timed(lambda: probe_at(theta0).grads, args.repeats)
        step_time, step = timed(replay.take, 1)
        drift_time, g_bar = timed(
            lambda: mean_gradient(run, 0, step.step, step.theta, loss_fn, args.drift_batches),
            args.repeats,
        )
        shadow = {h: {n: m.double() for n, m in replay.moments().items()} for h in "AB"}
        gen = torch.Generator().manual_seed(0)
        nulls = {k: random_draw(sets["C"], gen) for k in ("real", "drift")}
        terms = [names, probe_at, partition, sets]
        cfg_t = run.config.train

        def measured(rule: str, detail: bool):
            return step_work(step, shadow, cfg_t, *terms, rule, detail, nulls)

        costs = {
            rule: (
                timed(lambda r=rule: measured(r, False), args.repeats)[0],
                timed(lambda r=rule: measured(r, True), max(2, args.repeats // 2))[0],
            )
            for rule in ("midpoint", "gl2")
        }
        peak = peak_rss_mib()
    share = args.every / args.detail_every
    per_real_step = step_time + drift_time
    print(f"machine: {machine()}")
    print(
        f"{args.preset} preset, B = {batches.shape[0]} probe batches of {batches.shape[1]}, "
        f"M = {args.drift_batches}, circuit of 2 heads, {len(sets)} tracked sets"
    )
    print(f"1 GE (per-batch gradients over the probe set): {ge * 1e3:.0f} ms")
    print(
        f"real step {step_time / ge:.2f} GE; shadow-moment mean gradient {drift_time / ge:.2f} GE "
        "(paid at every replayed step)"
    )
    for rule, (plain, detail) in costs.items():
        one = per_real_step + plain
        amortised = per_real_step * args.every + (1 - share) * plain + share * detail
        print(
            f"{rule}: work terms {plain / ge:.2f} GE, a detail step's {detail / ge:.2f} GE; "
            f"one measured step {one / ge:.2f} GE ({one:.2f} s); per measured step with every = "
            f"{args.every}, detail_every = {args.detail_every} (replayed steps in between "
            f"included) {amortised / ge:.2f} GE ({amortised:.2f} s)"
        )
    print(f"peak RSS growth: {peak - base:.0f} MiB")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
