"""Hook names and the activation recorder (SPEC section 3).

Names are TransformerLens hook points (``blocks.1.attn.hook_pattern``,
``blocks.0.hook_resid_post``; build them with ``transformer_lens.utils.get_act_name``).
A name ending in ``_grad`` records the backward hook of that point on the mean LM
loss. Recording goes through ``HookedTransformer.run_with_cache``, so recorded
values are exactly what a notebook would cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from transformer_lens import HookedTransformer

from interp_ext.config import ConfigError


def valid_hook_names(model: HookedTransformer) -> list[str]:
    """Every name the recorder accepts for this model (forward and ``_grad``)."""
    names = list(model.hook_dict.keys())
    return names + [n + "_grad" for n in names]


def validate_hooks(model: HookedTransformer, hooks: Sequence[str]) -> list[str]:
    """Check names before any training; raise listing the valid ones."""
    valid = set(valid_hook_names(model))
    bad = [h for h in hooks if h not in valid]
    if bad:
        forward = list(model.hook_dict.keys())
        raise ConfigError(
            f"record.hooks has unknown hook name(s) {bad}. Valid names for this model ({len(forward)} forward points, "
            f"each also with a '_grad' suffix for backward hooks): {forward}"
        )
    return list(hooks)


class ActivationRecorder:
    """Runs a model on probe tokens with named hooks and returns the activations.

    Example:
        >>> rec = ActivationRecorder(["blocks.0.attn.hook_pattern"])
        >>> acts = rec.record(model, tokens)  # {"blocks.0.attn.hook_pattern": [batch, head, q, k]}
    """

    def __init__(self, hooks: Sequence[str]):
        self.hooks = list(hooks)
        self.forward = sorted(
            {h[: -len("_grad")] if h.endswith("_grad") else h for h in self.hooks}
        )
        self.needs_backward = any(h.endswith("_grad") for h in self.hooks)

    def record(
        self, model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]
    ) -> dict[str, torch.Tensor]:
        """Activations for every recorded name, float32 on CPU, batch first."""
        if not self.hooks:
            return {}
        wanted = set(self.hooks)
        with torch.set_grad_enabled(self.needs_backward):
            if self.needs_backward:
                _, cache = model.run_with_cache(
                    tokens,
                    names_filter=lambda n: n in wanted or n + "_grad" in wanted,
                    incl_bwd=True,
                    return_type="loss",
                )
                model.zero_grad(set_to_none=True)
            else:
                _, cache = model.run_with_cache(
                    tokens, names_filter=lambda n: n in wanted, return_type=None
                )
        return {name: cache[name].detach().float().cpu().contiguous() for name in self.hooks}

    def bytes_per_sequence(self, model: HookedTransformer, seq_len: int) -> int:
        """Size of one sequence's recording, from a dry run on one sequence."""
        tokens = torch.zeros(1, seq_len, dtype=torch.long, device=model.cfg.device)
        return sum(t.numel() * 4 for t in self.record(model, tokens).values())
