"""Geometry against brute force (full G in float64), scipy and analytic properties."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from interp_ext.geometry import (
    beta_fit,
    cross_seed_alignment,
    detect_transition,
    function_space_alignment,
    measure_checkpoint,
    per_batch_gradients,
    permute_params,
    select_params,
    spectral,
)
from interp_ext.geometry.streams import saturating


def small_model(seed: int = 0, dtype=torch.float64, attn_only: bool = False) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=8,
        d_head=4,
        n_heads=2,
        d_mlp=None if attn_only else 12,
        d_vocab=11,
        n_ctx=6,
        act_fn=None if attn_only else "gelu",
        normalization_type="LN",
        attn_only=attn_only,
        dtype=dtype,
        seed=seed,
    )
    return HookedTransformer(cfg)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = small_model()
    batches = torch.randint(0, 11, (10, 3, 6))
    heldout = torch.randint(0, 11, (4, 3, 6))
    return model, batches, heldout


def brute_force_grads(model, batches):
    rows = []
    for b in batches:
        model.zero_grad()
        model(b, return_type="loss").backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]).clone())
    model.zero_grad()
    return torch.stack(rows)


def test_gradients_equal_autograd(setup):
    model, batches, _ = setup
    expected = brute_force_grads(model, batches)
    actual = per_batch_gradients(model, batches, chunk=3)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_metrics_equal_full_covariance(setup):
    model, batches, heldout = setup
    g = brute_force_grads(model, batches)
    gh = brute_force_grads(model, heldout)
    full = g.T @ g / g.shape[0]  # the n_params x n_params G, formed only here
    evals, evecs = torch.linalg.eigh(full)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    k = 3
    p = evals / evals.sum()
    p = p[p > 1e-15]
    expected = {
        "effective_rank": float(torch.exp(-(p * p.log()).sum())),
        "participation_ratio": float(evals.sum() ** 2 / (evals**2).sum()),
        "topk_variance": float(evals[:k].sum() / evals.sum()),
        "top1_variance": float(evals[0] / evals.sum()),
    }
    u = evecs[:, :k]
    expected["energy_in_subspace"] = float(((gh @ u).pow(2).sum(1) / gh.pow(2).sum(1)).mean())
    expected["energy_outside"] = 1 - expected["energy_in_subspace"]
    gn = g / g.norm(dim=1, keepdim=True)
    c = gn @ gn.T
    expected["grad_cosine"] = float((c.sum() - c.trace()) / (10 * 9))
    actual = measure_checkpoint(model, batches, k=k, heldout=heldout)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=1e-5), name
    # eigenvalues and the top-k subspace itself
    lam, vec = spectral.gram_eigen(g)
    torch.testing.assert_close(lam, evals[:10], rtol=1e-5, atol=1e-12 * float(evals[0]))
    basis = spectral.top_eigenvectors(g, lam, vec, k)
    torch.testing.assert_close(basis @ basis.T, u @ u.T, rtol=1e-5, atol=1e-8)


def test_property_bounds(setup):
    model, batches, heldout = setup
    m = measure_checkpoint(model, batches, k=4, heldout=heldout)
    assert 1 <= m["participation_ratio"] <= m["effective_rank"] <= batches.shape[0]
    for key in ("topk_variance", "top1_variance", "energy_in_subspace", "energy_outside"):
        assert 0 <= m[key] <= 1
    assert m["energy_in_subspace"] + m["energy_outside"] == pytest.approx(1.0)
    assert m["top1_variance"] <= m["topk_variance"]


def test_subspace_overlap_and_angles_against_scipy():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(np.linalg.qr(rng.normal(size=(50, 4)))[0])
    b = torch.from_numpy(np.linalg.qr(rng.normal(size=(50, 4)))[0])
    assert spectral.subspace_overlap(a, a) == pytest.approx(1.0)
    assert 0 <= spectral.subspace_overlap(a, b) <= 1
    expected = np.sort(scipy.linalg.subspace_angles(a.numpy(), b.numpy()))
    np.testing.assert_allclose(
        spectral.principal_angles(a, b).numpy(), expected, rtol=1e-8, atol=1e-10
    )
    assert spectral.drift_rate(a, b, 100) == pytest.approx(expected.mean() / 100)
    # any basis of the same spans (columns mixed and scaled) gives the same angles
    mix = torch.from_numpy(rng.normal(size=(4, 4)))
    np.testing.assert_allclose(
        spectral.principal_angles(a @ mix, 3.0 * b @ mix.T).numpy(), expected, rtol=1e-7, atol=1e-9
    )
    # overlap = sum cos^2 of principal angles / k
    assert spectral.subspace_overlap(a, b) == pytest.approx(
        float(np.cos(expected) ** 2 @ np.ones(4) / 4)
    )


def test_params_selection_and_centering(setup):
    model, batches, _ = setup
    blocks = select_params(model, "blocks")
    assert not any(n.startswith(("embed", "pos_embed", "unembed")) for n in blocks)
    g = per_batch_gradients(model, batches, params=["ln"])
    assert g.shape[1] == sum(p.numel() for n, p in model.named_parameters() if "ln" in n)
    lam_c, _ = spectral.gram_eigen(g, centered=True)
    assert lam_c[-1] == pytest.approx(0.0, abs=1e-12)  # centering removes one direction
    with pytest.raises(ValueError, match="unknown group"):
        select_params(model, ["attention"])


def test_function_space_alignment_of_gradient_descent_is_positive(setup):
    model, batches, _ = setup
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(batches[0], return_type="loss").backward()
    direction = {n: -p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    same = function_space_alignment(model, theta, direction, batches[0])
    assert same > 0.05
    flipped = function_space_alignment(
        model, theta, {n: -d for n, d in direction.items()}, batches[0]
    )
    assert flipped == pytest.approx(-same)


def _permute_model(model: HookedTransformer, seed: int) -> HookedTransformer:
    """A functionally identical copy with heads and MLP neurons permuted."""
    gen = torch.Generator().manual_seed(seed)
    other = small_model(seed=99)
    perms = {}
    for layer in range(model.cfg.n_layers):
        perms[(layer, "heads")] = torch.randperm(model.cfg.n_heads, generator=gen).numpy()
        perms[(layer, "neurons")] = torch.randperm(model.cfg.d_mlp, generator=gen).numpy()
    state = permute_params(dict(model.state_dict()), perms)
    other.load_state_dict(state)
    return other


def test_permutation_invariant_alignment(setup):
    model, batches, _ = setup
    twin = _permute_model(model, seed=3)
    tokens = batches[0]
    torch.testing.assert_close(twin(tokens), model(tokens))  # same function
    df = cross_seed_alignment([model, twin], batches).set_index(["metric", "component"])["value"]
    for group in ("attn_qkv", "attn_out", "mlp_in", "mlp_out"):
        assert df[("cross_seed_alignment_perm", group)] == pytest.approx(1.0, abs=1e-6)
        assert df[("cross_seed_alignment", group)] < 0.99
    assert df[("cross_seed_alignment", "ln")] == pytest.approx(1.0, abs=1e-6)  # LN is not permuted
    with pytest.raises(ValueError, match=">= 2"):
        cross_seed_alignment([model], batches)


def test_beta_fit_recovers_parameters():
    rng = np.random.default_rng(0)
    t = np.arange(0, 20_000, 500.0)
    truth = dict(sim_star=0.8, gamma=3e-4, t0=1_000.0)
    curves = {s: (t, saturating(t, **truth) + rng.normal(0, 0.02, len(t))) for s in range(6)}
    fit = beta_fit(curves, n_boot=100)
    for name, value in truth.items():
        assert fit[f"{name}_lo"] <= value <= fit[f"{name}_hi"], (name, fit)
        assert fit[name] == pytest.approx(value, rel=0.15)


def test_transition_detection_finds_the_common_change():
    steps = np.arange(0, 5000, 250.0)

    def step_up(at, noise):
        return (steps >= at).astype(float) + noise

    rng = np.random.default_rng(1)
    series = {
        "a": (steps, step_up(2500, rng.normal(0, 0.05, len(steps)))),
        "b": (steps, -step_up(2500, rng.normal(0, 0.05, len(steps)))),
        "c": (steps, step_up(2750, rng.normal(0, 0.05, len(steps)))),
        "noise": (steps, rng.normal(0, 1, len(steps))),
    }
    tr = detect_transition(series)
    assert set(tr["agreeing"]) >= {"a", "b", "c"} and "noise" not in tr["agreeing"]
    assert tr["start"] <= 2500 <= tr["end"] + 250
