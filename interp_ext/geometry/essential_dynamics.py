"""Developmental stages from the model's outputs: essential dynamics and progress measures.

Essential dynamics (Hoogland et al. 2024, "The developmental landscape of in-context
learning"): stack the model's outputs on a fixed probe at every checkpoint into a
matrix [checkpoints, features], take its principal components, and read stage
boundaries from the turning points of the checkpoints' trajectory in PC space.
Here the features are the log-probabilities the model gives the run's most frequent
tokens at every position of the held-out probe (log-softmax removes the logits'
free additive shift), and a turning point is a checkpoint where a smoothed PC score
stops rising and starts falling or the reverse.

Progress measures (Olsson et al. 2022): the loss at every context position over
training (the batch mean of :func:`token_losses`); the in-context-learning and prefix-matching
(induction) scores come from :mod:`circuits.induction`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer


@torch.no_grad()
def output_features(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], token_ids: torch.Tensor
) -> Float[torch.Tensor, " features"]:
    """log p(token | context) for every token in ``token_ids`` at every position, flattened."""
    logits = model(tokens, return_type="logits").float()
    return logits.log_softmax(-1)[..., token_ids.to(logits.device)].flatten().cpu()


@torch.no_grad()
def token_losses(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch pos_minus_1"]:
    """Next-token loss of every sequence at every position (position p predicts token p + 1); its
    mean over the batch is the loss by position."""
    return model(tokens, return_type="loss", loss_per_token=True).float().cpu()


def essential_dynamics(
    features: Float[np.ndarray, "checkpoints features"], n_components: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [checkpoints, k], explained variance ratio [k]) of the centred features' PCA.

    Signs are fixed so that each component's score rises from the first checkpoint to the last
    (an SVD leaves them arbitrary).
    """
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(n_components, len(s))
    scores = u[:, :k] * s[:k]
    flip = np.where(scores[-1] < scores[0], -1.0, 1.0)
    total = float((s**2).sum())
    return scores * flip, (s[:k] ** 2) / total if total > 0 else np.zeros(k)


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average over ``width`` points (odd), shrinking at the ends."""
    if width <= 1:
        return np.asarray(values, float)
    half = width // 2
    v = np.asarray(values, float)
    return np.array([v[max(0, i - half) : i + half + 1].mean() for i in range(len(v))])


def turning_points(
    steps: np.ndarray, curve: np.ndarray, width: int = 3, min_share: float = 0.05
) -> list[float]:
    """Steps where the smoothed curve turns (its discrete derivative changes sign).

    A turn counts only if the moves on both sides each exceed ``min_share`` of the curve's
    range, so that flat noise does not produce boundaries.
    """
    y = smooth(curve, width)
    span = float(np.ptp(y)) if len(y) else 0.0
    if len(y) < 3 or span == 0:
        return []
    d = np.diff(y)
    out = []
    i = 0
    # runs of one sign of the derivative, ignoring exact zeros
    runs: list[tuple[int, int, float]] = []  # (start index, end index, total move)
    while i < len(d):
        sign = np.sign(d[i])
        j = i
        while j + 1 < len(d) and np.sign(d[j + 1]) in (sign, 0):
            j += 1
        runs.append((i, j + 1, float(d[i : j + 1].sum())))
        i = j + 1
    for (_, end, move), (_, _, nxt) in zip(runs, runs[1:]):
        if abs(move) >= min_share * span and abs(nxt) >= min_share * span:
            out.append(float(steps[end]))
    return out


def boundary_match(
    boundaries: list[float], formation: float, steps: np.ndarray, tolerance: float
) -> tuple[bool, float]:
    """(a boundary lies within ``tolerance`` of the formation step, the chance of that for a
    formation step drawn uniformly over the measured steps: the null each seed is read against)."""
    if not boundaries or not math.isfinite(formation):
        return False, math.nan if not math.isfinite(formation) else 0.0
    lo, hi = float(np.min(steps)), float(np.max(steps))
    grid = np.linspace(lo, hi, 2001)
    near = np.min(np.abs(grid[:, None] - np.asarray(boundaries)[None, :]), axis=1) <= tolerance
    return bool(min(abs(b - formation) for b in boundaries) <= tolerance), float(near.mean())


def poisson_binomial_tail(k: int, probs: list[float]) -> float:
    """P(X >= k) for X a sum of independent Bernoulli(p_i): how often chance matches k seeds."""
    dist = np.zeros(len(probs) + 1)
    dist[0] = 1.0
    for p in probs:
        dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
        dist[0] *= 1 - p
    return float(dist[k:].sum())


__all__ = [
    "boundary_match",
    "essential_dynamics",
    "token_losses",
    "output_features",
    "poisson_binomial_tail",
    "smooth",
    "turning_points",
]
