"""The attention-only circuits of the tiny study stay as they were found.

``data/tiny_study.safetensors`` holds the 8 study seeds at step 4,000 (in float16, loaded
back as float32) and the run's repeated probe (written by ``data/make_tiny_study.py``); the expected members are the
study's ``circuit`` rows, found before the search covered MLPs and every subset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from circuits.discovery import discover_induction_circuit
from interp_ext.config import ModelConfig
from interp_ext.models import build_model

DATA = Path(__file__).with_name("data") / "tiny_study.safetensors"

# seed -> members in the order found (induction heads, then the earlier heads), from the study's rows
STUDY_CIRCUITS = {
    0: ["L1H3", "L1H1", "L0H3", "L0H1"],
    1: ["L1H3", "L1H1", "L1H2", "L0H1"],
    2: ["L1H1", "L0H3"],
    3: ["L1H3", "L1H0", "L1H2", "L0H0"],
    4: ["L1H1", "L1H3", "L1H2", "L0H0"],
    5: ["L1H2", "L1H3", "L1H1", "L0H0"],
    6: ["L1H0", "L0H2"],
    7: ["L1H2", "L0H1", "L0H3"],
}


@pytest.fixture(scope="module")
def study():
    with safe_open(DATA, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = ModelConfig(**json.loads(meta["model"]))
    models = {}
    for seed in STUDY_CIRCUITS:
        model = build_model(cfg, int(meta["d_vocab"]), seed=0)
        state = {
            k.split("/", 1)[1]: v.float()
            for k, v in tensors.items()
            if k.startswith(f"seed{seed}/")
        }
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(not k.endswith(("W_Q", "W_K")) for k in missing)
        models[seed] = model
    return models, tensors["repeated"]


@pytest.mark.parametrize("seed", sorted(STUDY_CIRCUITS))
def test_the_tiny_study_circuits_are_found_again(study, seed):
    models, repeated = study
    found = discover_induction_circuit(models[seed], repeated, name=f"cause-seed{seed}")
    assert found.circuit.components == STUDY_CIRCUITS[seed]
    assert not found.fallback and found.mean_set_restoration >= 0.8
    assert found.routes.empty  # attention-only: no route through an MLP
