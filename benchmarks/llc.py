"""Cost of the LLC per checkpoint, relative to one gradient over the probe set.

On a trained run: seconds for the whole-model LLC at the given settings (devinterp's
SGLD: chains x (burn-in + draws) steps of a batch each, plus the initial loss),
against one per-batch gradient over the probe set (1 GE), on a middle
checkpoint of the first seed; medians over repeats.

Usage: python benchmarks/llc.py RUN [--lr 1e-4] [--localization 100] [--draws 150] [--burnin 50]
       [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import machine, middle_checkpoint

from interp_ext import open_run
from interp_ext.families.llc import LLCSettings, estimate, llc_data
from interp_ext.stream3.energy import model_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--localization", type=float, default=100.0)
    parser.add_argument("--draws", type=int, default=150)
    parser.add_argument("--burnin", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = open_run(args.run)
    seed, step, model = middle_checkpoint(run)
    settings = LLCSettings(
        lr=args.lr,
        localization=args.localization,
        num_draws=args.draws,
        num_burnin_steps=args.burnin,
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
    steps = settings.num_chains * (settings.num_burnin_steps + settings.num_draws)
    print(f"machine: {machine()}")
    print(
        f"run {run.path.name}, seed {seed}, step {step}; {settings.num_chains} chains x ({settings.num_burnin_steps} burn-in + {settings.num_draws} draws) = {steps} SGLD steps of {settings.batch_size} sequences"
    )
    print(
        f"whole-model LLC {t:.2f} s = {t / g:.1f} GE (1 GE = {g * 1e3:.0f} ms: per-batch gradients over the {lm.shape[0]} x {lm.shape[1]} probe set); estimate {result['llc']:.2f} +- {result['llc_std']:.2f}"
    )


if __name__ == "__main__":
    main()
