"""The saddle signature of a block: the curvature its own AdamW flow meets, and its softest modes.

Along the block's own expected flow u_C = -D_C^-1 gbar_C (weight decay aside) the energy of its
mean gradient moves at d/dt ||gbar_C||^2 = 2 gbar_C^T H_CC u_C = -2 gbar_C^T H_CC D_C^-1 gbar_C.
So the **curvature met by the flow**

    rho = gbar_C^T H_CC D_C^-1 gbar_C / (gbar_C^T D_C^-1 gbar_C)

is negative exactly when the block's own flow raises its mean-gradient energy: the flow runs
along a direction of negative curvature, away from a saddle. The denominator is the flow's own
rate of loss decrease, positive in expectation; its estimate can come out negative where the
mean gradient is small beside the noise, which flips rho's sign, so read rho beside
``flow_rate`` and its spread over seeds. Both are estimated without the bias a noisy gbar puts in a
quadratic form: gbar comes from two independent halves of fresh batches, a and b, and each form
is the symmetric cross product (gbar_a^T M gbar_b + gbar_b^T M gbar_a) / 2, unbiased for
gbar^T M gbar.

The **soft modes**: the lowest eigenvalues of Hhat = D_C^-1/2 H_CC D_C^-1/2 (symmetric, similar
to D^-1 H_CC, whose eigenvalues set how AdamW's flow moves along each mode) by Lanczos, and the
flow's share (q_i . w)^2 / |w|^2 in each eigenvector q_i, w = D_C^-1/2 gbar_C.
"""

from __future__ import annotations

import numpy as np
import torch


def flow_curvature(
    hess, mask: torch.Tensor, inv_d: torch.Tensor, gbar_a: torch.Tensor, gbar_b: torch.Tensor
) -> dict[str, float]:
    """``rho``, its numerator ``flow_curvature`` (gbar^T H_CC D^-1 gbar) and denominator
    ``flow_rate`` (gbar^T D^-1 gbar) on the block ``mask``, each the symmetric cross product of two
    independent gradient estimates (``hess``: a ``HessianOperator``; ``inv_d``: 1 / D, flat)."""
    dtype = gbar_a.dtype
    m = mask.to(gbar_a.device)
    a = torch.where(m, gbar_a, torch.zeros_like(gbar_a))
    b = torch.where(m, gbar_b, torch.zeros_like(gbar_b))
    inv = inv_d.to(dtype)
    h_da = hess.hvp(inv * a)[m].to(dtype)  # (H D^-1 gbar_a) on the block
    h_db = hess.hvp(inv * b)[m].to(dtype)
    curvature = float((b[m] @ h_da + a[m] @ h_db) / 2)
    rate = float((a[m] * inv[m]) @ b[m])
    return {
        "flow_curvature": curvature,
        "flow_rate": rate,
        "rho": curvature / rate if rate != 0 else float("nan"),
    }


def soft_modes(
    hess,
    mask: torch.Tensor,
    inv_d: torch.Tensor,
    gbar: torch.Tensor,
    k: int = 3,
    tol: float = 1e-2,
    ncv: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The ``k`` lowest eigenvalues of Hhat = D^-1/2 H_CC D^-1/2 on the block ``mask`` (ascending),
    the overlap of w = D^-1/2 gbar_C with each eigenvector, and ``hvps``: the Hessian-vector
    products spent. Eigenvalues that do not converge are NaN (with a warning), never a silent
    value; their overlaps too."""
    from interp_ext.geometry.curvature import lanczos

    device = gbar.device
    idx = mask.nonzero().squeeze(1).to(device)
    half, calls = inv_d.to(device)[idx].sqrt().double(), hess.calls
    matvec = hess.preconditioned(mask, half)
    vals, vecs = lanczos(
        matvec, idx.numel(), k, "SA", tol, seed, torch.float64, ncv=ncv, vectors=True
    )
    w = (half * gbar.double()[idx]).cpu().numpy()
    overlap = (vecs.T @ w) ** 2 / float(w @ w) if float(w @ w) > 0 else np.full(k, np.nan)
    return {"eigenvalues": vals, "overlap": overlap, "hvps": hess.calls - calls}
