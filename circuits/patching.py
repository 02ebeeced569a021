"""Activation and path patching on the induction task (SPEC section 8).

A thin layer over ``transformer_lens.patching``: this module only builds the
clean/corrupted inputs and the metric, and adds path patching from one head to
another head's query/key/value input.

* Clean input: [BOS] + r + r. Corrupted input: the first occurrence replaced by
  fresh random tokens, [BOS] + r' + r, so induction has nothing to copy.
* Metric: the logit difference of the correct next token, LD = logit[correct] -
  mean logit, averaged over the predictions of the second copy, normalised as
  (LD - LD_corrupted) / (LD_clean - LD_corrupted): 0 = corrupted, 1 = clean.
* Patching follows TransformerLens: the corrupted run with clean activations
  patched in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from transformer_lens import ActivationCache, HookedTransformer
from transformer_lens import patching as tl_patching
from transformer_lens.utilities import get_act_name

from circuits.circuit import Head
from circuits.induction import check_repeated


@dataclass
class InductionTask:
    """Clean and corrupted inputs with their caches and the normalised metric."""

    clean: Int[torch.Tensor, "batch pos"]
    corrupted: Int[torch.Tensor, "batch pos"]
    clean_cache: ActivationCache
    corrupted_cache: ActivationCache
    ld_clean: float
    ld_corrupted: float

    def metric(self, logits: Float[torch.Tensor, "batch pos d_vocab"]) -> torch.Tensor:
        """Normalised logit difference: 0 = corrupted run, 1 = clean run."""
        return (logit_difference(logits, self.clean) - self.ld_corrupted) / (
            self.ld_clean - self.ld_corrupted
        )


def corrupt_first_copy(
    tokens: Int[torch.Tensor, "batch pos"], d_vocab: int, bos: int, generator: torch.Generator
) -> torch.Tensor:
    """[BOS] + r + r -> [BOS] + r' + r with r' fresh uniform tokens (never BOS)."""
    s = check_repeated(tokens)
    out = tokens.clone()
    fresh = torch.randint(0, d_vocab - 1, (tokens.shape[0], s), generator=generator)
    fresh = fresh + (fresh >= bos).long()  # skip BOS
    out[:, 1 : 1 + s] = fresh
    return out


def logit_difference(
    logits: Float[torch.Tensor, "batch pos d_vocab"], clean: Int[torch.Tensor, "batch pos"]
) -> torch.Tensor:
    """Mean over second-copy predictions of logit[correct next token] - mean logit."""
    s = (clean.shape[1] - 1) // 2
    pred = logits[:, s:-1].float()  # positions whose next token is in the second copy
    target = clean[:, s + 1 :].to(pred.device)
    correct = pred.gather(-1, target[..., None])[..., 0]
    return (correct - pred.mean(-1)).mean()


def induction_task(
    model: HookedTransformer,
    clean: Int[torch.Tensor, "batch pos"],
    seed: int = 0,
    bos: int | None = None,
) -> InductionTask:
    """Build the clean/corrupted pair and run both with caches."""
    bos = int(clean[0, 0]) if bos is None else bos
    gen = torch.Generator().manual_seed(seed)
    clean = clean.to(model.cfg.device)
    corrupted = corrupt_first_copy(clean.cpu(), model.cfg.d_vocab, bos, gen).to(model.cfg.device)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corr_logits, corr_cache = model.run_with_cache(corrupted)
    return InductionTask(
        clean,
        corrupted,
        clean_cache,
        corr_cache,
        float(logit_difference(clean_logits, clean)),
        float(logit_difference(corr_logits, clean)),
    )


@torch.no_grad()
def patch_residual(
    model: HookedTransformer, task: InductionTask
) -> Float[torch.Tensor, "layer pos"]:
    """Sweep by residual stream (resid_pre) position x layer: ``get_act_patch_resid_pre``."""
    return tl_patching.get_act_patch_resid_pre(
        model, task.corrupted, task.clean_cache, task.metric
    ).cpu()


@torch.no_grad()
def patch_heads(
    model: HookedTransformer, task: InductionTask
) -> Float[torch.Tensor, "layer head_index"]:
    """Sweep by head output over all positions: ``get_act_patch_attn_head_out_all_pos``."""
    return tl_patching.get_act_patch_attn_head_out_all_pos(
        model, task.corrupted, task.clean_cache, task.metric
    ).cpu()


def _sender_delta(model: HookedTransformer, task: InductionTask, sender: str) -> torch.Tensor:
    layer, head = Head.parse(sender)
    dz = (
        task.clean_cache["z", layer][:, :, head] - task.corrupted_cache["z", layer][:, :, head]
    )  # [batch, pos, d_head]
    return dz @ model.W_O[layer, head]  # [batch, pos, d_model]


@torch.no_grad()
def path_patch(
    model: HookedTransformer,
    task: InductionTask,
    sender: str,
    receivers: Sequence[tuple[str, str]],
) -> float:
    """Patch the clean output of ``sender`` into the corrupted run along given paths only.

    Args:
        sender: head name, e.g. ``"L0H3"``.
        receivers: (head, input) pairs with input in ``"q"``, ``"k"``, ``"v"``,
            e.g. ``[("L1H2", "k")]``; the pseudo-receiver ``("resid_final", "")``
            adds the direct path to the unembedding. Receivers in a layer at or
            before the sender's are not reached by it and change nothing.

    Returns:
        The normalised metric of the patched run (0 = corrupted, 1 = clean).
    """
    s_layer, _ = Head.parse(sender)
    delta = _sender_delta(model, task, sender)
    hooks: list[tuple[str, Callable]] = []
    per_layer: dict[tuple[int, str], list[int]] = {}
    for receiver, kind in receivers:
        if receiver == "resid_final":
            hooks.append(
                (get_act_name("resid_post", model.cfg.n_layers - 1), lambda x, hook: x + delta)
            )
            continue
        if kind not in ("q", "k", "v"):
            raise ValueError(f"receiver input must be 'q', 'k' or 'v'; got {kind!r} for {receiver}")
        r_layer, r_head = Head.parse(receiver)
        if r_layer <= s_layer:
            continue
        per_layer.setdefault((r_layer, kind), []).append(r_head)
    for (r_layer, kind), heads in per_layer.items():

        def hook(x, hook, heads=heads):
            x[:, :, heads] = x[:, :, heads] + delta[:, :, None]
            return x

        hooks.append((get_act_name(f"{kind}_input", r_layer), hook))
    previous = model.cfg.use_split_qkv_input
    model.set_use_split_qkv_input(True)
    try:
        logits = model.run_with_hooks(task.corrupted, fwd_hooks=hooks)
    finally:
        model.set_use_split_qkv_input(previous)
    return float(task.metric(logits))


def path_patch_matrix(model: HookedTransformer, task: InductionTask, kind: str = "k") -> np.ndarray:
    """Path-patching effect of every sender head on every later head's ``kind`` input:
    [sender layer, sender head, receiver layer, receiver head] (NaN where not connected)."""
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    out = np.full((n_l, n_h, n_l, n_h), np.nan)
    for sl in range(n_l):
        for sh in range(n_h):
            for rl in range(sl + 1, n_l):
                for rh in range(n_h):
                    out[sl, sh, rl, rh] = path_patch(
                        model, task, str(Head(sl, sh)), [(str(Head(rl, rh)), kind)]
                    )
    return out
