"""The notebook API: model-level functions on a plain HookedTransformer, no run directory."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from circuits.induction import check_repeated
from interp_ext import api


@pytest.fixture(scope="module")
def model(micro_run):
    return micro_run.model(0, 6)


def test_repeated_batch_and_induction_scores(model):
    tokens = api.repeated_batch(model, n=6, seed=1)
    half = (model.cfg.n_ctx - 1) // 2
    assert tokens.shape == (6, 1 + 2 * half) and check_repeated(tokens) == half
    assert torch.equal(tokens, api.repeated_batch(model, n=6, seed=1))
    scores = api.induction_scores(model, tokens)
    assert isinstance(scores, pd.DataFrame) and len(scores) > 0


def test_optimizer_update_is_the_real_step_and_leaves_model_and_optimizer_alone(model, micro_run):
    batch = micro_run.probe_set()["lm"][0]
    real = copy.deepcopy(model)
    opt = torch.optim.AdamW(real.parameters(), lr=1e-2, weight_decay=0.01)
    real(batch, return_type="loss").backward()  # one step first, so the state is not empty
    opt.step()
    opt.zero_grad()
    before = {n: p.detach().clone() for n, p in real.named_parameters()}
    state = copy.deepcopy(opt.state_dict())
    update = api.optimizer_update(real, opt, batch)
    for n, p in real.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    assert opt.state_dict()["state"].keys() == state["state"].keys()
    real(batch, return_type="loss").backward()
    opt.step()
    for n, p in real.named_parameters():
        torch.testing.assert_close(update[n], p.detach() - before[n], rtol=0, atol=0, msg=n)


def test_stream3_matrix_along_an_optimizer_equals_the_component_matrix(model, micro_run):
    from interp_ext.stream3.energy import component_matrix

    batches, batch = micro_run.probe_set()["lm"][:2], micro_run.probe_set()["lm"][2]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    update = api.optimizer_update(model, opt, batch)
    expected = component_matrix(model, batches, ["L1H0", "L0H1"], "optimizer", update, True)
    actual = api.stream3_matrix(model, batches, ["L1H0", "L0H1"], optimizer=opt, batch=batch)
    pd.testing.assert_frame_equal(actual, expected)
    sgd = api.stream3_matrix(model, batches, ["L1H0", "L0H1"])
    assert set(sgd.A) == {"L1H0", "L0H1", "rest"}
    with pytest.raises(ValueError, match="batch="):
        api.stream3_matrix(model, batches, ["L1H0"], optimizer=opt)


def test_llc_estimate_on_a_model_and_tokens(model, micro_run):
    tokens = micro_run.probe_set()["lm"].reshape(-1, model.cfg.n_ctx)[:8]
    kw = dict(num_chains=2, num_draws=6, num_burnin_steps=2, batch_size=4, lr=1e-4)
    whole = api.llc_estimate(model, tokens, **kw)
    head = api.llc_estimate(model, tokens, heads=["L1H0"], **kw)
    for result in (whole, head):
        assert np.isfinite(result["llc"]) and len(result["chains"]) == 2


def test_dashboard_and_discovery(model, micro_run):
    batches = micro_run.probe_set()["lm"]
    metrics = api.gradient_dashboard(model, batches, k=2)
    assert 1 <= metrics["effective_rank"] <= batches.shape[0]
    found = api.discover_circuit(model, api.repeated_batch(model, n=8))
    assert len(found.circuit.components) >= 1


def test_the_tutorial_run_never_takes_a_fast_run_for_a_full_one(tmp_path, monkeypatch):
    """A finished fast-mode tutorial run is not opened as the full run (and back), whatever
    the working folder; the default folder is the repository's runs/tutorial."""
    from interp_ext import api

    monkeypatch.chdir(tmp_path)
    assert api.default_tutorial_folder().parts[-2:] == ("runs", "tutorial")
    assert (api.default_tutorial_folder().parents[1] / "pyproject.toml").exists()
    out = tmp_path / "tut"
    from interp_ext.config import get_preset, override
    from interp_ext.training import train

    cfg = override(
        get_preset("tiny"),
        data__corpus="synthetic",
        train__steps=4,
        train__checkpoint_every=2,
        train__n_seeds=1,
        model__d_model=16,
    )
    train(cfg, out, progress=False)
    with pytest.raises(ValueError, match="fast-mode tutorial run"):
        api.tutorial_run(str(out), fast=False, progress=False)
