"""Bring your own checkpoints: make a run directory from training runs made elsewhere.

Sources:

* a folder of Hugging Face checkpoints, as the ``Trainer`` writes them
  (``checkpoint-<step>/`` with ``config.json``, the weights and, when saved,
  ``optimizer.pt``), or several such folders, one per seed;
* in Python, a mapping step -> `HookedTransformer` or TransformerLens state dict
  (or seed -> such a mapping);
* a TransformerLens checkpointed model name with checkpoint indices (Pythia,
  stanford-crfm GPT-2, ...; needs the Hugging Face hub).

Weights are converted by TransformerLens' own per-architecture converters
(``transformer_lens.pretrained.weight_conversions``) applied to the loaded
Hugging Face model, and loaded **without TransformerLens' weight processing**
(no LayerNorm folding, no centring of writing weights): gradients, G and Stream 3
depend on the parameterisation, so an imported checkpoint keeps the parameters
its optimizer saw. Parameters the converted model has but the source did not
train (GPT-2's unembedding bias) are frozen at zero and left out of every
measurement. One deviation stays: a tied embedding and unembedding (GPT-2) are
two TransformerLens parameters, measured as two coordinate blocks; mapped back,
their gradients sum to the tied one's.

AdamW moments in ``optimizer.pt`` go through the same converter as the weights
(the fused ``c_attn`` split into W_Q, W_K, W_V, and so on), so Stream 3's
``optimizer`` direction works where a checkpoint one step later exists: the real
update is then the difference of the two checkpoints. The batches of the source
run are unknown, so the replays of real steps (``work``, ``noise``, windows) refuse imported runs.

Hugging Face checkpoints are referenced, not copied: ``<run>/import.json`` records
their paths with sizes, modification times and SHA-256 hashes; a changed or
missing source is named when loaded. Checkpoints load lazily, one at a time. A checkpoint
whose weight file has the same hash as the previous one's of its seed is named in a warning
and recorded in ``import.json`` (``duplicates``, read by :meth:`Run.duplicate_steps`); the
step-to-step measurements leave it out (geometry's comparisons with the previous checkpoint,
Stream 1's drift, the SAE lineage, the real update).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import torch

from interp_ext import diskio
from interp_ext.errors import CheckpointImportError
from interp_ext.run import open_run
from interp_ext.run.checkpoints import save_checkpoint
from interp_ext.run.layout import Layout
from interp_ext.run.sources import (
    WEIGHT_FILES,
    convert,
    converters,
    file_record,
    hf_model,
    read_optimizer_file,
)

log = logging.getLogger("interp_ext")

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
HF_CONFIG = "config.json"  # a Hugging Face checkpoint's own config (not the run's)


# --------------------------------------------------------------------------- Hugging Face folders


def find_checkpoints(folder: Path) -> dict[int, Path]:
    """step -> checkpoint folder: ``checkpoint-<step>/`` subfolders, or the folder itself if it is one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointImportError(
            f"{folder} is not a folder; point at a Hugging Face Trainer output folder (with checkpoint-<step>/ subfolders)"
        )
    found = {
        int(m.group(1)): p
        for p in folder.iterdir()
        if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    }
    if not found and (folder / HF_CONFIG).exists():
        step = (
            json.loads((folder / "trainer_state.json").read_text()).get("global_step", 0)
            if (folder / "trainer_state.json").exists()
            else 0
        )
        found = {int(step): folder}
    if not found:
        raise CheckpointImportError(
            f"{folder} holds no checkpoints: expected checkpoint-<step>/ folders (as the Hugging Face Trainer writes them) or a config.json"
        )
    for path in found.values():
        if not (path / HF_CONFIG).exists() or not any((path / f).exists() for f in WEIGHT_FILES):
            raise CheckpointImportError(
                f"{path} is not a complete checkpoint: it needs config.json and {' or '.join(WEIGHT_FILES)}"
            )
    return dict(sorted(found.items()))


