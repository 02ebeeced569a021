"""Stream 3 against brute-force Jacobians, finite differences and a toy with known signs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import grad, jacrev, vmap

from circuits import Circuit
from interp_ext.stream3.energy import (
    EnergyProbe,
    component_matrix,
    component_matrix_flat,
    entry_terms,
    model_probe,
    sgd_direction,
)
from tests.geometry.test_geometry import small_model


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = small_model(dtype=torch.float64, attn_only=True)
    batches = torch.randint(0, 11, (5, 3, 6))
    circuit = Circuit("c", ["L1H0", "L0H1"]).with_rest()
    return model, batches, circuit


def diag_g_jacobian(model, batches):
    """d diag(G) / d theta by autograd, [n, n], and the flat theta."""
    probe = model_probe(model, batches)
    flat_theta = probe.flat(probe.theta)

    def diag_g(flat):
        g = vmap(grad(probe.loss_fn), in_dims=(None, 0))(probe.unflat(flat), batches)
        return probe.flat(g, 1).pow(2).mean(0)

    return jacrev(diag_g)(flat_theta), probe


def test_component_matrix_equals_brute_force_jacobian(setup):
    model, batches, circuit = setup
    jac, probe = diag_g_jacobian(model, batches)
    masks = circuit.flat_masks(model)
    torch.manual_seed(1)
    update = {n: 1e-3 * torch.randn_like(p) for n, p in model.named_parameters()}
    for direction in ("sgd", "optimizer"):
        d = sgd_direction(probe) if direction == "sgd" else probe.flat(update)
        actual = component_matrix(
            model, batches, circuit, direction=direction, update=update
        ).set_index(["A", "B"])
        g = probe.grads
        for a, ma in masks.items():
            e_a = float(g[:, ma].pow(2).sum(1).mean())
            for b, mb in masks.items():
                d_b = torch.where(mb, d, torch.zeros_like(d))
                expected = float((jac @ d_b)[ma].sum())
                assert actual.loc[(a, b), "K"] == pytest.approx(expected, rel=1e-6, abs=1e-14), (
                    direction,
                    a,
                    b,
                )
                assert actual.loc[(a, b), "K_norm"] == pytest.approx(
                    expected / (e_a * float(d_b.norm())), rel=1e-6, abs=1e-12
                )


def test_sampled_entries_equal_brute_force(setup):
    model, batches, circuit = setup
    jac, probe = diag_g_jacobian(model, batches)
    mask = Circuit("c", ["L1H0", "L0H1"]).flat_masks(model)
    union = mask["L1H0"] | mask["L0H1"]
    rows = torch.nonzero(union).flatten()[[0, 7, 40]].tolist()
    actual = entry_terms(probe, rows, union).mean(1)
    expected = jac[rows][:, union]
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-14)


def test_hvp_path_agrees_with_central_differences():
    torch.manual_seed(0)
    model = small_model(dtype=torch.float32, attn_only=True)
    batches = torch.randint(0, 11, (4, 3, 6))
    circuit = Circuit("c", ["L1H0", "L0H0"]).with_rest()
    probe = model_probe(model, batches)
    masks = circuit.flat_masks(model)
    d = sgd_direction(probe)
    frame, energies = component_matrix_flat(probe, masks, d)
    frame = frame.set_index(["A", "B"])
    theta = probe.flat(probe.theta).double()
    for b, mb in masks.items():
        d_b = torch.where(mb, d, torch.zeros_like(d)).double()
        eps = 1e-2 / float(d_b.norm())
        plus = EnergyProbe(probe.loss_fn, probe.unflat((theta + eps * d_b).float()), batches)
        minus = EnergyProbe(probe.loss_fn, probe.unflat((theta - eps * d_b).float()), batches)
        for a, ma in masks.items():
            fd = (plus.energy(ma) - minus.energy(ma)) / (2 * eps)
            assert frame.loc[(a, b), "K"] == pytest.approx(
                fd, rel=1e-3, abs=1e-3 * abs(frame.loc[(a, a), "K"])
            ), (a, b)


def test_toy_signs_are_right():
    """a: loss c cos(a) near a=0.3 (concave: descent raises |grad|); b: c' b^4 / 4 (convex: descent lowers it)."""
    coef = torch.tensor([[1.0, 1.0], [1.5, 0.5], [0.7, 1.2]], dtype=torch.float64)
    theta = {
        "a": torch.tensor(0.3, dtype=torch.float64),
        "b": torch.tensor(0.7, dtype=torch.float64),
    }

    def loss(p, c):
        return c[0] * torch.cos(p["a"]) + c[1] * p["b"] ** 4 / 4

    probe = EnergyProbe(loss, theta, coef)
    masks = {"a": torch.tensor([True, False]), "b": torch.tensor([False, True])}
    frame, _ = component_matrix_flat(probe, masks, sgd_direction(probe))
    k = frame.set_index(["A", "B"])["K"]
    a, b, c, c2 = 0.3, 0.7, coef[:, 0].numpy(), coef[:, 1].numpy()
    expected_aa = 2 * np.mean(c**2) * math.sin(a) ** 2 * math.cos(a) * np.mean(c)
    expected_bb = -2 * np.mean(c2**2) * 3 * b**5 * np.mean(c2) * b**3
    assert k[("a", "a")] > 0 and k[("a", "a")] == pytest.approx(expected_aa, rel=1e-10)
    assert k[("b", "b")] < 0 and k[("b", "b")] == pytest.approx(expected_bb, rel=1e-10)
    assert k[("a", "b")] == pytest.approx(0.0, abs=1e-15) and k[("b", "a")] == pytest.approx(
        0.0, abs=1e-15
    )


