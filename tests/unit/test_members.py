"""Signal and noise energy and the member matrix of flow rates, against references written out by
hand: brute-force double loops over batch pairs, torch.autograd through per-batch gradients built
with create_graph, and central differences of the energies along each member's part of u."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from circuits.circuit import Circuit
from interp_ext.adamw import denominators
from interp_ext.geometry.gradients import flatten
from interp_ext.stream3.energy import EnergyProbe
from interp_ext.stream3.reinforcement import (
    flow_direction,
    grouped_rates,
    member_matrix,
    part_gradients,
    rates,
    signal_noise,
    with_unions,
)
from tests.conftest import float64_micro

HEADS = ["L1H0", "L0H1", "L0H0"]


@pytest.fixture(scope="module")
def micro():
    model, names, theta, batches, loss = float64_micro(n_batches=6)
    masks = Circuit("c", HEADS).flat_masks(model)
    return model, names, theta, batches, loss, masks


def unflat(flat, theta, names):
    out, start = {}, 0
    for n in names:
        size = theta[n].numel()
        out[n] = flat[start : start + size].reshape(theta[n].shape)
        start += size
    return out


def brute_parts(flat, theta, names, loss, batches, mask):
    """S, N, E of one set by per-batch autograd gradients (create_graph) and explicit pair sums."""
    if not flat.requires_grad:
        flat = flat.clone().requires_grad_(True)
    params = unflat(flat, theta, names)
    g = []
    for b in batches:
        grads = torch.autograd.grad(loss(params, b), list(params.values()), create_graph=True)
        g.append(torch.cat([x.reshape(-1) for x in grads])[mask])
    n = len(g)
    e = sum((x * x).sum() for x in g) / n
    pairs = [(g[i] * g[j]).sum() for i, j in itertools.permutations(range(n), 2)]
    s = sum(pairs) / (n * (n - 1))
    gbar = sum(g) / n
    var = sum(((x - gbar) ** 2).sum() for x in g) / (n - 1)
    return {"S": s, "N": var, "E": e}


def test_signal_and_noise_split_the_energy_as_the_pair_sums_do(micro):
    model, names, theta, batches, loss, masks = micro
    probe = EnergyProbe(loss, theta, batches)
    levels = signal_noise(probe, masks)
    x = flatten(theta, names)
    for a, mask in masks.items():
        ref = brute_parts(x, theta, names, loss, batches, mask)
        for part in ("S", "N", "E"):
            assert levels[a][part] == pytest.approx(float(ref[part].detach()), rel=1e-9, abs=1e-14)
        assert levels[a]["S"] + levels[a]["N"] == pytest.approx(levels[a]["E"], rel=1e-12)


def test_the_parts_gradients_equal_autograd_through_per_batch_gradients(micro):
    model, names, theta, batches, loss, masks = micro
    probe = EnergyProbe(loss, theta, batches)
    grads = part_gradients(probe, masks)
    x = flatten(theta, names).clone().requires_grad_(True)
    for a, mask in masks.items():
        ref = brute_parts(x, theta, names, loss, batches, mask)
        for part in ("S", "N", "E"):
            (expected,) = torch.autograd.grad(ref[part], x, retain_graph=True)
            np.testing.assert_allclose(
                grads[a][part].numpy(), expected.numpy(), rtol=1e-7, atol=1e-12
            )


def test_member_rates_equal_central_differences_along_each_members_step(micro):
    """R^X[A, B] = d/d eps X_A(theta + eps P_B u), by central differences (float64, error eps^2)."""
    model, names, theta, batches, loss, masks = micro
    probe = EnergyProbe(loss, theta, batches)
    gen = torch.Generator().manual_seed(3)
    x = flatten(theta, names)
    d = torch.rand(x.shape, generator=gen, dtype=torch.float64) + 0.5
    fresh = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    u = flow_direction(fresh, d, x, 0.01)
    frame = rates(probe, masks, u)
    eps = 1e-5
    for b, mask_b in masks.items():
        step = torch.where(mask_b, u, torch.zeros_like(u))
        plus = signal_noise(EnergyProbe(loss, unflat(x + eps * step, theta, names), batches), masks)
        minus = signal_noise(
            EnergyProbe(loss, unflat(x - eps * step, theta, names), batches), masks
        )
        for a in masks:
            for part in ("S", "N", "E"):
                fd = (plus[a][part] - minus[a][part]) / (2 * eps)
                got = frame[(frame.part == part) & (frame.A == a) & (frame.B == b)].value.item()
                assert got == pytest.approx(fd, rel=1e-5, abs=1e-10), (part, a, b)


def test_flow_direction_is_adamws_step_per_unit_of_lr():
    """u = -(gbar / D + wd theta) is torch's AdamW step divided by lr when its first moment is
    gbar and its denominator D: with betas 0 (m = g, v = g^2, no bias correction) D = |g| + eps."""
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    gbar = torch.tensor([0.3, -0.1, 0.02], dtype=torch.float64)
    lr, wd, eps = 1e-3, 0.1, 1e-8
    p = torch.nn.Parameter(theta.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=(0.0, 0.0), eps=eps, weight_decay=wd)
    p.grad = gbar.clone()
    opt.step()
    step = (p.detach() - theta) / lr
    np.testing.assert_allclose(flow_direction(gbar, gbar.abs() + eps, theta, wd), step, rtol=1e-9)


def test_grouped_rates_average_independent_groups_with_their_error(micro):
    model, names, theta, batches, loss, masks = micro
    x = flatten(theta, names)
    gen = torch.Generator().manual_seed(4)
    us = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(3)]

    def probe_at(sub):
        return EnergyProbe(loss, theta, sub)

    out = grouped_rates(probe_at, batches, lambda i: us[i], masks, groups=3)
    by_group = [rates(probe_at(batches[2 * i : 2 * i + 2]), masks, us[i]) for i in range(3)]
    for part, a, b in [("S", "L1H0", "L0H1"), ("N", "L0H0", ""), ("E", "L0H1", "L0H1")]:
        vals = [f[(f.part == part) & (f.A == a) & (f.B == b)].value.item() for f in by_group]
        row = out[(out.part == part) & (out.A == a) & (out.B == b)].iloc[0]
        assert row.value == pytest.approx(np.mean(vals), rel=1e-12)
        assert row.se == pytest.approx(np.std(vals, ddof=1) / np.sqrt(3), rel=1e-9)
        assert row.n == 3
    with pytest.raises(ValueError, match="6 probe batches cannot make 4 groups"):
        grouped_rates(probe_at, batches, lambda i: us[0], masks, groups=4)


def test_the_noise_falls_with_the_probe_batch_size_and_the_signal_does_not():
    """On a linear model with i.i.d. per-example gradients, N scales as 1 / (examples per batch)
    and S estimates ||mean||^2 at any batch size: the statement docs/metrics.md makes."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(4, dtype=torch.float64, generator=gen)
    xs = torch.randn(2048, 4, dtype=torch.float64, generator=gen) + 0.5
    ys = xs @ torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64) + torch.randn(
        2048, dtype=torch.float64, generator=gen
    )

    def loss(params, idx):
        r = xs[idx] @ params["w"] - ys[idx]
        return 0.5 * (r * r).mean()

    mask = torch.tensor([True, True, False, True])
    levels = {}
    for size in (8, 32):
        batches = torch.arange(2048).reshape(-1, size)
        levels[size] = signal_noise(EnergyProbe(loss, {"w": w}, batches, chunk=64), {"A": mask})[
            "A"
        ]
    assert levels[8]["N"] / levels[32]["N"] == pytest.approx(4.0, rel=0.15)
    assert levels[8]["S"] == pytest.approx(levels[32]["S"], rel=0.1)


