"""Induction-head scores (Olsson et al. 2022; Elhage et al. 2021), SPEC section 7.

On sequences [BOS] + r + r with |r| = S, each attention score is the mean over
the S query positions of the second copy (and the batch) of the attention paid
to one key position:

* induction (prefix matching): the token right after the query token's earlier
  occurrence, key = q - S + 1;
* previous token: key = q - 1;
* duplicate token: the earlier occurrence itself, key = q - S.
"""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

ATTENTION_SCORES = ("induction_score", "prev_token_score", "duplicate_score")


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def check_repeated(tokens: Int[torch.Tensor, "batch pos"]) -> int:
    """Validate the [BOS] + r + r layout and return S."""
    if tokens.ndim != 2 or (tokens.shape[1] - 1) % 2 != 0 or tokens.shape[1] < 3:
        raise ValueError(f"repeated tokens must be [batch, 1 + 2S] laid out as [BOS] + r + r; got shape {tuple(tokens.shape)}")
    s = (tokens.shape[1] - 1) // 2
    if not torch.equal(tokens[:, 1 : 1 + s], tokens[:, 1 + s :]):
        raise ValueError("tokens are not [BOS] + r + r: the second half differs from the first (build them with interp_ext.data.repeated_tokens)")
    return s


@torch.no_grad()
def attention_scores(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
) -> dict[str, Float[torch.Tensor, "layer head_index"]]:
    """Induction, previous-token and duplicate-token scores of every head."""
    s = check_repeated(tokens)
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n.endswith("hook_pattern"), return_type=None)
    q = torch.arange(s + 1, 2 * s + 1)
    offsets = {"induction_score": -s + 1, "prev_token_score": -1, "duplicate_score": -s}
    out = {name: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for name in ATTENTION_SCORES}
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer].float().cpu()  # [batch, head_index, query_pos, key_pos]
        for name, off in offsets.items():
            out[name][layer] = pattern[:, :, q, q + off].mean(dim=(0, 2))
    return out


def scores_frame(scores: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Long table (component, metric, value) from per-head score tensors."""
    rows = []
    for metric, values in scores.items():
        for layer in range(values.shape[0]):
            for head in range(values.shape[1]):
                rows.append({"component": head_name(layer, head), "metric": metric, "value": float(values[layer, head])})
    return pd.DataFrame(rows, columns=["component", "metric", "value"])


def head_scores(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]) -> pd.DataFrame:
    """Per-head attention scores on repeated sequences as a (component, metric, value) table."""
    return scores_frame(attention_scores(model, tokens))


def best_induction_score(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]) -> float:
    """The highest induction score over heads in layers >= 1."""
    scores = attention_scores(model, tokens)["induction_score"]
    return float(scores[1:].max()) if scores.shape[0] > 1 else float("nan")
