"""The saddle signature against the dense autograd Hessian (numpy's eigh) on a float64 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.circuit import Circuit
from interp_ext.geometry.curvature import HessianOperator
from interp_ext.geometry.gradients import flatten
from interp_ext.stream3.saddle import flow_curvature, soft_modes
from tests.conftest import dense_hessian, float64_micro


@pytest.fixture(scope="module")
def micro():
    model, names, theta, batches, loss = float64_micro()
    dense = dense_hessian(model, names, theta, batches, loss)
    x = flatten(theta, names)
    mask = torch.stack(list(Circuit("c", ["L1H0", "L0H1"]).flat_masks(model).values())).any(0)
    gen = torch.Generator().manual_seed(2)
    inv_d = torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 + 0.2
    return HessianOperator(loss, theta, batches), dense, mask, inv_d, x


def test_flow_curvature_is_the_dense_quadratic_forms(micro):
    hess, dense, mask, inv_d, x = micro
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    m = mask.numpy()
    h = dense[np.ix_(m, m)]
    an, bn, inv = a.numpy()[m], b.numpy()[m], inv_d.numpy()[m]
    want_curv = (bn @ h @ (inv * an) + an @ h @ (inv * bn)) / 2
    want_rate = an @ (inv * bn)
    got = flow_curvature(hess, mask, inv_d, a, b)
    assert got["flow_curvature"] == pytest.approx(want_curv, rel=1e-9)
    assert got["flow_rate"] == pytest.approx(want_rate, rel=1e-12)
    assert got["rho"] == pytest.approx(want_curv / want_rate, rel=1e-9)
    # with one estimate on both sides: the plain quadratic forms
    same = flow_curvature(hess, mask, inv_d, a, a)
    assert same["rho"] == pytest.approx(an @ h @ (inv * an) / (an @ (inv * an)), rel=1e-9)


def test_soft_modes_are_the_lowest_eigenpairs_of_the_preconditioned_block(micro):
    hess, dense, mask, inv_d, x = micro
    m = mask.numpy()
    half = np.sqrt(inv_d.numpy()[m])
    hhat = half[:, None] * dense[np.ix_(m, m)] * half[None, :]
    vals, vecs = np.linalg.eigh(hhat)
    gbar = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = half * gbar.numpy()[m]
    got = soft_modes(hess, mask, inv_d, gbar, k=3, tol=1e-10)
    np.testing.assert_allclose(got["eigenvalues"], vals[:3], rtol=1e-6, atol=1e-9)
    want = (vecs[:, :3].T @ w) ** 2 / (w @ w)
    np.testing.assert_allclose(got["overlap"], want, rtol=1e-5, atol=1e-10)
    assert vals[0] < 0  # the test block has a negative direction: the case the signature reads
    assert got["hvps"] > 0