def architecture_of(path: Path) -> tuple[str, dict]:
    try:
        config = json.loads((path / HF_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointImportError(
            f"{path / 'config.json'} is not valid JSON ({err}); save the checkpoint's config again"
        ) from err
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in converters():
        raise CheckpointImportError(
            f"{path / 'config.json'}: architecture {arch!r} has no TransformerLens weight converter here; supported: {sorted(converters())}"
        )
    return arch, config


def hooked_config_dict(path: Path) -> dict:
    """The HookedTransformerConfig of a checkpoint, from TransformerLens' own config conversion
    (``convert_hf_model_config`` on the local folder); for GPT-2, whose current ``GPT2Config``
    lacks the ``n_ctx`` it reads, from the same mapping with ``n_positions``."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    arch, config = architecture_of(path)
    try:
        cfg = convert_hf_model_config(str(path))
    except AttributeError:
        if arch != "GPT2LMHeadModel":
            raise
        cfg = {
            "d_model": config["n_embd"],
            "d_head": config["n_embd"] // config["n_head"],
            "n_heads": config["n_head"],
            "d_mlp": config.get("n_inner") or 4 * config["n_embd"],
            "n_layers": config["n_layer"],
            "n_ctx": config["n_positions"],
            "eps": config["layer_norm_epsilon"],
            "d_vocab": config["vocab_size"],
            "act_fn": config["activation_function"],
            "use_attn_scale": config.get("scale_attn_weights", True),
            "use_local_attn": False,
            "scale_attn_by_inverse_layer_idx": config.get("scale_attn_by_inverse_layer_idx", False),
            "normalization_type": "LN",
            "original_architecture": arch,
        }
    cfg = {k: v for k, v in cfg.items() if k not in ("tokenizer_name",)}
    cfg.update(original_architecture=arch, dtype=torch.float32, device="cpu")
    return cfg


# --------------------------------------------------------------------------- the run directory


def import_checkpoints(
    source,
    out: str | Path,
    probe_text: str | Path | None = None,
    data_dir: str | Path | None = None,
    checkpoint_index: list[int] | None = None,
    probe_batches: int = 16,
    probe_batch_size: int = 8,
    n_ctx: int | None = None,
):
    """Make a run directory every measurement accepts from checkpoints made elsewhere; returns the opened run.

    Args:
        source: a Hugging Face Trainer output folder, a list of them (one per seed), a mapping
            step -> `HookedTransformer` or state dict (or seed -> such a mapping), or a
            TransformerLens checkpointed model name (with ``checkpoint_index``).
        out: the run directory to create (must not exist).
        probe_text: a text file the probe set is drawn from (tokenised with the checkpoints' tokenizer).
        data_dir: a folder with WikiText-2 raw files instead.
        n_ctx: probe sequence length (default: the model's context, at most 64).
    """
    out = Path(out)
    if out.exists():
        raise CheckpointImportError(
            f"{out} already exists; choose a new --out for the imported run"
        )
    check_probe_source(probe_text, data_dir)  # before any conversion or hashing
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None)
    )
    try:
        if isinstance(source, (str, Path)) and not Path(source).exists():
            _import_named(str(source), checkpoint_index, staging)
        elif isinstance(source, dict):
            _import_mapping(source, staging)
        else:
            _import_folders(
                [Path(p) for p in ([source] if isinstance(source, (str, Path)) else source)],
                staging,
                checkpoint_index,
            )
        _prepare_data(staging, probe_text, data_dir, probe_batches, probe_batch_size, n_ctx)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)  # nothing half-written: the run appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_run(out)


def select_indices(found: dict, indices: list[int] | None, where: str) -> dict:
    """The checkpoints at the given positions (0 = the earliest); an index out of range is named."""
    if indices is None:
        return found
    keys = list(found)
    bad = [i for i in indices if not -len(keys) <= i < len(keys)]
    if bad:
        raise CheckpointImportError(
            f"--checkpoint-index {','.join(map(str, bad))} is out of range: {where} holds {len(keys)} checkpoints "
            f"(indices 0..{len(keys) - 1}, steps {keys})"
        )
    return {keys[i]: found[keys[i]] for i in sorted({i % len(keys) for i in indices})}


def _import_folders(folders: list[Path], staging: Path, indices: list[int] | None = None) -> None:
    series = {
        seed: select_indices(find_checkpoints(folder), indices, str(folder))
        for seed, folder in enumerate(folders)
    }
    first = next(iter(next(iter(series.values())).values()))
    hooked = hooked_config_dict(first)
    index: dict = {}
    for seed, steps in series.items():
        for step, path in steps.items():
            other = hooked_config_dict(path)
            if other != hooked:
                diff = sorted(k for k in set(other) | set(hooked) if other.get(k) != hooked.get(k))
                raise CheckpointImportError(
                    f"{path / 'config.json'} does not match {first / 'config.json'} (differs in {diff}); a run's checkpoints must share one architecture"
                )
            files = [
                f for f in (*WEIGHT_FILES, "config.json", "optimizer.pt") if (path / f).exists()
            ]
            index.setdefault(str(seed), {})[str(step)] = {
                "folder": str(path.resolve()),
                "files": {f: file_record(path / f) for f in files},
            }
    opt = index_hyperparameters(first)
    _write_config(
        staging,
        hooked,
        opt,
        {
            "source": "huggingface",
            "checkpoints": index,
            "frozen": frozen_names(first, hooked),
            "duplicates": duplicate_steps(index),
        },
    )
    _copy_tokenizer(first, staging / "tokenizer")


def duplicate_steps(index: dict) -> dict[str, list[int]]:
    """seed -> the steps whose weight file has the same SHA-256 as the previous checkpoint's of
    that seed (a checkpoint saved twice under two steps, or training that did not move), each
    seed named in one warning; seeds without such steps are left out."""
    out = {}
    for seed, steps in index.items():
        digests = sorted((int(t), weights_digest(e)) for t, e in steps.items())
        same = [t for (_, a), (t, b) in zip(digests, digests[1:]) if a is not None and a == b]
        if same:
            log.warning(
                "steps %s of seed %s hold the same weights as the checkpoint before them; "
                "Stream 1 drift and geometry's comparisons with the previous checkpoint leave them out",
                same,
                seed,
            )
            out[seed] = same
    return out


def weights_digest(entry: dict) -> str | None:
    """The SHA-256 of a referenced checkpoint's weight file."""
    name = next((f for f in WEIGHT_FILES if f in entry["files"]), None)
    return entry["files"][name]["sha256"] if name else None


def frozen_names(path: Path, hooked: dict) -> list[str]:
    """TransformerLens parameters the source has no weights for (frozen at zero when loaded): those the
    converter leaves out, and the unembedding bias it fills with zeros when the source has none."""
    from transformer_lens import HookedTransformer

    from interp_ext.models import config_from_dict

    converted = convert(path, hooked)
    model = HookedTransformer(config_from_dict(hooked), move_to_device=False)
    head = hf_model(str(path)).get_output_embeddings()
    no_bias = getattr(head, "bias", None) is None
    return [
        n
        for n, _ in model.named_parameters()
        if n not in converted or (n == "unembed.b_U" and no_bias)
    ]


def index_hyperparameters(path: Path) -> dict:
    """The optimizer's hyper-parameters (first group) when the checkpoint saved its state."""
    file = path / "optimizer.pt"
    if not file.exists():
        return {}
    group = read_optimizer_file(file)["param_groups"][0]
    return {
        "lr": float(group["lr"]),
        "betas": tuple(group["betas"]),
        "weight_decay": float(group["weight_decay"]),
    }


def _copy_tokenizer(path: Path, target: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointImportError(
            f"{path} holds no tokenizer ({err}); save the tokenizer with the checkpoints (Trainer(processing_class=tokenizer))"
        ) from err
    diskio.atomic_dir(target, lambda tmp: tok.save_pretrained(str(tmp)))


def _write_config(staging: Path, hooked: dict, opt: dict, index: dict) -> None:
    from interp_ext.config import DataConfig, ModelConfig, RecordConfig, RunConfig, TrainConfig

    serial = {
        k: (str(v) if isinstance(v, torch.dtype) else v)
        for k, v in hooked.items()
        if k not in ("device",)
    }
    serial["dtype"] = "float32"
    model = ModelConfig(
        n_layers=hooked["n_layers"],
        n_heads=hooked["n_heads"],
        d_model=hooked["d_model"],
        d_mlp=hooked.get("d_mlp") or 4 * hooked["d_model"],
        n_ctx=hooked["n_ctx"],
        act_fn=hooked.get("act_fn") or "gelu",
        normalization_type=hooked.get("normalization_type", "LN"),
        attn_only=bool(hooked.get("attn_only", False)),
        hooked=serial,
    )
    last = max((int(t) for steps in index["checkpoints"].values() for t in steps), default=0)
    train = TrainConfig(
        steps=last,
        n_seeds=len(index["checkpoints"]) or 1,
        checkpoint_every=1,
        bf16=False,
        lr=opt.get("lr", 1e-3),
        weight_decay=opt.get("weight_decay", 0.0),
        betas=opt.get("betas", (0.9, 0.999)),
    )
    cfg = RunConfig(
        preset="imported",
        model=model,
        data=DataConfig(corpus="synthetic"),
        train=train,
        record=RecordConfig(),
    )
    staging.mkdir(parents=True, exist_ok=True)
    diskio.write_json(Layout(staging).config, cfg.payload({"imported": True}))
    diskio.write_json(Layout(staging).import_index, index)


def _import_mapping(source: dict, staging: Path) -> None:
    """Python objects: step -> HookedTransformer / state dict, or seed -> such a mapping (copied as native checkpoints)."""
    from transformer_lens import HookedTransformer

    series = (
        source
        if all(isinstance(v, dict) and not _is_state_dict(v) for v in source.values())
        else {0: source}
    )
    template = None
    for seed, steps in series.items():
        for step, obj in steps.items():
            if isinstance(obj, HookedTransformer):
                template = template or obj
                obj = {n: p.detach() for n, p in obj.named_parameters()}
            save_checkpoint(
                Layout(staging).checkpoint(int(seed), int(step)),
                obj,
                int(seed),
                int(step),
            )
    if template is None:
        raise CheckpointImportError(
            "a mapping of state dicts needs at least one HookedTransformer among its values (its config describes the model)"
        )
    hooked = {
        k: v
        for k, v in template.cfg.to_dict().items()
        if not callable(v) and k not in ("device", "n_devices", "tokenizer_prepends_bos")
    }
    _write_config(staging, hooked, {}, {"source": "python", "checkpoints": {}, "frozen": []})
    if template.tokenizer is None:
        raise CheckpointImportError(
            "the HookedTransformer has no tokenizer; set one with model.set_tokenizer(...) so probe text can be tokenised"
        )
    diskio.atomic_dir(
        Layout(staging).tokenizer, lambda tmp: template.tokenizer.save_pretrained(str(tmp))
    )


def _is_state_dict(value: dict) -> bool:
    return bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _import_named(name: str, indices: list[int] | None, staging: Path) -> None:
    """A TransformerLens checkpointed model (needs the hub): fetched per index, kept unprocessed."""
    from interp_ext.data import hub_offline

    if hub_offline():
        raise CheckpointImportError(
            f"{name!r} is not a local folder, and a TransformerLens checkpointed model needs the Hugging Face hub, which is unreachable (offline); import a local folder of checkpoints instead"
        )
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_checkpoint_labels

    labels, _ = get_checkpoint_labels(name)
    chosen = list(select_indices(dict(enumerate(labels)), indices, name))
    models = {
        int(labels[i]): HookedTransformer.from_pretrained_no_processing(
            name, checkpoint_index=i, device="cpu"
        )
        for i in chosen
    }
    _import_mapping(models, staging)


def check_probe_source(probe_text, data_dir) -> None:
    """The probe text is given and readable (checked before anything is converted or hashed)."""
    if probe_text is None and data_dir is None:
        raise CheckpointImportError(
            "an imported run needs text for its probe set: pass --probe-text FILE or --data-dir DIR (WikiText-2 raw)"
        )
    if probe_text is not None and not Path(probe_text).is_file():
        raise CheckpointImportError(
            f"--probe-text {probe_text}: no such file; pass a text file to draw the probe set from"
        )
    if data_dir is not None and not Path(data_dir).is_dir():
        raise CheckpointImportError(
            f"--data-dir {data_dir}: no such folder; pass a folder with wiki.*.raw (WikiText-2 raw)"
        )


def _probe_texts(probe_text, data_dir) -> tuple[str, str, str]:
    """(text to draw training-distribution windows from, held-out text, a note)."""
    from interp_ext.data import wikitext_from_dir

    if probe_text is not None:
        text = Path(probe_text).read_text(encoding="utf-8")
        cut = int(len(text) * 0.9)
        return text[:cut], text[cut:], f"probe text {Path(probe_text).name}"
    corpus = wikitext_from_dir(data_dir)
    return corpus.train_text, corpus.heldout_text, corpus.note


def _prepare_data(
    staging: Path,
    probe_text,
    data_dir,
    probe_batches: int,
    probe_batch_size: int,
    n_ctx: int | None,
) -> None:
    """Token streams and the probe set, from the user's text (or WikiText) and the checkpoints' tokenizer."""
    from interp_ext.config import RunConfig
    from interp_ext.data import TokenData, encode_text, load_tokenizer, make_probe_set

    train_text, held_text, note = _probe_texts(probe_text, data_dir)
    tok = load_tokenizer(staging / "tokenizer")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    cfg = RunConfig.load(Layout(staging).config)
    cfg.model.n_ctx = min(n_ctx or cfg.model.n_ctx, cfg.model.n_ctx, 64)
    cfg.data.probe_batches, cfg.data.probe_batch_size = probe_batches, probe_batch_size
    cfg.data.heldout_batches, cfg.data.repeated_batches = max(2, probe_batches // 4), 2
    data = TokenData(
        tok,
        encode_text(tok, train_text),
        encode_text(tok, held_text),
        int(bos),
        len(tok),
        "imported",
        note,
    )
    layout = Layout(staging)
    diskio.write_npy(layout.tokens("train"), data.train)
    diskio.write_npy(layout.tokens("heldout"), data.heldout)
    diskio.write_safetensors(layout.probe_set, make_probe_set(data, cfg.data, cfg.model))
    vocab = cfg.model.hooked.get("d_vocab", len(tok)) if cfg.model.hooked else len(tok)
    info = {"d_vocab": int(vocab), "bos": int(bos), "corpus": "imported", "corpus_note": note}
    diskio.write_json(layout.run_info, info)
    diskio.write_json(layout.config, cfg.payload(diskio.read_json(layout.config).get("provenance")))
