"""Cost of the ``noise`` family's arms per replayed step, and per seed over a window.

On a trained run, from a middle checkpoint of the first seed: seconds per step of each
arm (its backward pass over its rows and the AdamW step written out), of the real replay
in lockstep and of building the step's batches, against one real-batch gradient (1 GE);
medians over ``--steps`` steps. The per-seed projection multiplies by the window's length
(``--window``, steps) and adds the record grid (every ``--record-every`` steps: loss,
E_C and the induction score of every arm).

Usage: python benchmarks/noise.py RUN [--steps 5] [--window 1000] [--record-every 50]
       [--mean-batches 16] [--scales 0,1,sqrt2] [--second-moment both] [--batch-sizes 16,32,64,128]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import machine, middle_checkpoint

from circuits.circuit import Circuit
from interp_ext import open_run
from interp_ext.families.noise import NoiseSettings, Recorder
from interp_ext.trajectory import ArmState, Replay, step_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--record-every", type=int, default=50)
    parser.add_argument("--mean-batches", type=int, default=16)
    parser.add_argument("--scales", default="0,1,sqrt2")
    parser.add_argument("--second-moment", default="both")
    parser.add_argument("--batch-sizes", default="16,32,64,128")
    args = parser.parse_args()
    run = open_run(args.run)
    seed, start, _ = middle_checkpoint(run)
    settings = NoiseSettings(
        mean_batches=args.mean_batches,
        scales=args.scales,
        second_moment=args.second_moment,
        batch_sizes=args.batch_sizes,
    )
    batch, m = run.config.train.batch_size, settings.mean_batches
    arms = [ArmState(run, seed, start, a) for a in settings.arms()]
    real = Replay(run, seed, start)
    per = {a.arm.name: [] for a in arms} | {"real replay": [], "batches": []}
    for step in range(start, start + args.steps):
        t = time.perf_counter()
        v_real = real.take().new_exp_avg_sq
        per["real replay"].append(time.perf_counter() - t)
        t = time.perf_counter()
        tokens = step_tokens(run, seed, step, m)
        per["batches"].append(time.perf_counter() - t)
        for a in arms:
            t = time.perf_counter()
            a.take(a.gradient(tokens, batch, m, run.config), v_real)
            per[a.arm.name].append(time.perf_counter() - t)
    ge = statistics.median(per["real replay"])
    circuit = Circuit("probe", ["L1H0", "L0H0"])
    recorder = Recorder(run, arms[0], circuit)
    t = time.perf_counter()
    recorder(start, "probe")
    record = time.perf_counter() - t
    print(f"machine: {machine()}; run {run.path.name}, seed {seed} from step {start}")
    print(f"1 GE (real replay step: one batch of {batch} sequences + AdamW) = {ge * 1000:.1f} ms")
    total = 0.0
    for name, times in per.items():
        sec = statistics.median(times)
        total += sec
        print(f"  {name:14s} {sec * 1000:8.1f} ms/step  {sec / ge:6.1f} GE")
    n_records = args.window // args.record_every + 1
    seed_total = total * args.window + record * n_records * (len(arms) + 1)
    print(
        f"all arms: {total:.2f} s/step ({total / ge:.0f} GE); one record of one arm {record:.2f} s"
    )
    print(
        f"per seed over a {args.window}-step window: {seed_total / 60:.1f} min "
        f"({len(arms)} arms + the real run, records every {args.record_every} steps)"
    )


if __name__ == "__main__":
    main()
