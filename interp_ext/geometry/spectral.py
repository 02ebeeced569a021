"""Pure math of the gradient covariance G (SPEC section 4), on synthetic-friendly tensors.

G = (1/B) sum_b g_b g_b^T is never formed: its non-zero spectrum is the spectrum of
the B x B Gram matrix K_ab = g_a . g_b / B, and with eigenpairs (lambda_i, v_i) of
K the eigenvectors of G are u_i = sum_b v_ib g_b / sqrt(B lambda_i).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float

EPS = 1e-30


def gram(
    grads: Float[torch.Tensor, "B n_params"], centered: bool = False
) -> Float[torch.Tensor, "B B"]:
    """g g^T (float64), optionally of the mean-centred rows, without copying the gradients.

    The product runs in the gradients' dtype; only the B x B result is promoted.
    """
    k = (grads @ grads.T).double()
    return center_gram(k) if centered else k


def center_gram(k: Float[torch.Tensor, "B B"]) -> Float[torch.Tensor, "B B"]:
    """The Gram matrix of the mean-centred rows, H K H with H = I - 11^T / B, from K itself."""
    b = k.shape[0]
    h = torch.eye(b, dtype=k.dtype) - 1.0 / b
    return h @ k @ h


def gram_eigen(
    grads: Float[torch.Tensor, "B n_params"],
    centered: bool = False,
    gram_matrix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of K = g g^T / B, eigenvalues descending and clamped at 0.

    Returns:
        (lambda [B], V [B, B]) with V's columns the eigenvectors.
    """
    k = (gram(grads, centered) if gram_matrix is None else gram_matrix) / grads.shape[0]
    evals, evecs = torch.linalg.eigh(k)
    order = torch.argsort(evals, descending=True)
    return evals[order].clamp_min(0.0), evecs[:, order]


def top_eigenvectors(
    grads: Float[torch.Tensor, "B n_params"],
    evals: torch.Tensor,
    evecs: torch.Tensor,
    k: int,
    centered: bool = False,
) -> Float[torch.Tensor, "n_params k"]:
    """u_i = sum_b v_ib g_b / sqrt(B lambda_i) for the top ``k`` (orthonormal columns, the gradients' dtype)."""
    b = grads.shape[0]
    k = min(k, int((evals > evals[0] * 1e-12).sum()) if evals[0] > 0 else 0) or 1
    v = evecs[:, :k]
    if centered:  # sum_b v_b (g_b - gbar) = sum_b (v_b - mean v) g_b
        v = v - v.mean(0, keepdim=True)
    scale = (b * evals[:k]).clamp_min(EPS).sqrt()
    # in the gradients' dtype: a float64 copy of an n_params x k matrix would double its memory
    return (grads.T @ v.to(grads.dtype)).div_(scale.to(grads.dtype))


def effective_rank(evals: torch.Tensor) -> float:
    """exp(entropy of p), p_i = lambda_i / sum lambda (Roy and Vetterli)."""
    p = evals.double() / evals.sum().clamp_min(EPS)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def participation_ratio(evals: torch.Tensor) -> float:
    """(sum lambda)^2 / sum lambda^2."""
    e = evals.double()
    return float(e.sum() ** 2 / (e**2).sum().clamp_min(EPS))


def topk_variance(evals: torch.Tensor, k: int) -> float:
    """sum of the top-k eigenvalues / sum of all."""
    e = evals.double()
    return float(e[:k].sum() / e.sum().clamp_min(EPS))


def energy_in_subspace(
    basis: Float[torch.Tensor, "n_params k"], grads: Float[torch.Tensor, "H n_params"]
) -> float:
    """mean over rows h of ||U^T g_h||^2 / ||g_h||^2."""
    proj = (grads @ basis.to(grads.dtype)).double().pow(2).sum(1)
    norms = torch.einsum("hi,hi->h", grads, grads).double()
    return float((proj / norms.clamp_min(EPS)).mean())


