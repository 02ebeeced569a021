"""Every ``interp-ext measure`` command on one run, in one process (or one per rank under torchrun).

Used by the distributed test: ``torchrun --nproc-per-node 2 tests/integration/measure_all.py RUN``
must write the same metrics as ``python tests/integration/measure_all.py RUN``.
"""

from __future__ import annotations

import sys

COMMANDS = [
    ["measure", "induction", "{run}", "--quiet"],
    ["measure", "circuit", "{run}", "--quiet"],
    ["measure", "patching", "{run}", "--quiet"],
    ["measure", "geometry", "{run}", "--batches", "4", "--k", "2", "--lag", "2", "--quiet"],
    ["measure", "stream2", "{run}", "--batches", "4", "--quiet"],
    ["measure", "beta", "{run}", "--quiet"],
    [
        "measure",
        "autocatalysis",
        "{run}",
        "--steps",
        "3,6",
        "--rows",
        "2",
        "--controls",
        "1",
        "--batches",
        "2",
        "--quiet",
    ],
    [
        "measure",
        "sae",
        "{run}",
        "--hook",
        "blocks.0.hook_resid_post",
        "--steps",
        "3,6",
        "--width",
        "32",
        "--k",
        "4",
        "--quiet",
    ],
]


def main(run: str) -> None:
    from interp_ext.cli import app

    for command in COMMANDS:
        args = [c.format(run=run) for c in command]
        code = app(args, standalone_mode=False)
        if code:  # a failed command fails the script, whichever rank it ran on
            raise SystemExit(f"{' '.join(args)} exited with {code}")


if __name__ == "__main__":
    main(sys.argv[1])
