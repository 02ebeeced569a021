"""Cost of one sharpness estimate, in gradient-equivalents.

On a trained run: one gradient of the mean loss over the family's probe batches (1 GE), one
Hessian-vector product over the same batches, and the family's whole measurement at one
checkpoint (lambda_1(H) and lambda_1(P^-1 H), for the model and, with --circuit, the circuit's
block), on a middle checkpoint of the first seed; medians over repeats.

Usage: python benchmarks/sharpness.py RUN [--batches 4] [--tol 1e-3] [--circuit L1H0,L1H1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import machine, middle_checkpoint
from torch.func import grad

from interp_ext import open_run
from interp_ext.families.sharpness import SharpnessSettings, measure_point
from interp_ext.geometry.curvature import HessianOperator
from interp_ext.geometry.gradients import current_params, loss_function
from interp_ext.measurement.selection import circuit_from_spec


def median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--circuit", default="")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = open_run(args.run)
    seed, step, model = middle_checkpoint(run)
    names = [n for n, _ in model.named_parameters()]
    theta = current_params(model, names)
    batches = run.probe_set()["lm"][: args.batches]
    loss = loss_function(model, names)
    tokens = batches.flatten(0, 1)
    g = median(lambda: grad(loss)(theta, tokens), args.repeats)
    op = HessianOperator(loss, theta, batches)
    v = torch.randn(op.n)
    h = median(lambda: op.hvp(v), args.repeats)
    settings = SharpnessSettings(n_batches=args.batches, tol=args.tol)
    circuit = circuit_from_spec(args.circuit, model) if args.circuit else None
    ckpt = run.checkpoint(seed, step)
    rows = None

    def point():
        nonlocal rows
        rows = measure_point(
            model, run, settings, circuit, ckpt["exp_avg_sq"], float(ckpt["adam_step"])
        )

    t = median(point, args.repeats)
    calls = int(rows[rows.metric == "hvp_calls"].value.iloc[0])
    print(f"machine: {machine()}")
    print(
        f"run {run.config.preset}, seed {seed}, step {step}; loss over {args.batches} probe batches of "
        f"{batches.shape[1]} x {batches.shape[2]} tokens; {op.n:,} parameters"
    )
    print(
        f"1 GE (one gradient) {g * 1e3:.1f} ms; one Hessian-vector product {h * 1e3:.1f} ms = {h / g:.2f} GE"
    )
    what = "model and circuit block" if circuit else "model"
    print(
        f"one checkpoint ({what}: lambda_1(H), lambda_1(P^-1 H), tol {args.tol:g}): {t:.2f} s = {t / g:.0f} GE, "
        f"{calls} Hessian-vector products"
    )
    ratio = rows[(rows.metric == "precond_edge_ratio") & (rows.component == "")].value.iloc[0]
    print(f"lambda_1(P^-1 H) / edge at this checkpoint: {ratio:.3g}")


if __name__ == "__main__":
    main()