def mean_pairwise_cosine(
    grads: Float[torch.Tensor, "B n_params"], gram_matrix: torch.Tensor | None = None
) -> float:
    """Mean cosine over distinct pairs (a != b), from the Gram matrix g g^T."""
    k = gram(grads) if gram_matrix is None else gram_matrix
    d = k.diagonal().clamp_min(EPS).sqrt()
    c = k / (d[:, None] * d[None, :])
    b = k.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (b * (b - 1)))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(EPS))


def subspace_overlap(u: Float[torch.Tensor, "n k"], v: Float[torch.Tensor, "n k"]) -> float:
    """||U^T V||_F^2 / k, in [0, 1] for orthonormal columns."""
    k = max(u.shape[1], v.shape[1])
    return float((u.T @ v.to(u.dtype)).double().pow(2).sum() / k)


def top_vector_similarity(u: Float[torch.Tensor, "n k"], v: Float[torch.Tensor, "n k"]) -> float:
    """|u_1 . v_1|."""
    return float((u[:, 0] @ v[:, 0].to(u.dtype)).abs())


def principal_angles(u: Float[torch.Tensor, "n k"], v: Float[torch.Tensor, "n k"]) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of u and v.

    From the k x k products only: with u^T u = L_u L_u^T (Cholesky), Q_u = u L_u^{-T} is an orthonormal
    basis of span(u), so the cosines are the singular values of L_u^{-1} u^T v L_v^{-T}. No QR of the
    n_params x k matrices (a tall QR over millions of rows costs seconds at the paper preset)."""
    u, v = u.double(), v.double()
    lu = torch.linalg.cholesky(u.T @ u)
    lv = torch.linalg.cholesky(v.T @ v)
    m = torch.linalg.solve_triangular(lu, u.T @ v, upper=False)
    m = torch.linalg.solve_triangular(lv, m.T, upper=False).T
    s = torch.linalg.svdvals(m).clamp(-1.0, 1.0)
    return torch.sort(torch.arccos(s)).values


def drift_rate(u: torch.Tensor, v: torch.Tensor, delta_steps: int) -> float:
    """Stream 1: mean principal angle between U_t and U_{t - Delta}, per step."""
    return float(principal_angles(u, v).mean()) / delta_steps


def linear_cka(k1: Float[torch.Tensor, "B B"], k2: Float[torch.Tensor, "B B"]) -> float:
    """Linear CKA of two Gram matrices on the same B batches (SPEC section 5):
    <H K1 H, H K2 H>_F / (||H K1 H||_F ||H K2 H||_F), H = I - 11^T / B.

    Invariant to any orthogonal change of the coordinates the Grams were formed in
    (g -> R g leaves g_a . g_b unchanged), so it compares what the batches do, not the basis.
    """
    a, b = center_gram(k1.double()), center_gram(k2.double())
    denom = float(a.norm() * b.norm())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def unbiased_hsic(k1: torch.Tensor, k2: torch.Tensor) -> float:
    """The unbiased HSIC estimator of Song et al. 2012 (a U-statistic; needs B >= 4):

    [tr(K1~ K2~) + 1'K1~1 1'K2~1 / ((B-1)(B-2)) - 2/(B-2) 1'K1~ K2~1] / (B(B-3)),

    K~ the Gram with its diagonal set to 0. Unlike the centred-Gram (biased) estimator, it does
    not read the diagonal (each batch's own squared gradient norm), so batches whose gradients
    are nearly orthogonal with similar norms do not make two Grams look alike."""
    n = k1.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 batches, got {n}")
    a = k1.double() - torch.diag(torch.diagonal(k1.double()))
    b = k2.double() - torch.diag(torch.diagonal(k2.double()))
    ones = torch.ones(n, dtype=torch.float64, device=a.device)
    term = (
        (a * b).sum()
        + a.sum() * b.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (ones @ a @ b @ ones)
    )
    return float(term / (n * (n - 3)))


def linear_cka_unbiased(k1: Float[torch.Tensor, "B B"], k2: Float[torch.Tensor, "B B"]) -> float:
    """Linear CKA from the unbiased HSIC (Nguyen et al. 2021): HSIC_u(K1, K2) /
    sqrt(HSIC_u(K1, K1) HSIC_u(K2, K2)); near 0 in expectation for unrelated Grams, and NaN when
    either self-term is not positive."""
    denom = unbiased_hsic(k1, k1) * unbiased_hsic(k2, k2)
    return unbiased_hsic(k1, k2) / math.sqrt(denom) if denom > 0 else float("nan")


def split_half_bases(
    grads: Float[torch.Tensor, "B n_params"],
    k: int,
    centered: bool = False,
    gram_matrix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """U from batches 1..B/2 and U from B/2+1..B: two estimates of U_t on disjoint batches.

    ``gram_matrix``: the uncentred Gram of all B batches, whose diagonal blocks are the halves' Grams
    (saves two B/2 x n_params products)."""
    half = grads.shape[0] // 2
    out = []
    for rows in (slice(0, half), slice(half, 2 * half)):
        part = grads[rows]
        block = None
        if gram_matrix is not None:
            block = gram_matrix[rows, rows]
            block = center_gram(block) if centered else block
        evals, evecs = gram_eigen(part, centered, block)
        out.append(top_eigenvectors(part, evals, evecs, k, centered))
    return out[0], out[1]


def split_half_floor(
    grads: Float[torch.Tensor, "B n_params"],
    k: int,
    centered: bool = False,
    gram_matrix: torch.Tensor | None = None,
) -> dict[str, float]:
    """What the subspace metrics read between two independent draws of half the batches at one
    checkpoint: their noise floor (``overlap``, ``top_eigvec``, and the mean principal ``angle``)."""
    u, v = split_half_bases(grads, k, centered, gram_matrix)
    return {
        "overlap_floor": subspace_overlap(u, v),
        "top_eigvec_floor": top_vector_similarity(u, v),
        "angle_floor": float(principal_angles(u, v).mean()),
    }


def gradient_snr(
    grads: Float[torch.Tensor, "B n_params"], gram_matrix: torch.Tensor | None = None
) -> float:
    """||gbar||^2 / trace of the centred covariance (1/B) sum_b ||g_b - gbar||^2, from the Gram matrix."""
    k = gram(grads) if gram_matrix is None else gram_matrix
    b = k.shape[0]
    mean_sq = float(k.sum()) / b**2
    noise = float(k.diagonal().sum()) / b - mean_sq
    return mean_sq / noise if noise > 0 else float("inf")


def block_grams(
    grads: Float[torch.Tensor, "B n_params"], blocks: dict[str, list[slice]]
) -> dict[str, torch.Tensor]:
    """B x B Gram matrix of each block of coordinates (a union of slices), float64."""
    out = {}
    for name, slices in blocks.items():
        k = torch.zeros(grads.shape[0], grads.shape[0], dtype=torch.float64)
        for sl in slices:
            part = grads[:, sl]
            k += (part @ part.T).double()
        out[name] = k
    return out


def spectrum_metrics(evals: torch.Tensor, k: int) -> dict[str, float]:
    return {
        "effective_rank": effective_rank(evals),
        "participation_ratio": participation_ratio(evals),
        "topk_variance": topk_variance(evals, k),
        "top1_variance": topk_variance(evals, 1),
    }


__all__ = [
    "block_grams",
    "cosine",
    "drift_rate",
    "effective_rank",
    "energy_in_subspace",
    "gradient_snr",
    "gram_eigen",
    "linear_cka",
    "mean_pairwise_cosine",
    "participation_ratio",
    "principal_angles",
    "spectrum_metrics",
    "split_half_bases",
    "split_half_floor",
    "subspace_overlap",
    "top_eigenvectors",
    "top_vector_similarity",
    "topk_variance",
]
