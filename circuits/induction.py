"""Induction heads over training (Olsson et al. 2022; Elhage et al. 2021), SPEC section 7.

Attention scores on sequences [BOS] + r + r with |r| = S are means over the S
query positions q of the second copy (and over the batch) of the attention paid
to one key position:

* ``induction_score`` (prefix matching): the token right after the query
  token's earlier occurrence, key = q - S + 1;
* ``prev_token_score``: key = q - 1;
* ``duplicate_score``: the earlier occurrence itself, key = q - S.

Weight-based scores: ``copying_score`` = sum(eig) / sum(|eig|) of the full OV
circuit W_E W_V W_O W_U restricted to the top-N frequent tokens, and
``k_composition`` between an earlier head h and a later head h' (TransformerLens'
``all_composition_scores("K")``) with a random-matrix baseline.

Model-level: ``icl_score`` (mean loss over the last 8 predicted positions minus
the mean over positions 6..13, on held-out text: negative when later tokens are
predicted better thanks to context) and ``repeat_loss_drop`` (loss on the first
copy of r minus loss on the second copy).

Detection: heads (layer >= 1) whose induction score exceeds ``threshold``
(default 0.4); formation step: where the best head's score rises fastest.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from transformer_lens import FactoredMatrix, HookedTransformer
from transformer_lens.utilities import get_act_name

from circuits.circuit import Circuit, Head, all_heads, random_heads

log = logging.getLogger("circuits")

ATTENTION_SCORES = ("induction_score", "prev_token_score", "duplicate_score")
DEFAULT_THRESHOLD = 0.4
DEFAULT_PREV_THRESHOLD = 0.1  # 5x the ~0.02 a uniform head pays one key at this context length


def repeated_tokens(
    n: int, n_ctx: int, d_vocab: int, bos: int, rng: np.random.Generator
) -> np.ndarray:
    """[BOS] + r + r with r uniform random non-BOS tokens, |r| = (n_ctx - 1) // 2: [n, 1 + 2S]."""
    seq_len = (n_ctx - 1) // 2
    choices = np.array([i for i in range(d_vocab) if i != bos])
    r = rng.choice(choices, size=(n, seq_len))
    return np.concatenate([np.full((n, 1), bos), r, r], axis=1).astype(np.int64)


def repeated_batch(
    model: HookedTransformer, n: int = 16, seq_len: int | None = None, seed: int = 0
) -> Int[torch.Tensor, "n pos"]:
    """``n`` sequences [BOS] + r + r for ``model``: r uniform random tokens (not BOS), |r| =
    ``seq_len`` (default: as long as the model's context allows); BOS is the tokenizer's, else 0."""
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    n_ctx = model.cfg.n_ctx if seq_len is None else 2 * seq_len + 1
    rng = np.random.default_rng(seed)
    tokens = repeated_tokens(n, n_ctx, model.cfg.d_vocab, int(bos or 0), rng)
    return torch.from_numpy(tokens).to(model.cfg.device)


def check_repeated(tokens: Int[torch.Tensor, "batch pos"]) -> int:
    """Validate the [BOS] + r + r layout and return S."""
    if tokens.ndim != 2 or tokens.shape[1] < 3 or (tokens.shape[1] - 1) % 2 != 0:
        raise ValueError(
            f"repeated tokens must be [batch, 1 + 2S] laid out as [BOS] + r + r; got shape {tuple(tokens.shape)}"
        )
    s = (tokens.shape[1] - 1) // 2
    if not torch.equal(tokens[:, 1 : 1 + s], tokens[:, 1 + s :]):
        raise ValueError(
            "tokens are not [BOS] + r + r: the second half differs from the first (build them with circuits.induction.repeated_batch)"
        )
    return s


def _needs_two_layers(model: HookedTransformer) -> bool:
    if model.cfg.n_layers < 2:
        log.warning(
            "induction heads need two layers (a previous-token head feeding a later head); this model has %d: empty result",
            model.cfg.n_layers,
        )
        return False
    return True


# --------------------------------------------------------------------------- scores


@torch.no_grad()
def attention_scores(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
) -> dict[str, Float[torch.Tensor, "layer head_index"]]:
    """Induction, previous-token and duplicate-token scores of every head."""
    s = check_repeated(tokens)
    _, cache = model.run_with_cache(
        tokens.to(model.cfg.device),
        names_filter=lambda n: n.endswith("hook_pattern"),
        return_type=None,
    )
    q = torch.arange(s + 1, 2 * s + 1)
    offsets = {"induction_score": -s + 1, "prev_token_score": -1, "duplicate_score": -s}
    out = {name: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for name in ATTENTION_SCORES}
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer].float().cpu()  # [batch, head_index, query_pos, key_pos]
        for name, off in offsets.items():
            out[name][layer] = pattern[:, :, q, q + off].mean(dim=(0, 2))
    return out


