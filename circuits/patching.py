"""Activation and path patching on the induction task (SPEC section 8).

A thin layer over ``transformer_lens.patching``: this module only builds the
clean/corrupted inputs and the metric, and adds path patching from one head to
another head's query/key/value input.

* Clean input: [BOS] + r + r. Corrupted input: the first occurrence replaced by
  fresh random tokens, [BOS] + r' + r, so induction has nothing to copy.
* Logit metric: the logit difference of the correct next token, LD = logit[correct] -
  mean logit, averaged over the predictions of the second copy, normalised as
  (LD - LD_corrupted) / (LD_clean - LD_corrupted): 0 = corrupted, 1 = clean.
* Attention metric (query and key paths): the receiver's attention from each
  second-copy query to its induction target, normalised the same way.
* Patching follows TransformerLens: the corrupted run with clean activations
  patched in.

Senders on a path are named like circuit components: a head ``L{l}H{h}`` (its
clean-minus-corrupted output, dz @ W_O), an MLP ``L{l}MLP`` (its
clean-minus-corrupted output ``hook_mlp_out``, which holds everything that
reached it), or a route through an MLP, ``L{l}H{h}>L{m}MLP`` or ``EMBED>L{m}MLP``:
the head's (or the embeddings') clean-minus-corrupted output added to MLP m's
input only (``hook_mlp_in``, before ``ln2``), and the change this makes to MLP m's
output is what the route sends on; ``L0H1+L0H2>L0MLP`` sends several senders' outputs
into the MLP together (the MLP is not linear: a joint route is not the sum of its parts). Each sender's change reaches the receivers'
inputs only (direct path), nothing in between.

What each corruption can show: [BOS] + r' + r removes what induction copies.
Patching a head's output, a residual position or a value path restores the
logits only if it carries the copied token, so the logit metric sees
OV-circuits and direct paths. A key path (a previous-token head's output into
an induction head's key) restores *where* the receiver attends, but the tokens
it would then copy are still the corrupted r': the logit metric of a pure key
path stays near 0 whatever the K-composition, and the attention metric is what
sees it. A query path is read the same way.
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


def sender_layer(sender: str) -> int:
    """The layer whose output a sender writes: a head's or MLP's own layer, a route's last hop
    (``L0H1>L1MLP`` -> 1), -1 for ``EMBED``."""
    last = str(sender).split(">")[-1]
    if last == "EMBED":
        return -1
    if last.endswith("MLP") and last[1:-3].isdigit():
        return int(last[1:-3])
    return Head.parse(last).layer


def _one_delta(model: HookedTransformer, task: InductionTask, sender: str) -> torch.Tensor:
    """Clean minus corrupted output of one sender (module docstring): [batch, pos, d_model]."""
    if ">" in sender:
        source, via = sender.split(">", 1)
        layer = sender_layer(via)
        if (
            ">" in via
            or not via.endswith("MLP")
            or max(sender_layer(part) for part in source.split("+")) > layer
        ):
            raise ValueError(
                f"route {sender!r} must be SENDER>L<m>MLP with the sender at or before layer m, e.g. L0H1>L0MLP"
            )
        block = model.blocks[layer]
        mlp_in = task.corrupted_cache["resid_mid", layer]

        def mlp(x):
            return block.mlp(block.ln2(x))

        source_delta = sum(_one_delta(model, task, part) for part in source.split("+"))
        return mlp(mlp_in + source_delta) - mlp(mlp_in)
    if sender == "EMBED":
        return sum(
            task.clean_cache[name] - task.corrupted_cache[name] for name in ("embed", "pos_embed")
        )
    if sender.endswith("MLP"):
        layer = sender_layer(sender)
        return task.clean_cache["mlp_out", layer] - task.corrupted_cache["mlp_out", layer]
    layer, head = Head.parse(sender)
    dz = task.clean_cache["z", layer][:, :, head] - task.corrupted_cache["z", layer][:, :, head]
    return dz @ model.W_O[layer, head]


def _sender_delta(
    model: HookedTransformer, task: InductionTask, senders: str | Sequence[str]
) -> torch.Tensor:
    """Clean minus corrupted output of the senders, summed: [batch, pos, d_model]."""
    return sum(
        _one_delta(model, task, s) for s in ([senders] if isinstance(senders, str) else senders)
    )


def _path_hooks(
    model: HookedTransformer,
    task: InductionTask,
    senders: str | Sequence[str],
    receivers: Sequence[tuple[str, str]],
) -> list[tuple[str, Callable]]:
    """Hooks adding the senders' clean-minus-corrupted output to the receivers' inputs only."""
    names = [senders] if isinstance(senders, str) else list(senders)
    delta = _sender_delta(model, task, names)
    s_layer = max(sender_layer(s) for s in names)
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
    return hooks


def _run_split(model: HookedTransformer, tokens: torch.Tensor, hooks: list, names_filter=None):
    """The corrupted run with path hooks (split q/k/v inputs); the cache of ``names_filter`` if given."""
    previous = model.cfg.use_split_qkv_input
    model.set_use_split_qkv_input(True)
    try:
        if names_filter is None:
            return model.run_with_hooks(tokens, fwd_hooks=hooks), None
        with model.hooks(fwd_hooks=hooks):
            return model.run_with_cache(tokens, names_filter=names_filter)
    finally:
        model.set_use_split_qkv_input(previous)


@torch.no_grad()
def path_patch(
    model: HookedTransformer,
    task: InductionTask,
    sender: str | Sequence[str],
    receivers: Sequence[tuple[str, str]],
) -> float:
    """Patch the clean output of ``sender`` into the corrupted run along given paths only.

    Args:
        sender: head name, e.g. ``"L0H3"``, an MLP or a route (module docstring), or
            several, their outputs patched together.
        receivers: (head, input) pairs with input in ``"q"``, ``"k"``, ``"v"``,
            e.g. ``[("L1H2", "k")]``; the pseudo-receiver ``("resid_final", "")``
            adds the direct path to the unembedding. Receivers in a layer at or
            before the sender's are not reached by it and change nothing.

    Returns:
        The normalised logit metric of the patched run (0 = corrupted, 1 = clean).
        A key-path patch cannot move this metric under the [BOS] + r' + r
        corruption: the receiver can attend to the right position again, but the
        values there are the corrupted tokens. Use :func:`path_patch_attention`
        for query and key paths.
    """
    logits, _ = _run_split(model, task.corrupted, _path_hooks(model, task, sender, receivers))
    return float(task.metric(logits))


def target_attention(
    pattern: Float[torch.Tensor, "batch head_index query_pos key_pos"],
) -> Float[torch.Tensor, " head_index"]:
    """Mean attention from each second-copy query q of [BOS] + r + r to its induction target q - S + 1."""
    s = (pattern.shape[-1] - 1) // 2
    q = torch.arange(s + 1, 2 * s + 1, device=pattern.device)
    return pattern[:, :, q, q - s + 1].float().mean(dim=(0, 2)).cpu()


@torch.no_grad()
def path_patch_attention(
    model: HookedTransformer,
    task: InductionTask,
    sender: str | Sequence[str],
    receiver: str,
    kind: str = "k",
) -> float:
    """Receiver-attention metric of a query- or key-path patch.

    The senders' clean outputs are added to ``receiver``'s ``kind`` input
    (``"q"`` or ``"k"``) in the corrupted run, and the receiver's attention to its
    induction targets (from each second-copy query to the token after its earlier
    occurrence) is compared with the clean and corrupted runs:
    (patched - corrupted) / (clean - corrupted), 0 = corrupted, 1 = clean.
    NaN when the receiver's target attention barely differs between the two
    runs (less than 0.01): it is no induction head on these inputs.
    """
    if kind not in ("q", "k"):
        raise ValueError(
            f"the attention metric is for query and key paths; got kind={kind!r} (use path_patch for values)"
        )
    head = Head.parse(receiver)
    name = head.hook("pattern")
    clean = float(target_attention(task.clean_cache[name])[head.head])
    corrupted = float(target_attention(task.corrupted_cache[name])[head.head])
    if abs(clean - corrupted) < 0.01:
        return float("nan")
    _, cache = _run_split(
        model,
        task.corrupted,
        _path_hooks(model, task, sender, [(receiver, kind)]),
        names_filter=[name],
    )
    patched = float(target_attention(cache[name])[head.head])
    return (patched - corrupted) / (clean - corrupted)


def path_patch_matrix(
    model: HookedTransformer, task: InductionTask, kind: str = "k", metric: str = "logit"
) -> np.ndarray:
    """Path-patching effect of every sender head on every later head's ``kind`` input:
    [sender layer, sender head, receiver layer, receiver head] (NaN where not connected).

    ``metric``: ``"logit"`` (:func:`path_patch`) or ``"attention"`` (:func:`path_patch_attention`, q and k only).
    """
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    out = np.full((n_l, n_h, n_l, n_h), np.nan)
    for sl in range(n_l):
        for sh in range(n_h):
            for rl in range(sl + 1, n_l):
                for rh in range(n_h):
                    sender, receiver = str(Head(sl, sh)), str(Head(rl, rh))
                    if metric == "attention":
                        out[sl, sh, rl, rh] = path_patch_attention(
                            model, task, sender, receiver, kind
                        )
                    else:
                        out[sl, sh, rl, rh] = path_patch(model, task, sender, [(receiver, kind)])
    return out
