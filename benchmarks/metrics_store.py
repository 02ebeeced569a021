"""Metrics store: appending one checkpoint's rows with 10k and 1M rows already in the run, and reading one family.

Runs are filled with parts of 640 rows (one checkpoint's rows of a family for one
seed: the size of a geometry part at the paper preset) spread over four families
and two settings ids, written through the store's own ``write_part``. Then, in
one process, alternately: appending one more part to the 10k-row run and to the
1M-row run (medians over repeats), and reading one family (a quarter of the rows)
with ``Run.metrics``. For comparison, the single-table layout the store replaced
(read the whole table, append, rewrite it) is timed on the same two sizes.

Usage: python benchmarks/parts.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from _common import timed

from interp_ext import diskio, get_preset
from interp_ext.run import Run, parts

FAMILIES = ("geometry", "induction", "autocatalysis", "sae")
PART_ROWS = 640


def part(
    seed: int, step: int, family: str, settings: str, rng: np.random.Generator
) -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "seed": seed,
            "step": step,
            "metric": [f"m{i % 40}" for i in range(PART_ROWS)],
            "component": [f"c{i // 40}" for i in range(PART_ROWS)],
            "value": rng.normal(size=PART_ROWS),
        }
    )
    return parts.normalise(rows, "bench", family, settings)


def make_run(root: Path, n_rows: int) -> Run:
    """A run directory (config only) whose store holds ``n_rows`` rows."""
    root.mkdir(parents=True)
    diskio.write_json(root / "config.json", get_preset("tiny").payload())
    rng = np.random.default_rng(0)
    n_parts = n_rows // PART_ROWS
    for i in range(n_parts):
        family = FAMILIES[i % len(FAMILIES)]
        settings = f"{family}-{'ab'[(i // len(FAMILIES)) % 2] * 10}"
        seed, step = (i // 8) % 16, (i // 128) * 1000
        parts.write_part(
            root / "metrics",
            family,
            settings,
            parts.unit_name(seed, step + i),
            part(seed, step, family, settings, rng),
        )
    return Run(root)


def old_append(path: Path, rows: pd.DataFrame) -> None:
    """The single-table layout: read the whole table, append, rewrite it."""
    old = pd.read_parquet(path) if path.exists() else rows.iloc[:0]
    pd.concat([old, rows], ignore_index=True).to_parquet(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {n: make_run(tmp / f"run{n}", n) for n in (10_000, 1_000_000)}
        tables = {}
        for n, run in runs.items():
            tables[n] = tmp / f"table{n}.parquet"
            run.metrics(settings="all").to_parquet(tables[n], index=False)
        times: dict[str, list[float]] = {
            k: [] for k in ("append 10k", "append 1M", "old 10k", "old 1M", "read 1M")
        }
        for r in range(args.rounds):
            new = part(0, 10**9 + r, "geometry", "geometry-new0000000", rng)
            unit = parts.unit_name(0, 10**9 + r)
            for n, label in ((10_000, "10k"), (1_000_000, "1M")):
                write = partial(
                    parts.write_part,
                    runs[n].metrics_dir,
                    "geometry",
                    "geometry-new0000000",
                    unit,
                    new,
                )
                times[f"append {label}"].append(timed(write))
                if r < 5:  # the old layout at 1M rows takes seconds per append
                    times[f"old {label}"].append(timed(partial(old_append, tables[n], new)))
            if r < 5:
                times["read 1M"].append(
                    timed(partial(runs[1_000_000].metrics, "geometry", settings="all"))
                )
        med = {k: statistics.median(v) for k, v in times.items()}
        read_rows = len(runs[1_000_000].metrics("geometry", settings="all"))
    print(
        f"parts of {PART_ROWS} rows; {args.rounds} appends per size (5 for the old layout and the read), medians"
    )
    print(
        f"append one part with 10k rows in the run: {1e3 * med['append 10k']:.2f} ms; with 1M rows: {1e3 * med['append 1M']:.2f} ms -> ratio {med['append 1M'] / med['append 10k']:.2f}"
    )
    print(
        f"old single-table append (read, concat, rewrite): 10k rows {1e3 * med['old 10k']:.0f} ms; 1M rows {1e3 * med['old 1M']:.0f} ms -> ratio {med['old 1M'] / med['old 10k']:.1f}"
    )
    print(
        f"read one family ({read_rows:,} of ~1M rows, every settings id) with Run.metrics: {med['read 1M']:.2f} s"
    )


if __name__ == "__main__":
    main()