@torch.no_grad()
def copying_scores(
    model: HookedTransformer, token_ids: torch.Tensor | None = None, top_n: int = 500
) -> Float[torch.Tensor, "layer head_index"]:
    """sum(eig) / sum(|eig|) of W_E[tok] W_V W_O W_U[:, tok] per head.

    The non-zero eigenvalues of the [N, N] circuit are those of a d_head x
    d_head product (TransformerLens' `FactoredMatrix.eigenvalues`).

    Args:
        token_ids: the tokens to restrict to (default: the first ``top_n`` ids,
            pass the run's most frequent tokens for the SPEC definition).
    """
    if token_ids is None:
        token_ids = torch.arange(min(top_n, model.cfg.d_vocab))
    token_ids = token_ids.to(model.W_E.device)
    w_e = model.W_E[token_ids].float()
    w_u = model.W_U[:, token_ids].float()
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            left = w_e @ model.W_V[layer, head].float()
            right = model.W_O[layer, head].float() @ w_u
            eig = FactoredMatrix(left, right).eigenvalues
            out[layer, head] = (eig.sum().real / eig.abs().sum().clamp_min(1e-30)).float().cpu()
    return out


@torch.no_grad()
def k_composition(
    model: HookedTransformer,
) -> Float[torch.Tensor, "layer head_index layer head_index"]:
    """K-composition scores [earlier layer, head, later layer, head] (TransformerLens)."""
    return model.all_composition_scores("K").float().cpu()


@lru_cache(maxsize=16)
def composition_baseline(d_model: int, d_head: int, draws: int = 32, seed: int = 0) -> float:
    """Mean K-composition score of random Gaussian weights of the same shapes."""
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(draws):
        wq, wk, wv = (torch.randn(d_model, d_head, generator=gen) for _ in range(3))
        wo = torch.randn(d_head, d_model, generator=gen)
        qk = FactoredMatrix(wq, wk.T)
        ov = FactoredMatrix(wv, wo)
        vals.append(float((qk.T @ ov).norm() / (qk.norm() * ov.norm())))
    return float(np.mean(vals))


@torch.no_grad()
def repeat_loss_drop(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
) -> tuple[float, float]:
    """(loss on the first copy) - (loss on the second copy), and the second-half loss."""
    s = check_repeated(tokens)
    loss = (
        model(tokens.to(model.cfg.device), return_type="loss", loss_per_token=True).float().cpu()
    )  # [batch, pos-1]
    first = loss[:, 1:s].mean()  # predictions of r[1..S-1] from the first copy
    second = loss[:, s : 2 * s].mean()  # predictions of the second copy
    return float(first - second), float(second)


@torch.no_grad()
def icl_score(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]) -> float:
    """Mean loss on the last 8 predicted positions minus positions 6..13 (held-out text)."""
    loss = model(tokens.to(model.cfg.device), return_type="loss", loss_per_token=True).float().cpu()
    return icl_from_loss(loss)


def icl_from_loss(loss: Float[torch.Tensor, "batch pos_minus_1"]) -> float:
    """The in-context-learning score from per-token losses already computed (:func:`icl_score`)."""
    return float(loss[:, -8:].mean() - loss[:, 6:14].mean())


