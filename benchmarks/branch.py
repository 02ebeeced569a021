"""Cost of a branch's training step with an intervention against the plain training step.

One trainer per variant over the same tiny-preset model and seeds (the embedded corpus, no
recording): ``plain`` (no intervention), ``freeze`` (a head's learning-rate multiplier 0, moments
running), ``freeze+moments`` (its moments held too), ``scale`` (two heads at 0.25) and
``ablate`` (a head's output replaced by its batch mean), ``project`` (a head's update stripped
of what raises another head's signal energy: a double backward on the batch's halves every
step) and ``project-random`` (its control). Single steps of the variants
alternate, so slow drifts of the machine's speed hit all of them alike; the ratios are each
variant's median step time over the plain one's, measured in one run.

Usage: python benchmarks/branch.py [--preset tiny] [--seeds 2] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine

from interp_ext.config import get_preset, override
from interp_ext.interventions import Interventions
from interp_ext.training import StackedTrainer, prepare_run

VARIANTS = {
    "plain": Interventions(),
    "freeze": Interventions(lr_scale={"L0H1": 0.0}),
    "freeze+moments": Interventions(lr_scale={"L0H1": 0.0}, moments="freeze"),
    "scale": Interventions(lr_scale={"L0H1,L1H3": 0.25}),
    "ablate": Interventions(ablate={"L0H1": "mean"}),
    "project": Interventions(project_out={"L0H1": "L1H3"}),
    "project-random": Interventions(project_out={"L0H1": "L1H3"}, project_control="random"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    cfg = override(
        get_preset(args.preset),
        data__corpus="synthetic",
        train__n_seeds=args.seeds,
        record__hooks=[],
    )
    with tempfile.TemporaryDirectory() as tmp:
        data, probe = prepare_run(cfg, Path(tmp) / "run")
        trainers = {
            k: StackedTrainer(cfg, None, data, probe, interventions=v) for k, v in VARIANTS.items()
        }
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for trainer in trainers.values():  # warm-up: AdamW's state exists after the first step
            trainer.train_step()
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(f"machine: {machine()}")
    print(f"{args.preset} preset, {args.seeds} seeds, {args.rounds} alternating rounds")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<16} {med * 1e3:7.1f} ms/step  {med / base:5.2f}x plain")


if __name__ == "__main__":
    main()
