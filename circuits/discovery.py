"""Circuits found by cause: induction heads and the earlier components their keys read.

Detection by score (SPEC section 7) keeps one previous-token partner per
induction head, chosen by K-composition x previous-token score. When the
previous-token function is spread over several heads, or passes through an MLP,
that leaves part of the circuit out. Here the partners are chosen by what they do:

1. Induction heads: heads in layer >= 1 whose induction score exceeds a threshold.
2. Senders: every earlier head ``L{l}H{h}`` and, in models with MLPs, every
   earlier MLP ``L{l}MLP``. For each, its key-path share: patch its clean output
   into an induction head's key input in the corrupted run ([BOS] + r' + r) and
   measure how much of the receiver's attention to its induction targets comes
   back (:func:`circuits.patching.path_patch_attention`, 0 = corrupted,
   1 = clean); the best share over the induction heads counts.
3. Routes through MLPs: for each earlier head (and the embeddings) and each MLP
   between it and the receiver, the share of the route ``L{l}H{h}>L{m}MLP``: the
   head's clean output patched into that MLP's input only, and the MLP's changed
   output into the key input. It says whether an MLP that carries the key path
   relays a head (a previous-token route) or works from the tokens themselves.
4. The set: the smallest subset of all senders whose joint key-path patch
   restores at least ``together`` (default 80%) of the target attention,
   averaged over the induction heads; among subsets of that size, the one
   restoring most. Every subset up to ``max_size`` members is tried, in order of
   the members' individual shares: the order only decides which of equally good
   sets is met first, nothing is left out for a small share (key-path effects
   are super-additive: two heads at 8% each can restore 80% together).
5. When no subset reaches the bar, the circuit falls back to the whole layer
   before the induction heads (its heads and its MLP), labelled as such.

Every member records how it was chosen; the restoration of the chosen set and
of all earlier senders together are reported beside it.
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
from circuits.patching import (
    InductionTask,
    induction_task,
    path_patch_attention,
    sender_layer,
)

DEFAULT_TOGETHER = 0.8
DEFAULT_MAX_SIZE = 4


@dataclass
class Discovery:
    """A circuit found by cause, with the measurements behind each member."""

    circuit: Circuit
    shares: pd.DataFrame  # sender, receiver, share (key-path attention metric of the sender alone)
    set_restoration: dict[
        str, float
    ]  # receiver -> restoration by the chosen earlier senders together
    earlier_restoration: dict[
        str, float
    ]  # receiver -> restoration by every earlier sender together
    method: dict[str, str] = field(default_factory=dict)  # member -> how it was chosen
    fallback: bool = False
    routes: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["sender", "via", "receiver", "share"])
    )  # the key-path share of each sender through each MLP on the way
    subsets_tried: int = 0
    best_by_size: dict[int, float] = field(default_factory=dict)  # size -> best mean restoration

    @property
    def mean_set_restoration(self) -> float:
        return _mean(self.set_restoration.values())

    @property
    def mean_earlier_restoration(self) -> float:
        return _mean(self.earlier_restoration.values())


def _mean(values) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def earlier_senders(model: HookedTransformer, layer: int) -> list[str]:
    """Heads and (in models with MLPs) MLPs before ``layer``: what can write a layer-``layer`` key."""
    mlps = [] if model.cfg.attn_only else [f"L{l}MLP" for l in range(layer)]
    return [str(h) for h in all_heads(model) if h.layer < layer] + mlps


def key_path_shares(
    model: HookedTransformer, task: InductionTask, receivers: list[str]
) -> pd.DataFrame:
    """The attention metric of every earlier sender's key path into every receiver."""
    rows = []
    for receiver in receivers:
        for sender in earlier_senders(model, Head.parse(receiver).layer):
            share = path_patch_attention(model, task, sender, receiver, "k")
            rows.append({"sender": sender, "receiver": receiver, "share": share})
    return pd.DataFrame(rows, columns=["sender", "receiver", "share"])


