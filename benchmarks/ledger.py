"""Cost of one measured step of the Stream 3 ledger, in gradient-equivalents.

1 gradient-equivalent (GE) = one per-batch gradient over the probe set (B
batches, the ledger's own chunking). A measured step costs: the real step (the
replay), the mean gradient of M fresh training batches (the drift update),
per-batch gradients at theta_tau and theta_{tau+1}, and one forward-over-reverse
pass per chunk of probe batches with the circuit's tangent vmapped (grad E_C); a
detail step adds grad E for every component and control, the mean-gradient
tangent, per-batch gradients at theta_tau - dtheta and the dense K dot products.

Runs on a freshly trained tiny-preset run (the study's model; 12 steps) in a
temporary folder; timings are medians over repeats in one process.

Usage: python benchmarks/ledger.py [--preset tiny] [--repeats 5] [--drift-batches 16]
"""

from __future__ import annotations

import argparse
import resource
import tempfile

import torch
from _common import machine, replay_setup
from _common import median_time as timed

from circuits import Circuit
from interp_ext.families.ledger import LedgerSettings, ledger_spec
from interp_ext.measurement.stream3 import mean_gradient
from interp_ext.stream3.split import StepInputs, measure_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--drift-batches", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, replay, loss_fn, batches, probe_at, theta0 = replay_setup(args.preset, tmp)
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        model = replay.model
        circuit = Circuit("c", ["L1H0", "L0H1"])
        spec = ledger_spec(run, 0, circuit, LedgerSettings(circuit="L1H0,L0H1"), model)
        ge, _ = timed(lambda: probe_at(theta0).grads, args.repeats)
        step_time, step = timed(replay.take, 1)
        drift_time, drift = timed(
            lambda: mean_gradient(run, 0, step.step, step.theta, loss_fn, args.drift_batches),
            args.repeats,
        )
        inputs = StepInputs(step, drift, run.config.train)
        plain, _ = timed(
            lambda: measure_step(inputs, spec, probe_at, None, detail=False), args.repeats
        )
        detail, _ = timed(
            lambda: measure_step(inputs, spec, probe_at, None, detail=True),
            max(2, args.repeats // 2),
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    every, detail_every = 5, 50
    n_detail = every / detail_every
    measured = step_time + drift_time + plain
    amortised = step_time * every + drift_time + (1 - n_detail) * plain + n_detail * detail
    print(f"machine: {machine()}")
    print(
        f"{args.preset} preset, B = {batches.shape[0]} probe batches of {batches.shape[1]}, M = {args.drift_batches} drift batches, circuit of 2 heads + rest, {len(spec.energies)} tracked sets"
    )
    print(f"1 GE (per-batch gradients over the probe set): {ge * 1e3:.0f} ms")
    print(
        f"real step (replay) {step_time / ge:.2f} GE; drift gradient {drift_time / ge:.2f} GE; ledger terms {plain / ge:.2f} GE; detail step's terms {detail / ge:.2f} GE"
    )
    print(
        f"one measured step: {measured / ge:.2f} GE ({measured:.2f} s); a detail step {(step_time + drift_time + detail) / ge:.2f} GE"
    )
    print(
        f"per measured step with every = {every}, detail_every = {detail_every} (the replayed steps in between included): {amortised / ge:.2f} GE ({amortised:.2f} s)"
    )
    print(f"peak RSS growth: {peak - base_rss:.0f} MiB")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
