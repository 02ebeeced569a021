"""Cost of the LLC per checkpoint, relative to one gradient over the probe set.

On a trained run: seconds for the whole-model LLC at the given settings (devinterp's
SGLD: chains x (burn-in + draws) steps of a batch each, plus the initial loss),
against one per-batch gradient over the probe set (1 GE), on a middle
checkpoint of the first seed; medians over repeats.

With ``--calibration FILE`` (a plateau calibration the llc family saved under
``<run>/calibration/``): the whole model at the step size it chose, its chains as long as
the calibration's settings make them, and the one-off cost of the calibration itself (every
SGLD step of its sweep, at the measured seconds per step), in GE.

Usage: python benchmarks/llc.py RUN [--lr 1e-4] [--localization 100] [--draws 150] [--burnin 50]
       [--sampler sgld] [--sampling-time 0] [--drift-trace batch|paired] [--calibration FILE]
       [--repeats 3]

``--drift-trace paired`` also pairs each step's minibatch with its loss at the checkpoint (the
trace criterion's paired trace); the difference of the two timings is that pairing's cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from _common import machine, middle_checkpoint

from interp_ext import diskio, open_run
from interp_ext.families.llc import LLCSettings, llc_data
from interp_ext.geometry.learning_coefficient import chain_length, estimate
from interp_ext.stream3.energy import model_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--localization", type=float, default=100.0)
    parser.add_argument("--draws", type=int, default=150)
    parser.add_argument("--burnin", type=int, default=50)
    parser.add_argument("--sampler", default="sgld")
    parser.add_argument("--sampling-time", type=float, default=0.0)
    parser.add_argument("--drift-trace", default="batch")
    parser.add_argument("--calibration", default="")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = open_run(args.run)
    seed, step, model = middle_checkpoint(run)
    settings = LLCSettings(
        lr=args.lr,
        localization=args.localization,
        num_draws=args.draws,
        num_burnin_steps=args.burnin,
        sampler=args.sampler,
        sampling_time=args.sampling_time,
        drift_trace=args.drift_trace,
    )
    cal = diskio.read_json(args.calibration, "an LLC calibration") if args.calibration else None
    if cal is not None:
        asked = run.measurements()
        asked = {r.id: r.settings for r in asked.itertuples()}
        chosen = LLCSettings.from_dict(asked[cal["chosen_id"]])
        settings = LLCSettings(
            **{
                k: getattr(chosen, k)
                for k in (
                    "lr",
                    "localization",
                    "num_chains",
                    "num_draws",
                    "num_burnin_steps",
                    "batch_size",
                    "sampler",
                    "sampling_time",
                    "n_sequences",
                )
            },
            drift_trace=args.drift_trace,
        )
    data = llc_data(run, seed, settings)
    lm = run.probe_set()["lm"]
    chunk = 4 if model.cfg.d_vocab <= 4096 else 1
    ge = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        _ = model_probe(model, lm, chunk).grads
        ge.append(time.perf_counter() - start)
    llc = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = estimate(model, data, None, settings)
        llc.append(time.perf_counter() - start)
    g, t = statistics.median(ge), statistics.median(llc)
    draws, burnin = chain_length(settings)
    steps = settings.num_chains * (burnin + draws)
    print(f"machine: {machine()}")
    print(
        f"run {run.path.name}, seed {seed}, step {step}; {settings.sampler} at step size {settings.lr:g}, {settings.drift_trace} drift trace: {settings.num_chains} chains x ({burnin} burn-in + {draws} draws) = {steps} SGLD steps of {settings.batch_size} sequences"
    )
    print(
        f"whole-model LLC {t:.2f} s = {t / g:.1f} GE (1 GE = {g * 1e3:.0f} ms: per-batch gradients over the {lm.shape[0]} x {lm.shape[1]} probe set); estimate {result['llc']:.2f} +- {result['llc_std']:.2f}"
    )
    if cal is not None:
        per_step = t / steps
        swept = 0
        for trials in cal["sweep"].values():
            for trial in trials:
                d, b = chain_length(replace(settings, lr=trial["lr"]))
                swept += len(trial["llc"]) * settings.num_chains * (d + b)
        print(
            f"the calibration (once per settings): {swept:,} SGLD steps over {len(cal['sweep'])} component(s) and {len(cal['probes'])} checkpoints = about {swept * per_step:.0f} s = {swept * per_step / g:.0f} GE"
        )


if __name__ == "__main__":
    main()
