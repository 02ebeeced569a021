"""Write ``tiny_study.safetensors``: the tiny study's 8 seeds at their last checkpoint (float16) and its repeated probe.

Run from the repository root on a finished ``interp-ext study`` run:
``python tests/circuits/data/make_tiny_study.py runs/study``. The expected circuits in
``tests/circuits/test_discovery_regression.py`` are that run's ``circuit`` rows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from interp_ext.measurement.probes import repeated_probe
from interp_ext.run import open_run


def main(run_dir: str) -> None:
    run = open_run(run_dir)
    tensors = {"repeated": repeated_probe(run).contiguous()}
    for seed in run.seeds:
        model = run.model(seed, run.steps_for(seed)[-1])
        for name, param in model.named_parameters():
            # float16 keeps the fixture under 2 MB; the test loads it back as float32
            tensors[f"seed{seed}/{name}"] = param.detach().half().contiguous()
    meta = {"model": json.dumps(dataclasses.asdict(run.config.model)), "d_vocab": str(run.d_vocab)}
    save_file(tensors, Path(__file__).with_name("tiny_study.safetensors"), metadata=meta)


if __name__ == "__main__":
    main(sys.argv[1])
