"""Per-batch gradients of a `HookedTransformer` with ``torch.func`` and parameter groups.

``per_batch_gradients`` returns the [B, n_params] matrix of mean-LM-loss gradients,
one row per probe batch, float32, parameters flattened in ``named_parameters``
order (restricted to the selected groups). It uses ``vmap(grad(...))`` over
chunks of batches, so memory stays O(chunk x activations + B x n_params).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch.func import functional_call, grad, vmap
from transformer_lens import HookedTransformer

GROUPS = ("ln", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "embed", "unembed")


def param_group(name: str) -> str:
    """The Stream 2 group of a parameter name (SPEC section 5)."""
    if name.startswith(("embed.", "pos_embed.")):
        return "embed"
    if name.startswith("unembed."):
        return "unembed"
    if ".ln" in name or name.startswith("ln_final."):
        return "ln"
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
        return "attn_qkv"
    if leaf in ("W_O", "b_O"):
        return "attn_out"
    if leaf in ("W_in", "b_in"):
        return "mlp_in"
    if leaf in ("W_out", "b_out"):
        return "mlp_out"
    raise ValueError(f"parameter {name!r} belongs to no group of {GROUPS}")


def param_layer(name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def select_params(model: HookedTransformer, params: str | Sequence[str] = "all") -> list[str]:
    """Parameter names entering G: ``"all"``, ``"blocks"`` (no embed/unembed) or a list of groups."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if params == "all":
        return names
    if params == "blocks":
        return [n for n in names if param_group(n) not in ("embed", "unembed")]
    groups = [params] if isinstance(params, str) else list(params)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(
            f"params={params!r}: unknown group(s) {bad}; use 'all', 'blocks' or groups from {GROUPS}"
        )
    return [n for n in names if param_group(n) in groups]


def group_slices(model: HookedTransformer, names: list[str]) -> dict[str, slice]:
    """Parameter name -> slice of the flattened vector built from ``names``."""
    shapes = dict(model.named_parameters())
    out, start = {}, 0
    for n in names:
        size = shapes[n].numel()
        out[n] = slice(start, start + size)
        start += size
    return out


def loss_function(model: HookedTransformer, names: list[str]):
    """loss(params_subset, tokens) with the other parameters and buffers frozen."""
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}
    buffers = dict(model.named_buffers())

    def loss(sub: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        return functional_call(
            model, ({**frozen, **sub}, buffers), (tokens,), kwargs={"return_type": "loss"}
        )

    return loss


def measure_dtype(model: HookedTransformer) -> torch.dtype:
    """float32 for measurements, float64 when the model itself is float64 (tests)."""
    return torch.float64 if model.cfg.dtype == torch.float64 else torch.float32


def current_params(model: HookedTransformer, names: list[str]) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    return {n: named[n].detach().to(measure_dtype(model)) for n in names}


def flatten(
    tensors: dict[str, torch.Tensor], names: list[str], batch_dims: int = 0
) -> torch.Tensor:
    return torch.cat(
        [tensors[n].reshape(*tensors[n].shape[:batch_dims], -1) for n in names], dim=-1
    )


def unflatten(
    vector: torch.Tensor, model: HookedTransformer, names: list[str]
) -> dict[str, torch.Tensor]:
    shapes = dict(model.named_parameters())
    out, start = {}, 0
    for n in names:
        size = shapes[n].numel()
        out[n] = vector[start : start + size].reshape(shapes[n].shape)
        start += size
    return out


def per_batch_gradients(
    model: HookedTransformer,
    batches: Int[torch.Tensor, "B batch pos"],
    params: str | Sequence[str] = "all",
    chunk: int | None = None,
) -> Float[torch.Tensor, "B n_params"]:
    """g_b = grad of the mean LM loss on batch b, flattened, float32 on CPU (float64 for a float64 model).

    Args:
        chunk: batches per ``vmap`` call. Default: 8 on a GPU; 1 on a CPU, where
            the activations of several batches (the 50,257-wide logits above all)
            overflow the caches and a wide vmap costs several times more time and
            memory than one batch at a time.
    """
    if chunk is None:
        chunk = 8 if batches.device.type == "cuda" or model.cfg.device.startswith("cuda") else 1
    if batches.ndim != 3:
        raise ValueError(
            f"batches must be a token tensor [n_batches, batch, pos]; got shape {tuple(batches.shape)}"
        )
    names = select_params(model, params)
    named = dict(model.named_parameters())
    n_params = sum(named[n].numel() for n in names)
    out = torch.empty(
        batches.shape[0], n_params, dtype=measure_dtype(model)
    )  # filled in place: no second copy
    if chunk == 1 and model.cfg.dtype == measure_dtype(model):
        # one batch at a time: a plain reverse pass is the same gradient without vmap's overhead
        leaves = [named[n] for n in names]
        for b in range(batches.shape[0]):
            loss = model(batches[b].to(model.cfg.device), return_type="loss")
            _fill_rows(out[b : b + 1], torch.autograd.grad(loss, leaves))
        return out
    loss = loss_function(model, names)
    sub = current_params(model, names)
    per_batch = vmap(grad(loss), in_dims=(None, 0))
    step = chunk or batches.shape[0]
    for start in range(0, batches.shape[0], step):
        toks = batches[start : start + step].to(model.cfg.device)
        g = per_batch(sub, toks)
        _fill_rows(out[start : start + toks.shape[0]], [g[n] for n in names])
        del g
    return out


def _fill_rows(rows: torch.Tensor, grads: Sequence[torch.Tensor]) -> None:
    """Write per-parameter gradients (leading dims = the rows) side by side into ``rows`` in place."""
    col = 0
    for g in grads:
        flat = g.reshape(rows.shape[0], -1)
        rows[:, col : col + flat.shape[1]] = flat.to(rows.dtype).cpu()
        col += flat.shape[1]


def group_names(names: list[str], per_layer: bool = False) -> dict[str, list[str]]:
    """Group label -> parameter names (``ln``, ``attn_qkv`` ... or ``blocks.2.attn_qkv``)."""
    out: dict[str, list[str]] = {}
    for n in names:
        group = param_group(n)
        out.setdefault(group, []).append(n)
        layer = param_layer(n)
        if per_layer and layer is not None:
            out.setdefault(f"blocks.{layer}.{group}", []).append(n)
    return out
