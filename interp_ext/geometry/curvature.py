"""Sharpness: the top eigenvalues of the loss Hessian, plain and preconditioned by AdamW.

Adaptive optimizers train at the edge of stability of their *preconditioned*
Hessian (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"):
with AdamW's update -eta m_hat / (sqrt(v_hat) + eps), the preconditioner is

    P = (1 - beta1^t) (diag(sqrt(v_t / (1 - beta2^t))) + eps),

and on a quadratic the EMA-momentum iteration is stable only while
lambda_1(P^-1 H) < (2 + 2 beta1) / ((1 - beta1) eta) (38 / eta for beta1 = 0.9):
:func:`stability_threshold`.

P^-1 H is not symmetric, but it is similar to D^1/2 H D^1/2 with D = P^-1, which
is; Lanczos (scipy's ``eigsh``) runs on that operator, built from curvlinops'
Hessian-vector products (Dangel et al.; ``HessianLinearOperator``), never a dense Hessian.
``mask`` restricts the operator to a block of coordinates (a circuit's parameters,
curvlinops' ``SubmatrixLinearOperator``): the top eigenvalue of that block of H. The block's
whole spectral density comes from stochastic Lanczos quadrature (Papyan 2020; curvlinops).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

try:  # installed without its dependencies (make install): backpack's torchvision pulls CUDA torch
    import curvlinops
    from curvlinops.papyan2020traces import spectrum
except ImportError as err:  # pragma: no cover - an install without the Makefile's line
    raise ImportError(
        "curvature needs: pip install --no-deps 'curvlinops-for-pytorch>=3,<4'"
    ) from err

log = logging.getLogger("interp_ext")


def stability_threshold(lr: float, beta1: float) -> float:
    """(2 + 2 beta1) / ((1 - beta1) lr): the preconditioned sharpness above which the
    momentum iteration diverges on a quadratic."""
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    maxiter: int | None = None,
    ncv: int | None = None,
    vectors: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``k`` extreme eigenvalues of a symmetric operator: ``which`` "LA" the largest (largest
    first) or "SA" the smallest (smallest first), with their eigenvectors [n, k] when ``vectors``.

    ``matvec`` maps a [n] tensor of ``dtype`` to a [n] tensor; Lanczos (ARPACK via
    ``scipy.sparse.linalg.eigsh``) from a fixed random start, to relative tolerance ``tol``,
    with at most ``maxiter`` implicit restarts; eigenvalues that do not converge are NaN (their
    vectors too), with a warning, never a silent value.
    """

    def mv(x: np.ndarray) -> np.ndarray:
        out = matvec(torch.from_numpy(np.ascontiguousarray(x).ravel()).to(dtype))
        return out.detach().double().cpu().numpy()

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    kwargs = dict(k=k, which=which, tol=tol, v0=v0, maxiter=maxiter, ncv=ncv)
    try:
        out = eigsh(op, return_eigenvectors=vectors, **kwargs)
        vals, vecs = out if vectors else (out, None)
    except ArpackNoConvergence as err:
        got = len(err.eigenvalues)
        log.warning(
            "Lanczos did not reach tolerance %g: %d of %d eigenvalues (%s) converged, the rest are NaN",
            tol,
            got,
            k,
            which,
        )
        vals = np.concatenate([np.asarray(err.eigenvalues, float), np.full(k - got, np.nan)])
        vecs = np.c_[err.eigenvectors, np.full((n, k - got), np.nan)] if vectors else None
    order = np.argsort(vals)[:: -1 if which == "LA" else 1]
    return vals[order], (vecs[:, order] if vectors else None)


class _LossModule(torch.nn.Module):
    """``loss_fn(params, tokens)`` as the module curvlinops differentiates: its parameters are
    ``theta``, its "prediction" the batch's mean loss itself (read through :class:`_Mean`)."""

    def __init__(self, loss_fn, theta: dict[str, torch.Tensor]):
        super().__init__()
        self.loss_fn, self.names = loss_fn, list(theta)
        self.params = torch.nn.ParameterList(torch.nn.Parameter(t.detach()) for t in theta.values())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(dict(zip(self.names, self.params)), tokens)