def head_scores(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    token_ids: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Per-head scores on repeated sequences [batch, 1 + 2S] laid out as [BOS] + r + r.

    Returns:
        DataFrame with columns ``component`` (``L1H2`` or ``L0H3->L1H2``),
        ``metric`` and ``value``: induction, previous-token, duplicate and copying
        scores per head, and K-composition for every (earlier, later) head pair.
    """
    if not _needs_two_layers(model):
        return pd.DataFrame(columns=["component", "metric", "value"])
    scores = attention_scores(model, tokens)
    scores["copying_score"] = copying_scores(model, token_ids)
    rows = []
    for metric, values in scores.items():
        for layer in range(values.shape[0]):
            for head in range(values.shape[1]):
                rows.append(
                    {
                        "component": str(Head(layer, head)),
                        "metric": metric,
                        "value": float(values[layer, head]),
                    }
                )
    comp = k_composition(model)
    for l1 in range(model.cfg.n_layers):
        for h1 in range(model.cfg.n_heads):
            for l2 in range(l1 + 1, model.cfg.n_layers):
                for h2 in range(model.cfg.n_heads):
                    rows.append(
                        {
                            "component": f"{Head(l1, h1)}->{Head(l2, h2)}",
                            "metric": "k_composition",
                            "value": float(comp[l1, h1, l2, h2]),
                        }
                    )
    return pd.DataFrame(rows, columns=["component", "metric", "value"])


def model_scores(
    model: HookedTransformer, repeated: torch.Tensor, heldout: torch.Tensor
) -> dict[str, float]:
    """Model-level scores: ``icl_score``, ``repeat_loss_drop``, ``repeat_second_half_loss``."""
    drop, second = repeat_loss_drop(model, repeated)
    return {
        "icl_score": icl_score(model, heldout),
        "repeat_loss_drop": drop,
        "repeat_second_half_loss": second,
    }


# --------------------------------------------------------------------------- detection


def detect_induction_heads(scores: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """Heads in layer >= 1 whose induction score exceeds ``threshold``, best first."""
    ind = scores[scores["metric"] == "induction_score"]
    ind = ind[ind["component"].map(lambda c: Head.parse(c).layer >= 1)]
    ind = ind[ind["value"] > threshold].sort_values("value", ascending=False)
    return ind["component"].tolist()


def previous_token_partners(
    scores: pd.DataFrame, induction_heads: list[str], prev_threshold: float = DEFAULT_PREV_THRESHOLD
) -> list[str]:
    """Earlier-layer heads feeding the induction heads: for each induction head, the
    earlier head maximising K-composition x previous-token score, kept if its
    previous-token score exceeds ``prev_threshold``."""
    prev = scores[scores["metric"] == "prev_token_score"].set_index("component")["value"]
    comp = scores[scores["metric"] == "k_composition"]
    partners: list[str] = []
    for head in induction_heads:
        rows = comp[comp["component"].str.endswith("->" + head)]
        if rows.empty:
            continue
        senders = rows["component"].str.split("->").str[0]
        weight = rows["value"].to_numpy() * prev.reindex(senders).to_numpy()
        best = senders.iloc[int(np.nanargmax(weight))]
        if prev.get(best, 0.0) > prev_threshold and best not in partners:
            partners.append(best)
    return partners


def formation_step(steps: np.ndarray, best_scores: np.ndarray) -> float:
    """The step where the best head's induction score rises fastest.

    The rise rate is the score difference between consecutive checkpoints per
    step; the midpoint of the steepest interval is returned.
    """
    steps, best_scores = np.asarray(steps, float), np.asarray(best_scores, float)
    if len(steps) < 2:
        return float("nan")
    rate = np.diff(best_scores) / np.diff(steps)
    i = int(np.nanargmax(rate))
    return float((steps[i] + steps[i + 1]) / 2)


# --------------------------------------------------------------------------- ablation


@torch.no_grad()
def mean_ablation_loss(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], heads: list[str]
) -> float:
    """Second-half loss on [BOS] r r with ``heads`` mean-ablated.

    Each head's output (``hook_z``) is replaced by its mean over the batch and
    positions of ``tokens`` (the probe set).
    """
    s = check_repeated(tokens)
    tokens = tokens.to(model.cfg.device)
    by_layer: dict[int, list[int]] = {}
    for name in heads:
        layer, head = Head.parse(name)
        by_layer.setdefault(layer, []).append(head)
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith("attn.hook_z"), return_type=None
    )

    def make_hook(layer: int, hs: list[int]):
        mean = cache["z", layer].mean(dim=(0, 1))  # [head_index, d_head]

        def hook(z, hook):
            z[:, :, hs] = mean[hs]
            return z

        return hook

    hooks = [(get_act_name("z", layer), make_hook(layer, hs)) for layer, hs in by_layer.items()]
    loss = (
        model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
        .float()
        .cpu()
    )
    return float(loss[:, s : 2 * s].mean())


def ablation_check(
    model: HookedTransformer,
    tokens: torch.Tensor,
    heads: list[str],
    n_random: int = 5,
    seed: int = 0,
    exclude: list[str] | None = None,
) -> dict[str, float]:
    """Loss increase from mean-ablating ``heads`` vs as many random heads.

    Random heads are drawn outside ``exclude`` (default: ``heads``); pass the
    whole circuit (induction heads and their previous-token partners) so the
    control does not knock out the circuit's other half.

    When fewer heads than ``heads`` lie outside the circuit (a small model whose
    whole layer is detected), the control ablates all that are left; with none
    left, ``random`` is NaN.

    Returns:
        ``detected`` (loss increase for the heads), ``random`` (mean over
        ``n_random`` draws of random heads outside ``heads``), ``random_size``
        (heads per random draw) and ``clean_loss``.
    """
    _, clean = repeat_loss_drop(model, tokens)
    if not heads:
        return {"detected": math.nan, "random": math.nan, "random_size": 0, "clean_loss": clean}
    detected = mean_ablation_loss(model, tokens, heads) - clean
    gen = torch.Generator().manual_seed(seed)
    outside = list(heads) + [h for h in (exclude or []) if h not in heads]
    size = min(len(heads), sum(str(h) not in outside for h in all_heads(model)))
    rand = [
        mean_ablation_loss(model, tokens, random_heads(model, size, exclude=outside, generator=gen))
        - clean
        for _ in range(n_random if size else 0)
    ]
    return {
        "detected": detected,
        "random": float(np.mean(rand)) if rand else math.nan,
        "random_size": size,
        "clean_loss": clean,
    }


# --------------------------------------------------------------------------- the circuit


def frequent_tokens(tokens: np.ndarray, d_vocab: int, top_n: int = 500) -> torch.Tensor:
    """The ``top_n`` most frequent token ids of a token stream (for :func:`copying_scores`)."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=d_vocab)
    return torch.from_numpy(np.argsort(-counts, kind="stable")[:top_n].copy())


def best_induction_score(scores: pd.DataFrame) -> float:
    """The highest induction score of a head in layer >= 1."""
    ind = scores[scores.metric == "induction_score"]
    return float(ind[ind.component.map(lambda c: Head.parse(c).layer >= 1)]["value"].max())


def circuit_from_scores(
    scores: pd.DataFrame,
    name: str = "induction",
    threshold: float = DEFAULT_THRESHOLD,
    prev_threshold: float = DEFAULT_PREV_THRESHOLD,
) -> Circuit:
    """The induction circuit a set of head scores (:func:`head_scores`) points to.

    Induction heads above ``threshold`` and their previous-token partners; if no head
    passes the threshold, the best layer >= 1 head (logged), so a circuit always exists.
    """
    heads = detect_induction_heads(scores, threshold)
    if not heads:
        ind = scores[scores.metric == "induction_score"]
        ind = ind[ind.component.map(lambda c: Head.parse(c).layer >= 1)]
        heads = [ind.sort_values("value").iloc[-1]["component"]]
        log.warning(
            "%s: no head above induction threshold %.2f; using the best head %s",
            name,
            threshold,
            heads[0],
        )
    partners = previous_token_partners(scores, heads, prev_threshold)
    roles = {h: "induction" for h in heads} | {p: "prev_token" for p in partners}
    return Circuit(name, heads + partners, roles)


def quiet_heads(
    scores: pd.DataFrame,
    threshold: float = DEFAULT_THRESHOLD,
    prev_threshold: float = DEFAULT_PREV_THRESHOLD,
) -> list[str]:
    """Heads below both detection thresholds (induction score and previous-token score): control material."""
    ind = scores[scores.metric == "induction_score"].set_index("component").value
    prev = scores[scores.metric == "prev_token_score"].set_index("component").value
    return [h for h in ind.index if ind[h] <= threshold and prev.get(h, 0.0) <= prev_threshold]


def layer_matched_controls(
    circuit: Circuit,
    scores: pd.DataFrame,
    n: int,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    prev_threshold: float = DEFAULT_PREV_THRESHOLD,
) -> tuple[dict[str, Circuit], str]:
    """Up to ``n`` control circuits of random heads, one per circuit head and in that head's layer,
    drawn from heads outside the circuit that are below both detection thresholds.

    Returns:
        (name -> control circuit, a note saying why fewer than ``n`` could be drawn, "" if none).
    """
    heads = [Head.parse(c) for c in circuit.components if Head.is_head(c)]
    pool = [
        Head.parse(h)
        for h in quiet_heads(scores, threshold, prev_threshold)
        if h not in circuit.components
    ]
    by_layer = {layer: [h for h in pool if h.layer == layer] for layer in {h.layer for h in heads}}
    short = {
        layer: sum(h.layer == layer for h in heads)
        for layer in by_layer
        if len(by_layer[layer]) < sum(h.layer == layer for h in heads)
    }
    if short:
        needs = ", ".join(
            f"layer {layer}: {k} needed, {len(by_layer[layer])} quiet heads outside the circuit"
            for layer, k in short.items()
        )
        return {}, f"no layer-matched control: {needs}"
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n):
        picks = []
        for layer in sorted(by_layer):
            k = sum(h.layer == layer for h in heads)
            idx = torch.randperm(len(by_layer[layer]), generator=gen)[:k].tolist()
            picks += [str(by_layer[layer][j]) for j in idx]
        out[f"control_random_{i}"] = Circuit(f"random-{i}", picks)
    return out, ""