def test_bad_direction_and_missing_update(setup):
    model, batches, circuit = setup
    with pytest.raises(ValueError, match="update="):
        component_matrix(model, batches, circuit, direction="optimizer")
    with pytest.raises(ValueError, match="'sgd' or 'optimizer'"):
        component_matrix(model, batches, circuit, direction="adam")


def test_whole_circuit_term_is_the_merged_component(setup):
    from interp_ext.stream3.energy import whole_circuit_terms

    model, batches, circuit = setup
    probe = model_probe(model, batches)
    masks = circuit.flat_masks(model)
    d = sgd_direction(probe)
    frame, energies = component_matrix_flat(probe, masks, d)
    whole = whole_circuit_terms(frame, energies, d, masks)
    union = masks["L1H0"] | masks["L0H1"]
    merged, merged_e = component_matrix_flat(probe, {"C": union}, d)
    assert whole["K"] == pytest.approx(float(merged.K.iloc[0]), rel=1e-9)
    assert whole["K_norm"] == pytest.approx(float(merged.K_norm.iloc[0]), rel=1e-9)
    assert whole["E"] == pytest.approx(merged_e["C"], rel=1e-12)


def test_energy_gradients_equal_brute_force(setup):
    """grad E_A by forward-over-reverse HVPs == the gradient of E_A(theta) by autograd (float64)."""
    from torch.func import grad as fgrad

    model, batches, circuit = setup
    probe = model_probe(model, batches, chunk=2)
    masks = circuit.flat_masks(model)
    flat_theta = probe.flat(probe.theta)

    def energy(flat, mask):
        g = vmap(fgrad(probe.loss_fn), in_dims=(None, 0))(probe.unflat(flat), batches)
        return probe.flat(g, 1)[:, mask].pow(2).sum(1).mean()

    gbar = probe.grads.mean(0)
    c_mean = torch.where(masks["L1H0"], gbar, torch.zeros_like(gbar))
    actual = probe.energy_gradients(masks, extra={"mean": c_mean})
    for name, mask in masks.items():
        expected = jacrev(energy)(flat_theta, mask)
        torch.testing.assert_close(actual[name], expected, rtol=1e-8, atol=1e-12)

    # the mean-gradient part: d/dtheta of ||P_A gbar(theta)||^2 = 2 Hbar P_A gbar
    def mean_energy(flat):
        return (
            probe.flat(
                vmap(fgrad(probe.loss_fn), in_dims=(None, 0))(probe.unflat(flat), batches), 1
            )
            .mean(0)[masks["L1H0"]]
            .pow(2)
            .sum()
        )

    torch.testing.assert_close(
        actual["mean"], jacrev(mean_energy)(flat_theta), rtol=1e-8, atol=1e-12
    )


def test_flipping_one_d_head_coordinate_flips_entries_and_leaves_k_unchanged(setup):
    """The symmetry null of the literal condition: the sign of a value coordinate (a column of W_V with
    the matching row of W_O) is arbitrary. Flipping it leaves the function unchanged and flips the sign of
    every entry dG_ii/dtheta_j with j in that coordinate, so across seeds P(entry > 0) = 1/2 whatever the
    dynamics; K[A, B] of whole components does not change."""
    import copy

    model, batches, circuit = setup
    twin = copy.deepcopy(model)
    layer, head, c = 1, 0, 1
    with torch.no_grad():
        attn = twin.blocks[layer].attn
        attn.W_V[head, :, c] *= -1
        attn.b_V[head, c] *= -1
        attn.W_O[head, c, :] *= -1
    torch.testing.assert_close(twin(batches[0]), model(batches[0]), rtol=0, atol=1e-12)
    signs = torch.cat([torch.ones_like(p).flatten() for p in model.parameters()])
    offset = 0
    for name, p in model.named_parameters():
        block = torch.ones_like(p)
        if name == f"blocks.{layer}.attn.W_V":
            block[head, :, c] = -1
        elif name == f"blocks.{layer}.attn.b_V":
            block[head, c] = -1
        elif name == f"blocks.{layer}.attn.W_O":
            block[head, c, :] = -1
        signs[offset : offset + p.numel()] = block.flatten()
        offset += p.numel()
    masks = Circuit("c", ["L1H0", "L0H1"]).flat_masks(model)
    union = masks["L1H0"] | masks["L0H1"]
    rows = torch.nonzero(union).flatten()[[0, 5, 33, 70]].tolist()
    original = entry_terms(model_probe(model, batches), rows, union).mean(1)
    actual = entry_terms(model_probe(twin, batches), rows, union).mean(1)
    torch.testing.assert_close(actual, original * signs[union], rtol=1e-7, atol=1e-14)
    flipped = signs[union] < 0
    moved = actual[:, flipped][original[:, flipped].abs() > 1e-12]
    assert (
        len(moved) > 0
        and (moved * original[:, flipped][original[:, flipped].abs() > 1e-12] < 0).all()
    )
    for direction in ("sgd",):
        a = component_matrix(model, batches, circuit, direction=direction).set_index(["A", "B"]).K
        b = component_matrix(twin, batches, circuit, direction=direction).set_index(["A", "B"]).K
        pd.testing.assert_series_equal(a, b, rtol=1e-9)
