"""Imported checkpoints as a source of a run's checkpoints (``interp-ext import`` writes the index).

A Hugging Face checkpoint stays where it was made; ``<run>/import.json`` records its
files with their sizes and SHA-256 hashes. When read, its weights go through
TransformerLens' own per-architecture converter (``transformer_lens.pretrained.
weight_conversions``), without TransformerLens' weight processing, and the AdamW
moments in ``optimizer.pt`` through the same converter.

``optimizer.pt`` holds the moments by position, not by name. The position of each
parameter is found by matching: the Hugging Face Trainer's order (decayed
parameters first, then the rest, as two groups), or the model's own parameter
order (a plain ``torch.optim.AdamW(model.parameters())`` loop, or several groups
over consecutive parameters), each kept only when every moment's shape and every
group's size fit. When no order fits, or two fit and disagree, the weights still
load and the moments are marked absent with one warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from functools import cache, lru_cache
from pathlib import Path

import torch

from interp_ext.errors import CheckpointImportError

log = logging.getLogger("interp_ext")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def converters() -> dict:
    """Hugging Face architecture -> TransformerLens' converter of its weights."""
    from transformer_lens.pretrained import weight_conversions as wc

    return {
        "GPT2LMHeadModel": wc.convert_gpt2_weights,
        "GPTNeoXForCausalLM": wc.convert_neox_weights,
        "GPTNeoForCausalLM": wc.convert_neo_weights,
        "GPTJForCausalLM": wc.convert_gptj_weights,
        "OPTForCausalLM": wc.convert_opt_weights,
        "LlamaForCausalLM": wc.convert_llama_weights,
    }


@lru_cache(maxsize=1)
def hf_model(path: str):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per loaded checkpoint would bury the measurement's own
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    except Exception as err:  # transformers raises OSError, ValueError, safetensors' own errors...
        weights = [f for f in WEIGHT_FILES if (Path(path) / f).exists()]
        raise CheckpointImportError(
            f"{Path(path) / (weights[0] if weights else 'config.json')} cannot be loaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "the file is corrupt or truncated: save the checkpoint again"
        ) from err
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def convert(path: Path, hooked: dict) -> dict[str, torch.Tensor]:
    """A checkpoint's weights in TransformerLens names, by TransformerLens' converter."""
    from interp_ext.models import config_from_dict

    model = hf_model(str(path))
    cfg = config_from_dict(hooked)
    return {
        k: v.detach().clone()
        for k, v in converters()[hooked["original_architecture"]](model, cfg).items()
    }


def decay_parameter_names(model) -> list[str]:
    """The parameters the Trainer's AdamW decays (its first parameter group), by the Trainer's own rule."""
    from transformers import Trainer

    return Trainer.get_decay_parameter_names(None, model)


def read_optimizer_file(file: Path) -> dict:
    """``optimizer.pt`` as saved by ``torch.optim`` (``state`` and ``param_groups``); a corrupt
    file is a one-line error naming it."""
    try:
        saved = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load raises many types on a damaged pickle or zip
        raise CheckpointImportError(
            f"{file} cannot be read ({type(err).__name__}: {err}); restore the file, or delete it to import the weights without AdamW moments"
        ) from err
    if not isinstance(saved, dict) or not {"state", "param_groups"} <= set(saved):
        raise CheckpointImportError(
            f"{file} is not a torch.optim state dict (no 'state' and 'param_groups'); delete it to import the weights without AdamW moments"
        )
    return saved


def candidate_orders(model, groups: list[list[int]]) -> dict[str, list[str]]:
    """Parameter names by optimizer index under each order a training loop could have used, kept
    only where the group sizes fit it."""
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = [len(g) for g in groups]
    indices = [i for g in groups for i in g]
    out: dict[str, list[str]] = {}
    if sorted(indices) != list(range(len(named))):
        return out
    decay = set(decay_parameter_names(model))
    trainer = [n for n in named if n in decay] + [n for n in named if n not in decay]
    if sizes == [len(decay & set(named)), len(named) - len(decay & set(named))]:
        out["trainer"] = trainer
    out["model"] = named  # model.parameters() order, one group or consecutive groups
    return out


def shapes_fit(model, order: list[str], state: dict) -> bool:
    params = dict(model.named_parameters())
    for idx, name in enumerate(order):
        entry = state.get(idx)
        if entry is None:
            return False
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in entry or tuple(entry[key].shape) != tuple(params[name].shape):
                return False
    return True


