"""Export a checkpoint as a Hugging Face ``transformers`` folder: a ``GPT2LMHeadModel``.

The folder holds ``config.json`` and ``model.safetensors`` (``save_pretrained``) and, when the
run has one, its tokenizer's files, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it
and ``interp-ext import folder`` makes a run of it again.

The weights are the checkpoint's own, unprocessed (no LayerNorm folding, no centring), laid
out by the inverse of TransformerLens' ``convert_gpt2_weights``. What maps onto GPT-2:

* LayerNorm (``LN``; ``LNPre`` as a LayerNorm of weight 1 and bias 0), learned absolute
  positions, ``gelu_new``, ``gelu`` or ``relu`` MLPs, d_head x n_heads = d_model, the
  attention scale 1/sqrt(d_head) or none, and the layer-index scaling GPT-2 also has;
* an attention-only model, as GPT-2 with every MLP's weights and biases zero (the MLPs add
  nothing to the residual stream);
* an unembedding that is not the embedding's transpose, as an untied ``lm_head``
  (``tie_word_embeddings=False``); a tied one stays tied.

GPT-2's ``lm_head`` has no bias. A checkpoint whose unembedding bias b_U is not zero (every
trained checkpoint of a run made here) is refused, unless the bias is folded: the final
LayerNorm's output minus its bias is centred (zero mean over d_model), so adding (1/w) c^T to
W_U (w the final LayerNorm's weight) changes the logits by a constant term alone, and
choosing c and the LayerNorm's bias makes that term b_U. The exported model then gives the
same logits with another ``lm_head`` (imported back, W_U differs and b_U is zero).

Every export is checked before anything is written: the GPT-2 and the `HookedTransformer`
run the same random tokens and their logits must agree.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import einops
import torch

from interp_ext import diskio
from interp_ext.errors import ExportError

# TransformerLens activation -> the name GPT2Config's activation_function gives it
GPT2_ACT_FNS = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}
# settings of a HookedTransformerConfig GPT-2 has no counterpart for: each must keep its default
GPT2_LACKS = (
    "attention_dir",
    "use_local_attn",
    "parallel_attn_mlp",
    "gated_mlp",
    "final_rms",
    "post_embedding_ln",
    "use_normalization_before_and_after",
    "num_experts",
    "attn_scores_soft_cap",
    "output_logits_soft_cap",
    "use_qk_norm",
    "clip_qkv",
    "use_logn_attn",
    "use_attention_sinks",
)
# files of the model a tokenizer folder must not overwrite
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
CHECK_TOLERANCE = 1e-4  # of the logits' largest magnitude (at least 1)


def unmapped(cfg) -> list[str]:
    """What of a `HookedTransformerConfig` GPT-2 cannot express, each as ``name=value (why)``;
    empty when the architecture maps."""
    from transformer_lens import HookedTransformerConfig

    defaults = {f.name: f.default for f in dataclasses.fields(HookedTransformerConfig)}
    out = []
    if cfg.normalization_type not in ("LN", "LNPre"):
        out.append(
            f"normalization_type={cfg.normalization_type!r} (GPT-2 has LayerNorm: LN or LNPre map)"
        )
    if cfg.positional_embedding_type != "standard":
        out.append(
            f"positional_embedding_type={cfg.positional_embedding_type!r} "
            "(GPT-2 has learned absolute positions: 'standard')"
        )
    if not cfg.attn_only and cfg.act_fn not in GPT2_ACT_FNS:
        out.append(f"act_fn={cfg.act_fn!r} (maps: {', '.join(GPT2_ACT_FNS)})")
    if cfg.d_head * cfg.n_heads != cfg.d_model:
        out.append(
            f"d_head={cfg.d_head} x n_heads={cfg.n_heads} != d_model={cfg.d_model} "
            "(GPT-2 splits d_model into its heads)"
        )
    if cfg.n_key_value_heads not in (None, cfg.n_heads):
        out.append(f"n_key_value_heads={cfg.n_key_value_heads} (GPT-2 has no grouped queries)")
    if cfg.d_vocab_out != cfg.d_vocab:
        out.append(f"d_vocab_out={cfg.d_vocab_out} != d_vocab={cfg.d_vocab}")
    if cfg.use_attn_scale and not math.isclose(cfg.attn_scale, math.sqrt(cfg.d_head)):
        out.append(
            f"attn_scale={cfg.attn_scale} (GPT-2 divides by sqrt(d_head)={math.sqrt(cfg.d_head):g} or by nothing)"
        )
    for name in GPT2_LACKS:
        if name in defaults and getattr(cfg, name, defaults[name]) != defaults[name]:
            out.append(f"{name}={getattr(cfg, name)!r} (GPT-2 has no such setting)")
    return out


def gpt2_config(cfg, tokenizer=None, tied: bool = False):
    """The `GPT2Config` of a `HookedTransformerConfig` that maps (see :func:`unmapped`); no
    dropout, as the `HookedTransformer` has none."""
    from transformers import GPT2Config

    bos = eos = None
    if tokenizer is not None:
        bos = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    return GPT2Config(
        vocab_size=cfg.d_vocab,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=None if cfg.attn_only else cfg.d_mlp,  # attention-only: GPT-2's width, zeros
        activation_function="gelu_new" if cfg.attn_only else GPT2_ACT_FNS[cfg.act_fn],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=cfg.eps,
        scale_attn_weights=bool(cfg.use_attn_scale),
        scale_attn_by_inverse_layer_idx=bool(cfg.scale_attn_by_inverse_layer_idx),
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=tied,
        architectures=["GPT2LMHeadModel"],
    )


def fold_unembed_bias(
    W_U: torch.Tensor, b_U: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_U', b') with (w n + b') W_U' = (w n + b) W_U + b_U for every centred n (n . 1 = 0).

    W_U' = W_U + (1/w) c^T adds (sum_i y_i / w_i) c = (b' . (1/w)) c to the logits of a final
    LayerNorm output y = w n + b'; b' = b + eps w with eps chosen so that b' . (1/w) = d_model,
    and c = (b_U - eps w W_U) / d_model, which keeps c of the size of b_U."""
    d_model = W_U.shape[0]
    eps = 1.0 - float((b / w).sum()) / d_model
    c = (b_U - eps * (w @ W_U)) / d_model
    return W_U + torch.outer(1.0 / w, c), b + eps * w


