"""Model construction, in one place.

Every `HookedTransformer` the suite makes comes from :func:`build_model`, so a
later move to TransformerLens 4's ``TransformerBridge`` touches this module only.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from interp_ext.config import ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def hooked_config(cfg: ModelConfig, d_vocab: int, device: str = "cpu") -> HookedTransformerConfig:
    """The `HookedTransformerConfig` for a model config and vocabulary size (an imported run's own)."""
    if cfg.hooked is not None:
        return config_from_dict(cfg.hooked, device)
    return HookedTransformerConfig(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=None if cfg.attn_only else cfg.d_mlp,
        d_vocab=d_vocab,
        n_ctx=cfg.n_ctx,
        act_fn=None if cfg.attn_only else cfg.act_fn,
        normalization_type=cfg.normalization_type,
        attn_only=cfg.attn_only,
        positional_embedding_type="standard",
        device=device,
        default_prepend_bos=True,
    )


def config_from_dict(values: dict, device: str = "cpu") -> HookedTransformerConfig:
    """A `HookedTransformerConfig` from its saved dict (dtype kept as a name in JSON)."""
    values = dict(values)
    if isinstance(values.get("dtype"), str):
        values["dtype"] = getattr(torch, values["dtype"].removeprefix("torch."))
    return HookedTransformerConfig(**{**values, "device": device})


def build_model(
    cfg: ModelConfig,
    d_vocab: int,
    seed: int | None = None,
    device: str = "cpu",
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> HookedTransformer:
    """A freshly initialised `HookedTransformer`.

    Args:
        cfg: model shape.
        d_vocab: vocabulary size (embedding and unembedding width).
        seed: init seed; the global torch RNG is left untouched.
        device: torch device.
        tokenizer: optional tokenizer attached with ``set_tokenizer``.
    """
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if seed is not None:
            torch.manual_seed(seed)
        model = HookedTransformer(hooked_config(cfg, d_vocab, device="cpu"), move_to_device=False)
    if torch.device(device) != torch.device("cpu"):
        model.to(device, print_details=False)
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    return model


def param_names(model: torch.nn.Module) -> list[str]:
    """Trainable parameter names in the fixed order used for flattening."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def share_parameters(
    model: torch.nn.Module, stacked: dict[str, torch.Tensor], index: int
) -> torch.nn.Module:
    """Point ``model``'s parameters at slice ``index`` of stacked tensors, sharing their storage.

    ``stacked`` maps parameter names to tensors with a leading seed dimension (as
    from ``torch.func.stack_module_state``). Afterwards the model is an ordinary
    `HookedTransformer` whose weights *are* that seed's slice: in-place updates of
    the stacked tensors show in the model and vice versa, and ``backward`` fills
    each parameter's ``.grad`` as for any module. Returns the model.
    """
    for name, old in list(model.named_parameters()):
        new = stacked[name].detach()[index]
        if new.shape != old.shape:
            raise ValueError(
                f"stacked[{name!r}][{index}] has shape {tuple(new.shape)}, the model's parameter {tuple(old.shape)}"
            )
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner.register_parameter(attr, torch.nn.Parameter(new, requires_grad=old.requires_grad))
    return model