def moment_order(model, saved: dict) -> tuple[list[str] | None, str]:
    """(parameter names by optimizer index, which order) or (None, why no order is unambiguous)."""
    groups = [list(g["params"]) for g in saved["param_groups"]]
    if any(not all(isinstance(i, int) for i in g) for g in groups):
        return None, "its param_groups do not list parameter indices"
    orders = candidate_orders(model, groups)
    if not orders:
        n_model = sum(p.requires_grad for p in model.parameters())
        return (
            None,
            f"it holds {sum(len(g) for g in groups)} parameters, the model {n_model}",
        )
    fits = {k: o for k, o in orders.items() if shapes_fit(model, o, saved["state"])}
    distinct = {tuple(o) for o in fits.values()}
    if len(distinct) == 1:
        return next(iter(fits.values())), "/".join(fits)
    if not fits:
        return None, f"no parameter order ({', '.join(orders)}) fits the shapes of its moments"
    return None, f"two parameter orders ({', '.join(fits)}) fit its moments and disagree"


def convert_moments(path: Path, hooked: dict) -> dict | None:
    """AdamW state from ``optimizer.pt`` in TransformerLens names (through the weight converter), with
    each parameter group's hyper-parameters; None when the checkpoint holds no optimizer state, and
    ``{"absent": why}`` when its moments cannot be mapped to parameters unambiguously."""
    from interp_ext.models import config_from_dict

    file = path / "optimizer.pt"
    if not file.exists():
        return None
    saved = read_optimizer_file(file)
    model = hf_model(str(path))
    order, how = moment_order(model, saved)
    if order is None:
        return {"absent": f"{file}: AdamW moments not imported: {how}"}
    group_of = {
        order[i]: g for g, group in enumerate(saved["param_groups"]) for i in group["params"]
    }
    cfg = config_from_dict(hooked)
    convert_fn = converters()[hooked["original_architecture"]]

    def converted(fill) -> dict[str, torch.Tensor]:
        twin = copy.deepcopy(model)
        params = dict(twin.named_parameters())
        with torch.no_grad():
            for idx, name in enumerate(order):
                fill(params[name], idx, name)
        return {k: v.detach().clone() for k, v in convert_fn(twin, cfg).items()}

    first = next(iter(saved["state"].values()), {})
    out = {
        "step": float(first.get("step", 0.0)),
        "order": how,
        "groups": [
            {k: g[k] for k in ("lr", "betas", "eps", "weight_decay") if k in g}
            for g in saved["param_groups"]
        ],
    }
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = converted(lambda p, idx, name, key=key: p.copy_(saved["state"][idx][key]))
    groups = converted(lambda p, idx, name: p.fill_(float(group_of[name])))
    out["group"] = {k: v.round().long() for k, v in groups.items()}
    return out


def file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    return {"sha256": digest.hexdigest(), "size": stat.st_size, "mtime": stat.st_mtime}


def check_source(entry: dict) -> None:
    """Raise naming the file when a referenced source changed or is missing since the import."""
    for name, rec in entry["files"].items():
        path = Path(entry["folder"]) / name
        if not path.exists():
            raise CheckpointImportError(
                f"the imported checkpoint {path} is missing; restore it, or import the run again from where it now is"
            )
        stat = path.stat()
        if (stat.st_size, stat.st_mtime) != (rec["size"], rec["mtime"]) and file_record(path)[
            "sha256"
        ] != rec["sha256"]:
            raise CheckpointImportError(
                f"the imported checkpoint {path} changed since the import (its SHA-256 differs); import the run again to measure the new file"
            )


def load_imported(run, seed: int, step: int) -> dict:
    """A referenced checkpoint in the run's checkpoint format (params, moments, step count); the last
    two are kept converted (a measurement reads a checkpoint several times)."""
    entry = run.imported_checkpoints()[seed][step]
    check_source(entry)  # every time: a source changed or removed since an earlier load is named
    return _load_imported(
        json.dumps(entry, sort_keys=True),
        json.dumps(run.config.model.hooked, sort_keys=True, default=str),
        seed,
        step,
    )


@lru_cache(maxsize=2)
def _load_imported(entry_json: str, hooked_json: str, seed: int, step: int) -> dict:
    entry, hooked = json.loads(entry_json), json.loads(hooked_json)
    params = convert(Path(entry["folder"]), hooked)
    moments = convert_moments(Path(entry["folder"]), hooked)
    out = {
        "params": params,
        "exp_avg": {},
        "exp_avg_sq": {},
        "adam_step": 0.0,
        "seed": seed,
        "step": step,
    }
    if moments and "absent" in moments:
        warn_once(moments["absent"])
        out["moments_absent"] = moments["absent"]
    elif moments:
        out.update(
            exp_avg=moments["exp_avg"],
            exp_avg_sq=moments["exp_avg_sq"],
            adam_step=moments["step"],
            groups=moments["groups"],
            group=moments["group"],
        )
    return out


@cache
def warn_once(message: str) -> None:
    log.warning("%s; the weights load, and what needs the moments says so", message)