def gpt2_state_dict(model, fold: bool = False) -> dict[str, torch.Tensor]:
    """A `HookedTransformer`'s parameters in ``GPT2LMHeadModel``'s names and layouts: the inverse
    of TransformerLens' ``convert_gpt2_weights`` (Conv1D weights are [in, out]; c_attn is Q, K, V
    side by side, each heads-major). ``fold``: fold a non-zero b_U into lm_head (module docstring)."""
    cfg = model.cfg
    p = {n: t.detach().to("cpu", torch.float32) for n, t in model.state_dict().items()}
    d, d_mlp = cfg.d_model, (4 * cfg.d_model if cfg.attn_only else cfg.d_mlp)

    def norm(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if cfg.normalization_type == "LN":
            return p[f"{name}.w"], p[f"{name}.b"]
        return torch.ones(d), torch.zeros(d)  # LNPre: a LayerNorm without weight and bias

    sd = {"transformer.wte.weight": p["embed.W_E"], "transformer.wpe.weight": p["pos_embed.W_pos"]}
    for layer in range(cfg.n_layers):
        h, blk = f"transformer.h.{layer}", f"blocks.{layer}"
        sd[f"{h}.ln_1.weight"], sd[f"{h}.ln_1.bias"] = norm(f"{blk}.ln1")
        sd[f"{h}.attn.c_attn.weight"] = torch.cat(
            [einops.rearrange(p[f"{blk}.attn.W_{x}"], "i m h -> m (i h)") for x in "QKV"], dim=1
        )
        sd[f"{h}.attn.c_attn.bias"] = torch.cat(
            [einops.rearrange(p[f"{blk}.attn.b_{x}"], "i h -> (i h)") for x in "QKV"]
        )
        sd[f"{h}.attn.c_proj.weight"] = einops.rearrange(p[f"{blk}.attn.W_O"], "i h m -> (i h) m")
        sd[f"{h}.attn.c_proj.bias"] = p[f"{blk}.attn.b_O"]
        if cfg.attn_only:  # GPT-2 with a zero MLP adds nothing to the residual stream
            sd[f"{h}.ln_2.weight"], sd[f"{h}.ln_2.bias"] = torch.ones(d), torch.zeros(d)
            sd[f"{h}.mlp.c_fc.weight"], sd[f"{h}.mlp.c_fc.bias"] = (
                torch.zeros(d, d_mlp),
                torch.zeros(d_mlp),
            )
            sd[f"{h}.mlp.c_proj.weight"], sd[f"{h}.mlp.c_proj.bias"] = (
                torch.zeros(d_mlp, d),
                torch.zeros(d),
            )
            continue
        sd[f"{h}.ln_2.weight"], sd[f"{h}.ln_2.bias"] = norm(f"{blk}.ln2")
        sd[f"{h}.mlp.c_fc.weight"], sd[f"{h}.mlp.c_fc.bias"] = (
            p[f"{blk}.mlp.W_in"],
            p[f"{blk}.mlp.b_in"],
        )
        sd[f"{h}.mlp.c_proj.weight"], sd[f"{h}.mlp.c_proj.bias"] = (
            p[f"{blk}.mlp.W_out"],
            p[f"{blk}.mlp.b_out"],
        )
    w, b = norm("ln_final")
    W_U = p["unembed.W_U"]
    if fold:
        W_U, b = fold_unembed_bias(W_U, p["unembed.b_U"], w, b)
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = w, b
    sd["lm_head.weight"] = W_U.T.contiguous()
    return sd


def check_bias(model, fold: bool) -> bool:
    """Whether b_U must be folded; refuses a non-zero b_U without ``fold``, and a fold the final
    LayerNorm's weight cannot carry (a zero entry)."""
    b_U = model.unembed.b_U.detach()
    if not bool(b_U.any()):
        return False
    if not fold:
        raise ExportError(
            f"unembed.b_U is not zero (max |b_U| = {float(b_U.abs().max()):.3g}) and GPT-2's "
            "lm_head has no bias; pass --fold-unembed-bias (fold_unembed_bias=True) to fold it into "
            "lm_head through the final LayerNorm (the same logits, another lm_head)"
        )
    if model.cfg.normalization_type == "LN" and not bool(model.ln_final.w.detach().all()):
        raise ExportError(
            "ln_final.w has zero entries, so unembed.b_U cannot be folded into lm_head; "
            "this checkpoint does not map onto GPT-2"
        )
    return True


def max_logit_difference(model, hf, n_seq: int = 4, seed: int = 0) -> tuple[float, float]:
    """(max |logits difference|, max |logits|) of the `HookedTransformer` and the GPT-2 on
    ``n_seq`` random sequences of min(n_ctx, 32) tokens."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.d_vocab, (n_seq, min(cfg.n_ctx, 32)), generator=gen)
    with torch.no_grad():
        ours = model(tokens.to(cfg.device), return_type="logits").float().cpu()
        theirs = hf(input_ids=tokens).logits.float()
    return float((ours - theirs).abs().max()), float(ours.abs().max())


def export_model(
    model, out: str | Path, fold_unembed_bias: bool = False, tokenizer_dir: str | Path | None = None
) -> Path:
    """Write a `HookedTransformer` as a ``GPT2LMHeadModel`` folder (``config.json``,
    ``model.safetensors``) and its tokenizer: the files of ``tokenizer_dir``, else the model's
    own tokenizer when it has one. ``out`` must not exist or be empty; returns it.

    Raises :class:`ExportError` naming what does not map (module docstring), a non-zero b_U
    without ``fold_unembed_bias``, or logits that disagree; nothing is written then."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    out = Path(out)
    check_out(out)
    problems = unmapped(model.cfg)
    if problems:
        raise ExportError(f"the model does not map onto GPT-2: {'; '.join(problems)}")
    fold = check_bias(model, fold_unembed_bias)
    W_E, W_U = model.embed.W_E.detach(), model.unembed.W_U.detach()
    tied = not fold and torch.equal(W_U.T, W_E)
    hf = GPT2LMHeadModel(gpt2_config(model.cfg, model.tokenizer, tied)).eval()
    hf.load_state_dict(gpt2_state_dict(model, fold), strict=True)
    diff, scale = max_logit_difference(model, hf)
    if not diff <= CHECK_TOLERANCE * max(1.0, scale):
        raise ExportError(
            f"the GPT-2 made of this model disagrees with it by {diff:.3g} in the logits "
            f"(largest logit {scale:.3g}); nothing was written to {out}"
        )

    def write(tmp: Path) -> None:
        folder = Path(tokenizer_dir) if tokenizer_dir is not None else None
        if folder is not None and folder.is_dir():
            for file in folder.iterdir():
                if file.is_file() and file.name not in MODEL_FILES:
                    shutil.copy2(file, tmp / file.name)
        elif model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp))
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one line of output per export, not a bar
        try:
            hf.save_pretrained(str(tmp))
        finally:
            if shown:
                hf_logging.enable_progress_bar()

    return diskio.atomic_dir(out, write)


