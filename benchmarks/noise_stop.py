"""What ``--stop-after`` would have saved on noise arms already run to the window's end.

For every noise measurement of a run made without stopping, every recorded arm curve is cut
where :func:`interp_ext.families.noise.has_formed` would have stopped it; the formation step
read from the cut curve is compared with the whole window's, and the steps saved are
weighted by the batches each arm reads per step (noise arms: M + 2, c = 0: M; batch arms:
B / batch size), a proxy for its cost in gradient-equivalents (benchmarks/noise.py).

Usage: python benchmarks/noise_stop.py RUN [--stop-after 50]
"""

from __future__ import annotations

import argparse
import math

from _common import machine

from circuits.induction import formation_step
from interp_ext import open_run
from interp_ext.families.noise import NoiseSettings, has_formed


def batches_per_step(arm, settings: NoiseSettings, batch: int) -> float:
    if arm.is_batch:
        return arm.rows / batch
    return settings.mean_batches + (2 if arm.c else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--stop-after", type=int, default=50)
    args = parser.parse_args()
    run = open_run(args.run)
    print(machine(), f"; run {args.run}, stop_after {args.stop_after}")
    found = run.measurements()
    found = found[found.family == "noise"]
    full = cut = 0.0
    curves = differ = 0
    for r in found.itertuples():
        settings = NoiseSettings.from_dict(r.settings)
        if settings.stop_after:
            continue
        arms = {a.name: a for a in settings.arms()}
        rows = run.metrics("noise", settings=r.id)
        rows = rows[(rows.metric == "induction_score") & (rows.step >= 0)]
        for (seed, name), g in rows.groupby(["seed", "variant"]):
            if name not in arms:
                continue  # the real run is never stopped
            g = g.sort_values("step")
            steps, scores = g.step.to_numpy(), g.value.to_numpy()
            k = next(
                (
                    k
                    for k in range(len(steps))
                    if has_formed(
                        steps[: k + 1], scores[: k + 1], settings.threshold, args.stop_after
                    )
                ),
                len(steps) - 1,
            )
            whole = formation_step(steps, scores) if scores[-1] > settings.threshold else math.nan
            short = (
                formation_step(steps[: k + 1], scores[: k + 1])
                if scores[k] > settings.threshold
                else math.nan
            )
            same = whole == short or (math.isnan(whole) and math.isnan(short))
            cost = batches_per_step(arms[name], settings, run.config.train.batch_size)
            full += cost * (steps[-1] - steps[0])
            cut += cost * (steps[k] - steps[0])
            curves += 1
            differ += not same
            print(
                f"{r.id} seed {seed} {name:11s} formation {whole:7.0f} cut at {steps[k]:5d}: "
                f"{short:7.0f}{'' if same else '  DIFFERS'}"
            )
    print(
        f"{curves} arm curves, {differ} formation steps differ; batches read: {cut / full:.3f} of the whole windows'"
    )


if __name__ == "__main__":
    main()
