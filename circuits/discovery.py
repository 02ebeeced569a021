"""Circuits found by cause: induction heads and the earlier heads their keys read.

Detection by score (SPEC section 7) keeps one previous-token partner per
induction head, chosen by K-composition x previous-token score. When the
previous-token function is spread over several heads, that leaves part of the
circuit out. Here the partners are chosen by what they do:

1. Induction heads: heads in layer >= 1 whose induction score exceeds a threshold.
2. For every earlier head, its key-path share: patch its clean output into an
   induction head's key input in the corrupted run ([BOS] + r' + r) and measure
   how much of the receiver's attention to its induction targets comes back
   (:func:`circuits.patching.path_patch_attention`, 0 = corrupted, 1 = clean);
   the best share over the induction heads counts.
3. Candidates: earlier heads with a share of at least ``min_share`` (default 10%).
4. The set: the smallest subset of the candidates (searched exhaustively, as a
   model of this size allows) whose joint key-path patch restores at least
   ``together`` (default 80%) of the target attention, averaged over the
   induction heads; among subsets of that size, the one restoring most.
5. When no subset reaches the bar, the circuit falls back to the whole layer
   before the induction heads, labelled as such.

Every member records how it was chosen; the restoration of the chosen set and
of all earlier heads together are reported beside it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from transformer_lens import HookedTransformer

from circuits.circuit import Circuit, Head, all_heads
from circuits.induction import DEFAULT_THRESHOLD, detect_induction_heads, head_scores
from circuits.patching import InductionTask, induction_task, path_patch_attention

DEFAULT_MIN_SHARE = 0.1
DEFAULT_TOGETHER = 0.8


@dataclass
class Discovery:
    """A circuit found by cause, with the measurements behind each member."""

    circuit: Circuit
    shares: pd.DataFrame  # sender, receiver, share (key-path attention metric of the sender alone)
    set_restoration: dict[
        str, float
    ]  # receiver -> restoration by the chosen earlier heads together
    earlier_restoration: dict[str, float]  # receiver -> restoration by every earlier head together
    method: dict[str, str] = field(default_factory=dict)  # member -> how it was chosen
    fallback: bool = False

    @property
    def mean_set_restoration(self) -> float:
        return _mean(self.set_restoration.values())

    @property
    def mean_earlier_restoration(self) -> float:
        return _mean(self.earlier_restoration.values())


def _mean(values) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def key_path_shares(
    model: HookedTransformer, task: InductionTask, receivers: list[str]
) -> pd.DataFrame:
    """The attention metric of every earlier head's key path into every receiver."""
    rows = []
    for receiver in receivers:
        r = Head.parse(receiver)
        for sender in all_heads(model):
            if sender.layer < r.layer:
                share = path_patch_attention(model, task, str(sender), receiver, "k")
                rows.append({"sender": str(sender), "receiver": receiver, "share": share})
    return pd.DataFrame(rows, columns=["sender", "receiver", "share"])


def joint_restoration(
    model: HookedTransformer, task: InductionTask, senders: list[str], receivers: list[str]
) -> dict[str, float]:
    """Receiver -> attention metric of the senders' key paths patched together."""
    out = {}
    for receiver in receivers:
        layer = Head.parse(receiver).layer
        earlier = [s for s in senders if Head.parse(s).layer < layer]
        out[receiver] = (
            path_patch_attention(model, task, earlier, receiver, "k") if earlier else 0.0
        )
    return out


def smallest_sufficient_set(
    model: HookedTransformer,
    task: InductionTask,
    candidates: list[str],
    receivers: list[str],
    together: float,
) -> tuple[list[str], dict[str, float]] | None:
    """The smallest subset of ``candidates`` restoring >= ``together`` on average; the best of that size."""
    for size in range(1, len(candidates) + 1):
        best = None
        for subset in itertools.combinations(candidates, size):
            restored = joint_restoration(model, task, list(subset), receivers)
            score = _mean(restored.values())
            if score >= together and (best is None or score > best[2]):
                best = (list(subset), restored, score)
        if best is not None:
            return best[0], best[1]
    return None


def discover_induction_circuit(
    model: HookedTransformer,
    repeated: Int[torch.Tensor, "batch pos"],
    threshold: float = DEFAULT_THRESHOLD,
    min_share: float = DEFAULT_MIN_SHARE,
    together: float = DEFAULT_TOGETHER,
    corruption_seed: int = 0,
    name: str = "induction-by-cause",
) -> Discovery:
    """Induction heads by score, their previous-token heads by key-path patching (module docstring).

    Args:
        repeated: [BOS] + r + r token sequences.
        threshold: induction score an induction head needs.
        min_share: key-path share an earlier head needs to be a candidate.
        together: share the chosen set must restore together (mean over induction heads).

    Returns:
        A :class:`Discovery`; its circuit holds the induction heads (role ``induction``)
        and the chosen earlier heads (role ``prev_token``). With no head above the
        threshold, the best layer >= 1 head is taken (method ``best_score``).
    """
    scores = head_scores(model, repeated)
    heads = detect_induction_heads(scores, threshold)
    method = dict.fromkeys(heads, "induction_score")
    if not heads:
        ind = scores[scores.metric == "induction_score"]
        ind = ind[ind.component.map(lambda c: Head.parse(c).layer >= 1)]
        heads = [ind.sort_values("value").iloc[-1]["component"]]
        method = {heads[0]: "best_score"}
    task = induction_task(model, repeated, seed=corruption_seed)
    shares = key_path_shares(model, task, heads)
    best = shares.groupby("sender")["share"].max()
    candidates = [s for s in best.sort_values(ascending=False).index if best[s] >= min_share]
    earlier = sorted({s for s in shares.sender})
    earlier_restoration = joint_restoration(model, task, earlier, heads)
    found = (
        smallest_sufficient_set(model, task, candidates, heads, together) if candidates else None
    )
    fallback = found is None
    if fallback:
        layer = min(Head.parse(h).layer for h in heads) - 1
        members = [str(h) for h in all_heads(model) if h.layer == layer]
        restoration = joint_restoration(model, task, members, heads)
        method.update(dict.fromkeys(members, "fallback_whole_layer"))
    else:
        members, restoration = found
        method.update(dict.fromkeys(members, "key_path"))
    roles = dict.fromkeys(heads, "induction") | dict.fromkeys(members, "prev_token")
    circuit = Circuit(name, heads + [m for m in members if m not in heads], roles)
    return Discovery(circuit, shares, restoration, earlier_restoration, method, fallback)
