"""Warm-started vs independent SAEs across a run's checkpoints: cost, quality, and features that persist.

On one seed of a trained run, the ``sae`` family with fresh SAEs per checkpoint
(8 epochs) and with each SAE started from the previous checkpoint's (``warm_start``,
8 and 2 epochs). Reported per variant: seconds per checkpoint, mean explained
variance and CE loss recovered, the share of features whose decoder direction
persists to the next checkpoint (best decoder cosine > 0.9), and the lineage's
persisted share.

Usage: python benchmarks/sae_warm_start.py RUN [--hook blocks.0.hook_resid_post] [--every 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

from _common import machine

from interp_ext import measure, open_run
from interp_ext.families import SAETrackingSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--hook", default="blocks.0.hook_resid_post")
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    run = open_run(args.run)
    steps = run.steps[:: args.every]
    print(f"machine: {machine()}")
    print(
        f"run {run.path.name} (preset {run.config.preset}), seed {args.seed}, {len(steps)} checkpoints {steps[0]}..{steps[-1]}, hook {args.hook}, width {args.width}"
    )
    print(
        f"{'variant':>22} | s / checkpoint | explained var | CE recovered | decoder persists | lineage persisted"
    )
    for label, warm, epochs in (
        ("independent, 8 epochs", False, 8),
        ("warm start, 8 epochs", True, 8),
        ("warm start, 2 epochs", True, 2),
    ):
        settings = SAETrackingSettings(
            hook=args.hook, width=args.width, k=8, epochs=epochs, warm_start=warm, n_tokens=16_384
        )
        start = time.perf_counter()
        rows = measure(run, settings, seeds=[args.seed], steps=steps, progress=False)
        seconds = (time.perf_counter() - start) / len(steps)
        per = rows[rows.seed == args.seed].groupby("metric").value.mean()
        persisted = per.get("n_persisted", float("nan")) / args.width
        print(
            f"{label:>22} | {seconds:>14.1f} | {per['explained_variance']:>13.3f} | {per['ce_recovered']:>12.3f} | "
            f"{per.get('decoder_match_share', float('nan')):>16.3f} | {persisted:>17.3f}"
        )


if __name__ == "__main__":
    main()
