"""Sharpness against references nobody here wrote: the dense autograd Hessian's eigenvalues
(numpy), and the analytic stability edge of EMA momentum on a quadratic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.circuit import Circuit
from interp_ext.adamw import preconditioner
from interp_ext.geometry.curvature import (
    HessianOperator,
    hutchinson_trace,
    lanczos,
    spectral_density,
    stability_threshold,
)
from interp_ext.geometry.gradients import flatten
from interp_ext.geometry.learning_coefficient import quadratic_gradient_term, quadratic_llc
from tests.conftest import dense_hessian, float64_micro


@pytest.fixture(scope="module")
def micro():
    model, names, theta, batches, loss = float64_micro()
    return model, names, theta, batches, loss, dense_hessian(model, names, theta, batches, loss)


def test_top_eigenvalues_match_the_dense_hessian(micro):
    model, names, theta, batches, loss, dense = micro
    op = HessianOperator(loss, theta, batches)
    assert op.n == dense.shape[0]
    got = op.top(k=3, tol=1e-10)
    want = np.sort(np.linalg.eigvalsh((dense + dense.T) / 2))[::-1][:3]
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_preconditioned_and_block_eigenvalues_match_the_dense_hessian(micro):
    model, names, theta, batches, loss, dense = micro
    rng = torch.Generator().manual_seed(2)
    v = {
        n: torch.rand(t.shape, generator=rng, dtype=torch.float64) * 1e-4 for n, t in theta.items()
    }
    d = preconditioner(v, count=3, betas=(0.9, 0.999), eps=1e-8)
    dvec = flatten(d, names).numpy()
    op = HessianOperator(loss, theta, batches)
    got = op.top(preconditioner=d, tol=1e-10)[0]
    # P^-1 H is not symmetric: its eigenvalues straight from numpy's general solver
    want = np.linalg.eigvals(dvec[:, None] * dense).real.max()
    np.testing.assert_allclose(got, want, rtol=1e-7)
    mask = Circuit("c", ["L1H0"]).flat_masks(model)["L1H0"]
    idx = mask.nonzero().squeeze(1).numpy()
    block = dense[np.ix_(idx, idx)]
    np.testing.assert_allclose(
        op.top(mask=mask, tol=1e-10)[0], np.linalg.eigvalsh(block).max(), rtol=1e-7
    )
    both = np.linalg.eigvals(dvec[idx, None] * block).real.max()
    np.testing.assert_allclose(op.top(preconditioner=d, mask=mask, tol=1e-10)[0], both, rtol=1e-7)


def test_block_and_gradient_match_dense_autograd(micro):
    model, names, theta, batches, loss, dense = micro
    op = HessianOperator(loss, theta, batches)
    mask = Circuit("c", ["L1H1"]).flat_masks(model)["L1H1"]
    idx = mask.nonzero().squeeze(1).numpy()
    np.testing.assert_allclose(
        op.block(mask, chunk=5).numpy(), dense[np.ix_(idx, idx)], rtol=1e-10, atol=1e-12
    )
    x = flatten(theta, names).requires_grad_(True)
    out, start = {}, 0
    for n in names:
        out[n] = x[start : start + theta[n].numel()].reshape(theta[n].shape)
        start += theta[n].numel()
    mean = torch.stack([loss(out, b) for b in batches]).mean()
    (want,) = torch.autograd.grad(mean, x)
    np.testing.assert_allclose(op.gradient().numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-15)


def test_quadratic_llc_is_the_gaussian_posteriors_mean_rise():
    """Closed form against draws from the localised tempered posterior of a quadratic (numpy's
    Gaussian sampler): n_beta E[g.d + d'Hd/2] with d ~ N(-n_beta A^-1 g, A^-1), A = n_beta H + gamma."""
    rng = np.random.default_rng(0)
    k, n_beta, gamma = 6, 50.0, 30.0
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    h = np.array([-0.4, 0.0, 0.05, 0.3, 2.0, 10.0])  # one negative direction, still proper
    hess = q @ np.diag(h) @ q.T
    g = rng.normal(size=k) * 0.05
    got = quadratic_llc(hess, g, n_beta, gamma)
    a = n_beta * hess + gamma * np.eye(k)
    cov = np.linalg.inv(a)
    d = rng.multivariate_normal(-n_beta * cov @ g, cov, size=400_000)
    rise = n_beta * (d @ g + 0.5 * np.einsum("ni,ij,nj->n", d, hess, d))
    assert got["improper"] == 0
    assert abs(got["llc"] - rise.mean()) < 4 * rise.std() / np.sqrt(len(rise))
    assert got["gradient_term"] < 0 < got["count"]
    # with g = 0 the count alone: half the number of directions curved far beyond gamma / n_beta
    stiff = quadratic_llc(np.diag([1e6, 1e6, 0.0]), np.zeros(3), n_beta, gamma)
    assert abs(stiff["llc"] - 1.0) < 1e-3 and stiff["gradient_term"] == 0
    # curvature below -gamma / n_beta: no posterior, no estimate
    bad = quadratic_llc(np.diag([-1.0, 1.0]), np.zeros(2), n_beta, gamma)
    assert bad["improper"] == 1 and np.isnan(bad["llc"]) and bad["hessian_min"] == -1.0


def test_the_conjugate_gradient_term_equals_the_dense_closed_form(micro):
    model, names, theta, batches, loss, dense = micro
    op = HessianOperator(loss, theta, batches)
    mask = (
        Circuit("c", ["L1H0", "L0H1"]).flat_masks(model)["L1H0"]
        | (Circuit("c", ["L0H1"]).flat_masks(model)["L0H1"])
    )
    idx = mask.nonzero().squeeze(1).numpy()
    g = op.gradient()[mask]
    block = dense[np.ix_(idx, idx)]
    lam_min = np.linalg.eigvalsh(block).min()
    n_beta = 40.0
    gamma = max(5.0, -2 * n_beta * lam_min)  # proper
    want = quadratic_llc(block, g.numpy(), n_beta, gamma)["gradient_term"]
    got = quadratic_gradient_term(op.block_matvec(mask), g, n_beta, gamma, tol=1e-12)
    assert got["improper"] == 0 and got["gradient_term"] == pytest.approx(want, rel=1e-8)
    # an untrained model has negative curvature; a localisation too weak for it: no posterior
    assert lam_min < 0
    bad = quadratic_gradient_term(op.block_matvec(mask), g, n_beta, -0.5 * n_beta * lam_min)
    assert bad["improper"] == 1 and np.isnan(bad["gradient_term"])


def test_hutchinson_trace_is_unbiased_for_the_dense_trace(micro):
    model, names, theta, batches, loss, dense = micro
    op = HessianOperator(loss, theta, batches)
    est, se = hutchinson_trace(op, 100, seed=1)
    assert abs(est - np.trace(dense)) < 4 * se
    mask = Circuit("c", ["L0H1"]).flat_masks(model)["L0H1"]
    idx = mask.nonzero().squeeze(1).numpy()
    est, se = hutchinson_trace(op, 100, mask=mask, seed=2)
    assert abs(est - np.trace(dense[np.ix_(idx, idx)])) < 4 * se


def test_lanczos_quadrature_reproduces_the_dense_blocks_moments(micro):
    """Stochastic Lanczos quadrature from start v: sum_i w_i node_i^p = v' H^p v up to degree
    2 ncv - 1 (Gauss quadrature); the weights sum to 1; the smoothed density integrates to 1."""
    model, names, theta, batches, loss, dense = micro
    op = HessianOperator(loss, theta, batches)
    mask = Circuit("c", ["L1H0", "L0H1"]).flat_masks(model)
    mask = mask["L1H0"] | mask["L0H1"]
    idx = mask.nonzero().squeeze(1).numpy()
    block = dense[np.ix_(idx, idx)]
    ncv, calls = 6, op.calls
    q = op.spectrum(mask, ncv, seed=3)
    assert op.calls - calls == ncv
    gen = torch.Generator().manual_seed(3)  # the start vector the seeded quadrature drew
    v = torch.randn(len(idx), generator=gen, dtype=torch.float64).numpy()
    v /= np.linalg.norm(v)
    assert q["weights"].sum() == pytest.approx(1.0, rel=1e-10)
    scale = np.abs(np.linalg.eigvalsh(block)).max()
    for p in range(2 * ncv):
        want = v @ np.linalg.matrix_power(block / scale, p) @ v
        got = (q["weights"] * (q["nodes"] / scale) ** p).sum()
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), p
    lo, hi = q["nodes"].min() - scale, q["nodes"].max() + scale
    grid, density = spectral_density(q["nodes"], q["weights"], lo, hi, points=2000)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, rel=1e-3)