class _Mean(torch.nn.Module):
    """The loss curvlinops composes with :class:`_LossModule`: the prediction is already the batch's
    mean loss; ``reduction = "mean"`` weights each batch by its share of the sequences."""

    reduction = "mean"

    def forward(self, prediction: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
        return prediction


class _Counted(curvlinops.HessianLinearOperator):
    """curvlinops' Hessian operator, counting the Hessian-vector products it computes."""

    calls = 0

    def _matmat(self, M):
        self.calls += M[0].shape[-1]
        return super()._matmat(M)


class HessianOperator:
    """The Hessian of the mean loss over ``batches`` at ``theta``: curvlinops'
    ``HessianLinearOperator`` (forward-over-reverse products, vectorised over columns), with
    the blocks, eigenvalues and spectra this project reads from it.

    Args:
        loss_fn: loss(params: dict, tokens) -> mean loss over the tokens' sequences
            (``interp_ext.geometry.loss_function``).
        theta: the parameters (a dict of tensors).
        batches: [n_batches, batch, pos] token batches of one size; the loss is their mean,
            i.e. the mean over all their sequences.
        chunk: batches per forward-over-reverse call (default: all at once).
    """

    def __init__(self, loss_fn, theta: dict[str, torch.Tensor], batches, chunk: int | None = None):
        self.theta, self.names = theta, list(theta)
        chunk = chunk or batches.shape[0]
        groups = [batches[i : i + chunk].flatten(0, 1) for i in range(0, batches.shape[0], chunk)]
        module = _LossModule(loss_fn, theta)
        self.op = _Counted(
            module,
            _Mean(),
            list(module.params),
            [(g, torch.zeros(g.shape[0])) for g in groups],
            check_deterministic=False,  # no dropout, no sampling: the loss is a function of theta
            num_data=sum(g.shape[0] for g in groups),
        )
        self.n = self.op.shape[0]
        self.dtype = next(iter(theta.values())).dtype

    @property
    def calls(self) -> int:
        """Hessian-vector products computed so far."""
        return self.op.calls

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat [n] vector."""
        return self.op @ v.to(self.dtype)

    def gradient(self) -> torch.Tensor:
        """The flat gradient [n] of the mean loss at ``theta``."""
        grads, _ = self.op.gradient_and_loss()
        return torch.cat([g.reshape(-1) for g in grads])

    def restrict(self, mask: torch.Tensor | None):
        """H, or its block H[mask, mask] on a flat bool ``mask`` [n] (a ``SubmatrixLinearOperator``)."""
        if mask is None:
            return self.op
        idx = mask.nonzero().squeeze(1).tolist()
        return curvlinops.SubmatrixLinearOperator(self.op, idx, idx)

    def block(self, mask: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """The dense block H[mask, mask], ``chunk`` columns per product; symmetrised."""
        sub = self.restrict(mask)
        eye = torch.eye(sub.shape[0], dtype=self.dtype, device=self.op.device)
        dense = torch.cat([sub @ eye[:, i : i + chunk] for i in range(0, sub.shape[0], chunk)], 1)
        return (dense + dense.T) / 2

    def block_matvec(self, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """v -> H[mask, mask] v for a flat bool ``mask`` [n] (the block's coordinates only)."""
        sub = self.restrict(mask)
        return lambda x: sub @ x.to(sub.device, self.dtype)

    def preconditioned(self, mask: torch.Tensor | None, half: torch.Tensor) -> Callable:
        """v -> D^1/2 H D^1/2 v on the block ``mask``, ``half`` = D^1/2 on the block's coordinates:
        symmetric, and similar to D H (AdamW's P^-1 H with D = P^-1)."""
        sub = self.restrict(mask)
        half = half.to(sub.device)
        return lambda x: half * (sub @ (half * x.to(sub.device)).to(self.dtype)).to(half.dtype)

    def top(
        self,
        preconditioner: dict[str, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        k: int = 1,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> np.ndarray:
        """Top ``k`` eigenvalues of H, of P^-1 H (``preconditioner`` = D = P^-1 per parameter), or of
        either restricted to the coordinates ``mask`` (a flat bool [n]); at most 30 restarts (a
        well-separated top eigenvalue needs one or two)."""
        n = self.restrict(mask).shape[0]
        matvec = self.block_matvec(mask)
        if preconditioner is not None:
            d = torch.cat([preconditioner[n].reshape(-1) for n in self.names]).to(self.dtype).sqrt()
            matvec = self.preconditioned(mask, d if mask is None else d[mask.to(d.device)])
        return lanczos(matvec, n, k, "LA", tol, seed, self.dtype, maxiter=30)[0]

    def spectrum(self, mask: torch.Tensor | None, ncv: int, seed: int = 0) -> dict[str, np.ndarray]:
        """The spectral density of H (or of its block on ``mask``) by stochastic Lanczos quadrature
        (Papyan 2020; curvlinops' ``fast_lanczos`` from a seeded random start): ``nodes`` (Ritz
        values) and ``weights`` (squared first components of their eigenvectors, summing to 1),
        so the density is sum_i weights_i delta(lambda - nodes_i) smoothed
        (:func:`spectral_density`)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            nodes, vecs = spectrum.fast_lanczos(self.restrict(mask), ncv)
        return {
            "nodes": nodes.double().cpu().numpy(),
            "weights": (vecs[0] ** 2).double().cpu().numpy(),
        }


def model_hessian(
    model, batches: torch.Tensor, names: list[str] | None = None, chunk: int | None = None
) -> HessianOperator:
    """The Hessian operator of a ``HookedTransformer``'s mean next-token loss over token ``batches``
    [n_batches, batch, pos] at its current parameters (all, or ``names``); ``chunk``: batches per
    forward-over-reverse pass (default: all)."""
    from interp_ext.geometry.gradients import current_params, loss_function

    names = names or [n for n, _ in model.named_parameters()]
    theta = current_params(model, names)
    device = next(iter(theta.values())).device
    return HessianOperator(loss_function(model, names), theta, batches.to(device), chunk)


def hutchinson_trace(
    op: HessianOperator, n_probes: int, mask: torch.Tensor | None = None, seed: int = 0
) -> tuple[float, float]:
    """(estimate, standard error) of tr(H) or of its block's on ``mask``: the mean of ``n_probes``
    curvlinops Hutchinson estimates z^T H z (Rademacher z from ``seed``; unbiased, Hutchinson 1989)."""
    sub = op.restrict(mask)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        v = np.array([float(curvlinops.hutchinson_trace(sub, 1)) for _ in range(n_probes)])
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def spectral_density(
    nodes: np.ndarray,
    weights: np.ndarray,
    lo: float,
    hi: float,
    points: int = 200,
    kappa: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density) on [lo, hi] from Lanczos ``nodes`` and ``weights`` (:meth:`HessianOperator.spectrum`):
    each node a Gaussian bump, curvlinops' ``lanczos_approximate_spectrum_from_iter`` (Papyan
    2020's width ``kappa`` on the interval scaled to [-1, 1]; no margin added)."""
    grid, density = spectrum.lanczos_approximate_spectrum_from_iter(
        (torch.as_tensor(nodes), torch.as_tensor(np.sqrt(weights))[None]),
        (lo, hi),
        points,
        kappa,
        0.0,
    )
    return grid.numpy(), density.numpy()