def check_out(out: Path) -> None:
    """``out`` is free: missing, or an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(
            f"--out {out} already exists and is not empty; give a new or empty folder"
        )


def export_checkpoint(
    run,
    seed: int | None = None,
    step: int | None = None,
    out: str | Path = "export",
    fold_unembed_bias: bool = False,
) -> Path:
    """Write one checkpoint of a run (a :class:`~interp_ext.run.Run` or its folder) as a
    Hugging Face ``GPT2LMHeadModel`` folder with the run's tokenizer (:func:`export_model`).

    Args:
        seed: default the run's first seed.
        step: default that seed's last checkpoint.
        out: the folder to write (must not exist, or be empty).
        fold_unembed_bias: fold a non-zero unembedding bias into ``lm_head`` (same logits);
            without it such a checkpoint is refused.
    """
    from interp_ext.run import Run, open_run

    out = Path(out)
    check_out(out)  # before a checkpoint is read
    run = run if isinstance(run, Run) else open_run(run)
    seed = run.seeds[0] if seed is None else seed
    model = run.model(seed, step, device="cpu")
    step = run.steps_for(seed)[-1] if step is None else step
    try:
        return export_model(model, out, fold_unembed_bias, run.layout.tokenizer)
    except ExportError as err:
        raise ExportError(f"{run.path} seed {seed} step {step}: {err}") from err


__all__ = ["export_checkpoint", "export_model", "gpt2_state_dict", "unmapped"]