def route_shares(
    model: HookedTransformer, task: InductionTask, receivers: list[str]
) -> pd.DataFrame:
    """The key-path share of each earlier head (``EMBED``, and ``all_heads`` up to that layer
    together) through each MLP on its way to each receiver: route ``SENDER>L{m}MLP``, the
    sender patched into MLP m's input only."""
    rows = []
    if model.cfg.attn_only:
        return pd.DataFrame(rows, columns=["sender", "via", "receiver", "share"])
    for receiver in receivers:
        r_layer = Head.parse(receiver).layer
        for via in range(r_layer):
            heads = [str(h) for h in all_heads(model) if h.layer <= via]
            senders = {"EMBED": "EMBED", **{h: h for h in heads}, "all_heads": "+".join(heads)}
            for name, source in senders.items():
                share = path_patch_attention(model, task, f"{source}>L{via}MLP", receiver, "k")
                rows.append(
                    {"sender": name, "via": f"L{via}MLP", "receiver": receiver, "share": share}
                )
    return pd.DataFrame(rows, columns=["sender", "via", "receiver", "share"])


def joint_restoration(
    model: HookedTransformer, task: InductionTask, senders: list[str], receivers: list[str]
) -> dict[str, float]:
    """Receiver -> attention metric of the senders' key paths patched together."""
    out = {}
    for receiver in receivers:
        layer = Head.parse(receiver).layer
        earlier = [s for s in senders if sender_layer(s) < layer]
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
    max_size: int = DEFAULT_MAX_SIZE,
) -> tuple[tuple[list[str], dict[str, float]] | None, int, dict[int, float]]:
    """The smallest subset of ``candidates`` (at most ``max_size``) restoring >= ``together`` on
    average, the best of that size; how many subsets were tried; the best mean restoration at
    each size tried (how much a second member adds: key-path effects are not additive)."""
    tried, by_size = 0, {}
    for size in range(1, min(max_size, len(candidates)) + 1):
        best = None
        for subset in itertools.combinations(candidates, size):
            restored = joint_restoration(model, task, list(subset), receivers)
            tried += 1
            score = _mean(restored.values())
            by_size[size] = max(by_size.get(size, -math.inf), score)
            if score >= together and (best is None or score > best[2]):
                best = (list(subset), restored, score)
        if best is not None:
            return (best[0], best[1]), tried, by_size
    return None, tried, by_size


def discover_induction_circuit(
    model: HookedTransformer,
    repeated: Int[torch.Tensor, "batch pos"],
    threshold: float = DEFAULT_THRESHOLD,
    together: float = DEFAULT_TOGETHER,
    max_size: int = DEFAULT_MAX_SIZE,
    corruption_seed: int = 0,
    name: str = "induction-by-cause",
) -> Discovery:
    """Induction heads by score, the heads and MLPs their keys read by key-path patching (module docstring).

    Args:
        repeated: [BOS] + r + r token sequences.
        threshold: induction score an induction head needs.
        together: share the chosen set must restore together (mean over induction heads).
        max_size: largest subset of earlier senders searched.

    Returns:
        A :class:`Discovery`; its circuit holds the induction heads (role ``induction``),
        the chosen earlier heads (role ``prev_token``) and MLPs (role ``key_mlp``). With
        no head above the threshold, the best layer >= 1 head is taken (method ``best_score``).
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
    best = shares.groupby("sender")["share"].max().fillna(-math.inf)
    order = sorted(best.index, key=lambda s: (-best[s], s))  # orders the search, filters nothing
    earlier_restoration = joint_restoration(model, task, order, heads)
    found, tried, by_size = smallest_sufficient_set(model, task, order, heads, together, max_size)
    fallback = found is None
    if fallback:
        layer = min(Head.parse(h).layer for h in heads) - 1
        members = [s for s in earlier_senders(model, layer + 1) if sender_layer(s) == layer]
        restoration = joint_restoration(model, task, members, heads)
        method.update(dict.fromkeys(members, "fallback_whole_layer"))
    else:
        members, restoration = found
        method.update(dict.fromkeys(members, "key_path"))
    roles = dict.fromkeys(heads, "induction") | {
        m: "prev_token" if Head.is_head(m) else "key_mlp" for m in members
    }
    circuit = Circuit(name, heads + [m for m in members if m not in heads], roles)
    routes = route_shares(model, task, heads)
    return Discovery(
        circuit, shares, restoration, earlier_restoration, method, fallback, routes, tried, by_size
    )