def test_the_preconditioner_is_the_inverse_of_adamw_denominator():
    """One AdamW step from a state with m = g: the update is -lr * D * m exactly."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.0)
    for _ in range(4):
        opt.zero_grad()
        (p**3).sum().backward()
        before = p.detach().clone()
        opt.step()
    st = opt.state[p]
    d = preconditioner({"p": st["exp_avg_sq"]}, float(st["step"]), (0.9, 0.99), 1e-3)["p"]
    np.testing.assert_allclose(
        (p.detach() - before).numpy(), (-0.1 * d * st["exp_avg"]).numpy(), rtol=1e-12
    )
    with pytest.raises(ValueError):
        preconditioner({"p": st["exp_avg_sq"]}, 0, (0.9, 0.99), 1e-3)


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9])
def test_stability_threshold_is_where_momentum_diverges_on_a_quadratic(beta1):
    """m <- beta1 m + (1 - beta1) lam x; x <- x - lr m, on 1/2 lam x^2: bounded just below the
    threshold, divergent just above."""
    lr = 0.01

    def final(lam):
        x, m = 1.0, 0.0
        for _ in range(20_000):
            m = beta1 * m + (1 - beta1) * lam * x
            x -= lr * m
            if abs(x) > 1e6:
                break
        return abs(x)

    edge = stability_threshold(lr, beta1)
    assert final(0.99 * edge) < 1.0
    assert final(1.01 * edge) > 1e3
    if beta1 == 0.9:
        assert edge == pytest.approx(38 / lr)


def test_top_eigenvalues_of_a_known_matrix():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    lam = np.linspace(-5, 3, 40)
    a = torch.from_numpy((q * lam) @ q.T)
    got = lanczos(lambda x: a @ x, 40, k=2, tol=1e-12, dtype=torch.float64, maxiter=30)[0]
    np.testing.assert_allclose(got, [3.0, lam[-2]], rtol=1e-9)


def test_sharpness_rows_on_a_run(micro_run):
    """Through the runner: checkpoints and a replayed window; the window's points are the replayed
    parameters' (equal to a direct measurement where a checkpoint exists), bad settings refused."""
    from interp_ext import measure
    from interp_ext.families.sharpness import SharpnessSettings, measure_point
    from interp_ext.measurement.runner import MeasureError

    settings = SharpnessSettings(
        n_batches=2, circuit="L1H0", window="2:6", window_every=1, tol=1e-6
    )
    measured = measure(micro_run, settings, seeds=[0], steps=[0], progress=False)
    # the window's first checkpoint is measured even when not asked for, and the points between
    # checkpoints come with it
    rows = micro_run.metrics("sharpness", settings=measured.attrs["settings"], seeds=[0])
    assert sorted(rows[rows.metric == "sharpness"].step.unique()) == [0, 2, 3, 5]
    pre = rows[(rows.metric == "sharpness_precond") & (rows.component == "")]
    assert sorted(pre.step) == [2, 3, 5]  # step 0 has no AdamW state
    assert (pre.value > 0).all()
    ratio = rows[(rows.metric == "precond_edge_ratio") & (rows.component == "")].set_index("step")
    edge = rows[rows.metric == "edge_of_stability"].value.iloc[0]
    assert edge == pytest.approx(38 / micro_run.config.train.lr)
    np.testing.assert_allclose(ratio.value, pre.set_index("step").value / edge)
    # the block's top eigenvalue never exceeds the whole model's (Cauchy interlacing)
    whole = rows[(rows.metric == "sharpness") & (rows.component == "")].set_index("step").value
    block = rows[(rows.metric == "sharpness") & (rows.component == "C")].set_index("step").value
    assert (block <= whole + 1e-6).all()
    # a checkpoint's row equals a direct measurement from that checkpoint's saved state
    ckpt = micro_run.checkpoint(0, 2)
    direct = measure_point(
        micro_run.model(0, 2),
        micro_run,
        settings,
        None,
        ckpt["exp_avg_sq"],
        float(ckpt["adam_step"]),
    )
    got = rows[(rows.step == 2) & (rows.metric == "sharpness_precond") & (rows.component == "")]
    assert got.value.iloc[0] == pytest.approx(
        direct[direct.metric == "sharpness_precond"].value.iloc[0], rel=1e-4
    )
    assert (
        measure(micro_run, settings, seeds=[0], steps=[0], progress=False).attrs["measured"][
            "checkpoints"
        ]
        == 0
    )
    # the seed's summary: its peak ratio and where (the micro run has no induction rows, so no
    # formation step), and the report draws the section from the rows
    peak = rows[(rows.metric == "precond_edge_ratio/max") & (rows.seed == 0)].value.iloc[0]
    assert peak == pytest.approx(ratio.value.max())
    from interp_ext.report.compose import write_report

    report = write_report(micro_run).read_text()
    assert "## Sharpness and the edge of stability" in report
    with pytest.raises(MeasureError, match="n_batches=99"):
        measure(micro_run, SharpnessSettings(n_batches=99), progress=False)
    with pytest.raises(MeasureError, match="window"):
        measure(micro_run, SharpnessSettings(window="3:5"), progress=False)


def test_lanczos_that_does_not_converge_gives_nan_not_a_value(caplog):
    """An operator whose top eigenvalues are nearly degenerate, given one restart and a tolerance
    it cannot reach: NaN and a warning."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    lam = np.concatenate([1.0 + 1e-9 * np.arange(40), np.linspace(-1, 0.5, 260)])
    a = torch.from_numpy((q * lam) @ q.T)
    got = lanczos(lambda x: a @ x, 300, k=3, tol=1e-15, dtype=torch.float64, maxiter=1)[0]
    assert np.isnan(got).any()
    assert "did not reach tolerance" in caplog.text