def test_a_union_of_members_reads_as_that_set_measured_directly(micro):
    """S, N, E and every rate are sums over coordinates, so the circuit's row and column built from
    its members (``with_unions``) equal those of the union's own mask."""
    model, names, theta, batches, loss, masks = micro
    probe = EnergyProbe(loss, theta, batches)
    x = flatten(theta, names)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    whole = torch.stack(list(masks.values())).any(0)
    derived = with_unions(rates(probe, masks, u), {"C": list(masks)})
    direct = rates(probe, {**masks, "C": whole}, u)
    for part in ("S", "N", "E"):
        for a, b in [("C", ""), ("C", "C"), ("C", "L0H1"), ("L1H0", "C")]:
            got = derived[(derived.part == part) & (derived.A == a) & (derived.B == b)]
            want = direct[(direct.part == part) & (direct.A == a) & (direct.B == b)]
            assert got.value.item() == pytest.approx(want.value.item(), rel=1e-9, abs=1e-15)


def test_member_matrix_of_a_model_with_adamw_state(micro):
    """The model-level entry: its groups pair probe and fresh batches, its C is the members'
    union, its rates are those of grouped_rates with u from each fresh group's mean gradient."""
    model, names, theta, batches, loss, masks = micro
    params = dict(model.named_parameters())
    v = {n: torch.full_like(p, 0.01) for n, p in params.items()}
    d = denominators(v, count=10, beta2=0.999)
    fresh = torch.randint(0, 7, (2, 2, 6), generator=torch.Generator().manual_seed(7))
    rows = {h: [h] for h in HEADS}
    out = member_matrix(
        model, batches, fresh, rows, d, 0.01, groups=2, unions={"C": HEADS}, levels={"all": HEADS}
    )
    x = flatten(theta, names)
    flat_d = flatten(d, names)

    def u_of(i):
        g = flatten(torch.func.grad(loss)(theta, fresh[i]), names)
        return flow_direction(g, flat_d, x, 0.01)

    group = [
        rates(EnergyProbe(loss, theta, batches[3 * i : 3 * i + 3]), masks, u_of(i)) for i in (0, 1)
    ]
    for part, a, b in [("S", "L1H0", "L0H1"), ("E", "L0H0", "L0H0")]:
        want = np.mean([f[(f.part == part) & (f.A == a) & (f.B == b)].value.item() for f in group])
        got = out[(out.part == part) & (out.A == a) & (out.B == b)].value.item()
        assert got == pytest.approx(want, rel=1e-9)
    c = out[(out.part == "E") & (out.A == "C") & (out.B == "")].value.item()
    assert c == pytest.approx(out[(out.part == "E") & (out.A == "all")].value.item(), rel=1e-12)
    with pytest.raises(ValueError, match="no denominator before its first step"):
        denominators(v, count=0, beta2=0.999)


def test_the_api_reads_u_from_a_torch_adamw(micro):
    """api.member_matrix takes the denominator and weight decay from a stepped torch AdamW."""
    from interp_ext import api

    model, names, theta, batches, loss, masks = micro
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    with pytest.raises(ValueError, match="taken a step"):
        api.member_matrix(model, batches, batches[:2], ["L1H0", "L0H1"], opt)
    model(batches[0], return_type="loss").backward()
    opt.step()
    opt.zero_grad()
    fresh = torch.randint(0, 7, (2, 2, 6), generator=torch.Generator().manual_seed(8))
    out = api.member_matrix(model, batches, fresh, ["L1H0", "L0H1"], opt, groups=2)
    params = dict(model.named_parameters())
    v = {n: opt.state[p]["exp_avg_sq"] for n, p in params.items()}
    d = denominators(v, 1.0, 0.999)
    want = member_matrix(
        model,
        batches,
        fresh,
        {"L1H0": ["L1H0"], "L0H1": ["L0H1"]},
        d,
        0.05,
        groups=2,
        unions={"C": ["L1H0", "L0H1"]},
    )
    pd.testing.assert_frame_equal(out, want)
