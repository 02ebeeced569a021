"""Sharpness: the top eigenvalues of the loss Hessian, plain and preconditioned by AdamW.

Adaptive optimizers train at the edge of stability of their *preconditioned*
Hessian (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"):
with AdamW's update -eta m_hat / (sqrt(v_hat) + eps), the preconditioner is

    P = (1 - beta1^t) (diag(sqrt(v_t / (1 - beta2^t))) + eps),

and on a quadratic the EMA-momentum iteration is stable only while
lambda_1(P^-1 H) < (2 + 2 beta1) / ((1 - beta1) eta) (38 / eta for beta1 = 0.9):
:func:`stability_threshold`.

P^-1 H is not symmetric, but it is similar to D^1/2 H D^1/2 with D = P^-1, which
is; Lanczos (scipy's ``eigsh``) runs on that operator, built from Hessian-vector
products (``torch.func``: forward-mode ``jvp`` of the reverse-mode ``grad``),
never a dense Hessian. ``mask`` restricts the operator to a block of coordinates
(a circuit's parameters): the top eigenvalue of that block of H.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.func import grad, jvp

log = logging.getLogger("interp_ext")


def stability_threshold(lr: float, beta1: float) -> float:
    """(2 + 2 beta1) / ((1 - beta1) lr): the preconditioned sharpness above which the
    momentum iteration diverges on a quadratic."""
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def adam_preconditioner(
    exp_avg_sq: dict[str, torch.Tensor], count: float, betas: tuple[float, float], eps: float
) -> dict[str, torch.Tensor]:
    """D = P^-1 per parameter, from AdamW's second moment after ``count`` steps (bias-corrected, eps
    included). ``count`` must be >= 1: before the first step AdamW has no preconditioner."""
    if count < 1:
        raise ValueError("AdamW has no preconditioner before its first step (count = 0)")
    beta1, beta2 = betas
    c1, c2 = 1.0 - beta1**count, 1.0 - beta2**count
    return {n: 1.0 / (c1 * ((v / c2).sqrt() + eps)) for n, v in exp_avg_sq.items()}


def top_eigenvalues(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int = 1,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    maxiter: int = 30,
) -> np.ndarray:
    """The ``k`` largest (algebraic) eigenvalues of a symmetric operator, largest first.

    ``matvec`` maps a [n] tensor of ``dtype`` to a [n] tensor; Lanczos (ARPACK via
    ``scipy.sparse.linalg.eigsh``) from a fixed random start, to relative tolerance ``tol``,
    with at most ``maxiter`` implicit restarts (a well-separated top eigenvalue needs one or
    two); eigenvalues that do not converge are NaN, with a warning, never a silent value.
    """

    def mv(x: np.ndarray) -> np.ndarray:
        out = matvec(torch.from_numpy(np.ascontiguousarray(x).ravel()).to(dtype))
        return out.detach().double().cpu().numpy()

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    try:
        vals = eigsh(
            op, k=k, which="LA", tol=tol, v0=v0, maxiter=maxiter, return_eigenvectors=False
        )
    except ArpackNoConvergence as err:
        log.warning(
            "Lanczos did not reach tolerance %g within %d restarts: %d of %d eigenvalues converged, the rest are NaN",
            tol,
            maxiter,
            len(err.eigenvalues),
            k,
        )
        vals = np.concatenate(
            [np.asarray(err.eigenvalues, float), np.full(k - len(err.eigenvalues), np.nan)]
        )
    return np.sort(vals)[::-1]


class HessianOperator:
    """Products with the Hessian of the mean loss over ``batches`` at ``theta``.

    Args:
        loss_fn: loss(params: dict, tokens) -> mean loss over the tokens' sequences
            (``interp_ext.geometry.loss_function``).
        theta: the parameters (a dict of tensors).
        batches: [n_batches, batch, pos] token batches of one size; the loss is their mean,
            i.e. the mean over all their sequences.
        chunk: batches per forward-over-reverse call (default: all at once).
    """

    def __init__(self, loss_fn, theta: dict[str, torch.Tensor], batches, chunk: int | None = None):
        self.loss_fn, self.theta = loss_fn, theta
        self.names = list(theta)
        chunk = chunk or batches.shape[0]
        self.groups = [
            batches[i : i + chunk].flatten(0, 1) for i in range(0, batches.shape[0], chunk)
        ]
        self.n = sum(t.numel() for t in theta.values())
        self.calls = 0

    def flat(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat [n] vector (one forward-over-reverse pass per group of batches)."""
        self.calls += 1
        tangent, start = {}, 0
        for n in self.names:
            size = self.theta[n].numel()
            tangent[n] = v[start : start + size].reshape(self.theta[n].shape)
            start += size
        total = None
        for tokens in self.groups:
            _, hv = jvp(lambda p, t=tokens: grad(self.loss_fn)(p, t), (self.theta,), (tangent,))
            part = self.flat(hv) * (tokens.shape[0] / sum(g.shape[0] for g in self.groups))
            total = part if total is None else total + part
        return total

    def gradient(self) -> torch.Tensor:
        """The flat gradient [n] of the mean loss at ``theta`` (the groups weighted as in :meth:`hvp`)."""
        total = None
        for tokens in self.groups:
            g = self.flat(grad(self.loss_fn)(self.theta, tokens))
            part = g * (tokens.shape[0] / sum(t.shape[0] for t in self.groups))
            total = part if total is None else total + part
        return total

    def block(self, mask: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """The dense block H[mask, mask] (a flat bool ``mask`` [n]), one Hessian-vector product per
        coordinate, ``chunk`` of them at a time (``torch.func.vmap``); symmetrised."""
        from torch.func import vmap

        dtype = next(iter(self.theta.values())).dtype
        device = next(iter(self.theta.values())).device
        idx = mask.nonzero().squeeze(1).to(device)
        rows = []
        for start in range(0, idx.numel(), chunk):
            part = idx[start : start + chunk]
            basis = torch.zeros(part.numel(), self.n, dtype=dtype, device=device)
            basis[torch.arange(part.numel(), device=device), part] = 1
            rows.append(vmap(self.hvp)(basis)[:, idx])
        self.calls += idx.numel() - len(rows)  # vmap counted one call per chunk
        dense = torch.cat(rows)
        return (dense + dense.T) / 2

    def block_matvec(self, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """v -> H[mask, mask] v for a flat bool ``mask`` [n] (the block's coordinates only)."""
        dtype = next(iter(self.theta.values())).dtype
        device = next(iter(self.theta.values())).device
        idx = mask.nonzero().squeeze(1).to(device)

        def matvec(x: torch.Tensor) -> torch.Tensor:
            full = torch.zeros(self.n, dtype=dtype, device=device)
            full[idx] = x.to(device, dtype)
            return self.hvp(full)[idx]

        return matvec

    def top(
        self,
        preconditioner: dict[str, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        k: int = 1,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> np.ndarray:
        """Top ``k`` eigenvalues of H, of P^-1 H (``preconditioner`` = D = P^-1 per parameter), or of
        either restricted to the coordinates ``mask`` (a flat bool [n])."""
        dtype = next(iter(self.theta.values())).dtype
        device = next(iter(self.theta.values())).device
        mask = torch.ones(self.n, dtype=torch.bool) if mask is None else mask
        block = self.block_matvec(mask)
        size = int(mask.sum())
        if preconditioner is None:
            matvec = block
        else:  # D^1/2 H D^1/2 on the block: the block's coordinates of D^1/2 on either side
            d = self.flat({n: t.to(dtype) for n, t in preconditioner.items()}).sqrt().to(device)
            half = d[mask.to(device)]

            def matvec(x: torch.Tensor) -> torch.Tensor:
                return half * block(half * x.to(device))

        return top_eigenvalues(matvec, size, k, tol, seed, dtype)


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


def quadratic_llc(
    hessian: np.ndarray, gradient: np.ndarray, n_beta: float, localization: float
) -> dict[str, float]:
    """What the LLC's estimator reads if the loss were its second-order Taylor expansion about the
    checkpoint, in closed form: ``hessian`` [k, k] and ``gradient`` [k] of the loss on the sampled
    coordinates.

    The localised, tempered posterior exp(-n_beta L(w) - gamma / 2 |w - w0|^2) of the quadratic
    L(w0 + d) = L(w0) + g.d + d'Hd / 2 is Gaussian with precision A = n_beta H + gamma I and mean
    mu = -n_beta A^-1 g, so n_beta E[L(w) - L(w0)] splits over H's eigendirections (h_i, g_i the
    gradient's component) into

        count    = sum_i n_beta h_i / (2 a_i)                       (a_i = n_beta h_i + gamma)
        gradient = -sum_i n_beta^2 g_i^2 (n_beta h_i + 2 gamma) / (2 a_i^2)

    the first a soft count of the directions curved beyond gamma / n_beta, the second negative
    wherever the checkpoint is not a stationary point. Where a_i <= 0 (curvature below
    -gamma / n_beta: ``improper`` directions) the quadratic posterior does not exist, a chain
    leaves along them until the higher-order terms stop it, and ``llc`` is NaN.
    """
    h, q = np.linalg.eigh(np.asarray(hessian, dtype=np.float64))
    g = q.T @ np.asarray(gradient, dtype=np.float64)
    a = n_beta * h + localization
    improper = a <= 0
    ok = ~improper
    count = float(np.sum(n_beta * h[ok] / (2 * a[ok])))
    grad_term = float(
        -np.sum(n_beta**2 * g[ok] ** 2 * (n_beta * h[ok] + 2 * localization) / (2 * a[ok] ** 2))
    )
    return {
        "llc": count + grad_term if not improper.any() else float("nan"),
        "count": count,
        "gradient_term": grad_term,
        "improper": int(improper.sum()),
        "hessian_min": float(h[0]),
        "hessian_max": float(h[-1]),
        "gradient_norm": float(np.linalg.norm(g)),
    }


def quadratic_gradient_term(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    gradient: torch.Tensor,
    n_beta: float,
    localization: float,
    tol: float = 1e-6,
    maxiter: int = 500,
) -> dict[str, float]:
    """The gradient term of :func:`quadratic_llc` without a dense Hessian, for blocks too large
    to hold one: with x = A^-1 g (A = n_beta H + gamma I, ``matvec`` the block's H v),

        gradient term = -n_beta^2 (g.x + gamma |x|^2) / 2,

    x by conjugate gradients. Where CG meets a direction with p'Ap <= 0, A is not positive
    definite and the quadratic posterior does not exist: the term is then NaN and ``improper`` 1
    (a negative direction CG never meets, one orthogonal to the Krylov space of g, goes
    unseen). ``iterations``: CG steps to a residual below ``tol`` |g|."""
    g = gradient.double()
    x = torch.zeros_like(g)
    r, p = g.clone(), g.clone()
    rr = float(r @ r)
    stop = tol**2 * rr
    for it in range(1, maxiter + 1):
        ap = n_beta * matvec(p.to(gradient.dtype)).double() + localization * p
        curv = float(p @ ap)
        if curv <= 0:
            return {"gradient_term": float("nan"), "improper": 1, "iterations": it}
        alpha = rr / curv
        x += alpha * p
        r -= alpha * ap
        new = float(r @ r)
        if new <= stop:
            break
        p = r + (new / rr) * p
        rr = new
    else:
        log.warning("CG did not reach residual %g |g| in %d steps", tol, maxiter)
    term = -(n_beta**2) * (float(g @ x) + localization * float(x @ x)) / 2
    return {"gradient_term": term, "improper": 0, "iterations": it}


def hutchinson_trace(
    op: HessianOperator, n_probes: int, mask: torch.Tensor | None = None, seed: int = 0
) -> tuple[float, float]:
    """(estimate, standard error) of tr(H), or of the trace of H's block on the coordinates
    ``mask``: the mean of z^T H z over ``n_probes`` Rademacher vectors z (zero off the block),
    an unbiased estimate (Hutchinson 1989)."""
    dtype = next(iter(op.theta.values())).dtype
    device = next(iter(op.theta.values())).device
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_probes):
        z = torch.randint(0, 2, (op.n,), generator=gen).to(dtype) * 2 - 1
        if mask is not None:
            z = z * mask.to(dtype)
        z = z.to(device)
        values.append(float(z @ op.hvp(z)))
    v = np.asarray(values)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


__all__ = [
    "HessianOperator",
    "quadratic_llc",
    "quadratic_gradient_term",
    "hutchinson_trace",
    "adam_preconditioner",
    "stability_threshold",
    "top_eigenvalues",
]
