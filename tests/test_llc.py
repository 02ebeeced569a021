"""The LLC family: devinterp's estimator on models whose learning coefficient is known, then on a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

N = 10_000


class Toy(torch.nn.Module):
    """y = w1 x1 + w2 x2 (regular: lambda = d / 2 = 1) or y = w1 x1 + w2^2 x2 (degenerate: K ~ w1^2 + w2^4,
    lambda = 1/2 + 1/4 = 3/4, multiplicity 1), the true w = 0."""

    def __init__(self, degenerate: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.degenerate = degenerate

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.stack([self.w[0], self.w[1] ** 2]) if self.degenerate else self.w
        return x @ w


def toy_llc(degenerate: bool) -> float:
    from datasets import Dataset
    from devinterp.slt.llc import llc

    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(N, 2, generator=gen),
        torch.randn(N, generator=gen),
    )  # y is pure noise: w = 0 is true

    def loss_fn(model, input_ids):
        idx = input_ids[:, 0]
        return (0.5 * (y[idx] - model.predict(x[idx])) ** 2)[
            :, None
        ]  # Gaussian negative log-likelihood per sample

    data = Dataset.from_dict({"input_ids": [[i, i] for i in range(N)]}).with_format("torch")
    res = llc(
        Toy(degenerate),
        data,
        {},
        lr=2e-4,
        n_beta=N / math.log(N),
        localization=1.0,
        loss_fn=loss_fn,
        num_chains=4,
        num_draws=600,
        num_burnin_steps=200,
        batch_size=512,
        init_seed=0,
        device="cpu",
    )
    return float(res.llc_mean)


def test_estimator_recovers_known_learning_coefficients():
    regular, degenerate = toy_llc(False), toy_llc(True)
    assert regular == pytest.approx(1.0, abs=0.25), regular  # d / 2 for d = 2
    assert degenerate == pytest.approx(0.75, abs=0.15), degenerate
    assert degenerate < regular


def test_llc_rows_on_a_run(micro_run):
    from interp_ext import measure
    from interp_ext.families.llc import LLCSettings
    from interp_ext.runner import MeasureError

    settings = LLCSettings(
        num_chains=2,
        num_draws=8,
        num_burnin_steps=2,
        batch_size=4,
        n_sequences=8,
        circuit="L1H0,L0H1",
    )
    rows = measure(micro_run, settings, steps=[0, 6], progress=False)
    per = rows[rows.seed >= 0]
    assert {"model", "circuit", "rest", "L0H0", "L1H1"} <= set(per[per.metric == "llc"].component)
    assert {"llc", "llc_std", "trace_drift", "diverged", "init_loss", "llc_chain"} <= set(
        per.metric
    )
    assert (per[per.metric == "diverged"].value.isin([0.0, 1.0])).all()
    assert np.isfinite(per[(per.metric == "llc") & (per.component == "model")].value).all()
    with pytest.raises(MeasureError, match="components"):
        LLCSettings(components="model,nothing")
    with pytest.raises(MeasureError, match="layers 0..1"):
        measure(micro_run, LLCSettings(circuit="L5H0", components="circuit"), progress=False)


def test_a_diverging_setting_is_marked_and_the_rest_continues(micro_run, caplog):
    from interp_ext import measure
    from interp_ext.families.llc import LLCSettings

    settings = LLCSettings(
        lr=1e3,
        num_chains=1,
        num_draws=6,
        num_burnin_steps=1,
        batch_size=4,
        n_sequences=8,
        components="model",
    )
    with caplog.at_level("WARNING", logger="interp_ext"):
        rows = measure(micro_run, settings, steps=[6], progress=False)
    assert "lower --lr" in caplog.text and "step 6" in caplog.text
    per = rows[(rows.seed >= 0) & (rows.component == "model")].set_index(["seed", "metric"]).value
    assert per[(0, "diverged")] == 1.0 and math.isnan(per[(0, "llc")])
