"""Feature matching between two dictionaries (Hungarian, ``scipy.optimize.linear_sum_assignment``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment


def decoder_cosine(w_a: torch.Tensor, w_b: torch.Tensor) -> np.ndarray:
    """Cosine between decoder directions (rows of W_dec): [n_a, n_b]."""
    a = w_a / w_a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = w_b / w_b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T).double().numpy()


def activation_correlation(f_a: torch.Tensor, f_b: torch.Tensor) -> np.ndarray:
    """Pearson correlation of feature activations on the same tokens: [n_a, n_b] (0 for dead features)."""
    a = f_a.double() - f_a.double().mean(0)
    b = f_b.double() - f_b.double().mean(0)
    na, nb = a.norm(dim=0), b.norm(dim=0)
    corr = (a.T @ b) / (na[:, None] * nb[None, :]).clamp_min(1e-12)
    corr[na == 0] = 0
    corr[:, nb == 0] = 0
    return corr.numpy()


def similarity_matrix(w_a=None, w_b=None, f_a=None, f_b=None, method: str = "both") -> np.ndarray:
    """``decoder`` cosine, ``activation`` correlation, or ``both`` (their minimum: both must agree)."""
    if method == "decoder":
        return decoder_cosine(w_a, w_b)
    if method == "activation":
        return activation_correlation(f_a, f_b)
    if method == "both":
        return np.minimum(decoder_cosine(w_a, w_b), activation_correlation(f_a, f_b))
    raise ValueError(f"method={method!r}: choose 'decoder', 'activation' or 'both'")


@dataclass
class LineageEvents:
    """Matches and events between dictionaries at t (a) and t+1 (b)."""

    pairs: pd.DataFrame  # feature_from, feature_to, similarity, event
    counts: dict[str, int] = field(default_factory=dict)


def match_features(
    sim: np.ndarray, threshold: float = 0.7, split_threshold: float | None = None
) -> LineageEvents:
    """Hungarian matching with a threshold, then births, deaths, splits and merges.

    * persisted: matched pair with similarity >= ``threshold``;
    * split: an unmatched feature of b whose best similarity to a matched
      feature of a is >= ``split_threshold`` (that a-feature split in two);
    * merged: an unmatched feature of a whose best similarity to a matched
      feature of b is >= ``split_threshold`` (two a-features merged into it);
    * born / died: unmatched otherwise.

    Counts: ``n_persisted``, ``n_born``, ``n_died``, ``n_split`` (a-features that
    split), ``n_merged`` (b-features that absorbed another).
    """
    split_threshold = threshold if split_threshold is None else split_threshold
    rows, cols = linear_sum_assignment(-sim)
    keep = sim[rows, cols] >= threshold
    rows, cols = rows[keep], cols[keep]
    records = [(int(r), int(c), float(sim[r, c]), "persisted") for r, c in zip(rows, cols)]
    # b-features left over: a split of a matched a-feature, or born; a-features: merged, or died
    born = _unmatched(
        sim.T, set(cols.tolist()), set(rows.tolist()), split_threshold, "split", "born"
    )
    died = _unmatched(
        sim, set(rows.tolist()), set(cols.tolist()), split_threshold, "merged", "died"
    )
    records += [(a, b, v, e) for b, a, v, e in born] + died
    events = [r[3] for r in records]
    counts = {
        "n_persisted": len(rows),
        "n_born": events.count("born"),
        "n_died": events.count("died"),
        "n_split": len({r[0] for r in records if r[3] == "split"}),
        "n_merged": len({r[1] for r in records if r[3] == "merged"}),
    }
    return LineageEvents(
        pd.DataFrame(records, columns=["feature_from", "feature_to", "similarity", "event"]), counts
    )


def _unmatched(
    sim: np.ndarray, matched: set, matched_other: set, threshold: float, attached: str, alone: str
) -> list[tuple]:
    """Records (feature, partner, similarity, event) for the unmatched rows of ``sim``: ``attached`` to
    their most similar matched column if it passes ``threshold``, else ``alone`` (partner -1)."""
    out = []
    for i in range(sim.shape[0]):
        if i in matched:
            continue
        j = int(np.argmax(sim[i])) if sim.shape[1] else -1
        if j >= 0 and j in matched_other and sim[i, j] >= threshold:
            out.append((i, j, float(sim[i, j]), attached))
        else:
            out.append((i, -1, float(sim[i, j]) if j >= 0 else 0.0, alone))
    return out


def universality(sim: np.ndarray, threshold: float = 0.7) -> float:
    """Fraction of features matched across two dictionaries (Hungarian, similarity >= threshold)."""
    rows, cols = linear_sum_assignment(-sim)
    return float((sim[rows, cols] >= threshold).sum() / max(sim.shape[0], 1))
