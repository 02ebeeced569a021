"""The run directory (SPEC section 2): checkpoints, recorded activations, the
probe set, the tokenizer and the tidy metrics table, behind :func:`open_run`.

::

    <run>/config.json
    <run>/tokenizer/                              local pretrained tokenizer dir
    <run>/data/{train,heldout}.npy                token streams the run trained on
    <run>/probe_set.safetensors                   lm / heldout / repeated probe tokens
    <run>/checkpoints/seed=<s>/step=<t>.safetensors
    <run>/activations/seed=<s>/step=<t>.safetensors
    <run>/metrics.parquet                         run, seed, step, family, metric, component, value

Every file is written atomically (temporary file + rename), so a crash or Ctrl-C
leaves the last complete checkpoint loadable.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interp_ext.config import RunConfig

METRIC_COLUMNS = ["run", "seed", "step", "family", "metric", "component", "value"]
_STEP_RE = re.compile(r"^step=(\d+)\.safetensors$")
_SEED_RE = re.compile(r"^seed=(-?\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint or activation file is missing, corrupt or truncated."""


class RunError(FileNotFoundError):
    """A path is not a run directory, or asks for something the run does not hold."""


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a truncated or corrupt file into a clear error."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({err}); delete it to fall back to the previous checkpoint"
        ) from err


def safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({err})") from err


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path,
    params: dict[str, torch.Tensor],
    seed: int,
    step: int,
    exp_avg: dict[str, torch.Tensor] | None = None,
    exp_avg_sq: dict[str, torch.Tensor] | None = None,
    adam_step: float = 0.0,
) -> None:
    """One seed's checkpoint: parameters, AdamW state and the data position (= step).

    Batches are a pure function of (seed, step) and training draws no other
    random numbers, so the step is the whole RNG and data state; the torch RNG
    state is stored too for code that adds randomness.
    """
    tensors = {f"params/{k}": v for k, v in params.items()}
    if exp_avg is not None and exp_avg_sq is not None:
        tensors.update({f"exp_avg/{k}": v for k, v in exp_avg.items()})
        tensors.update({f"exp_avg_sq/{k}": v for k, v in exp_avg_sq.items()})
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    meta = {"format": "interp-ext-checkpoint/1", "seed": str(seed), "step": str(step), "adam_step": repr(float(adam_step))}
    atomic_save_safetensors(tensors, path, meta)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        dict with ``params``, ``exp_avg``, ``exp_avg_sq`` (empty dicts at step 0),
        ``adam_step``, ``seed``, ``step`` and ``rng``.
    """
    tensors = load_safetensors(path)
    meta = safetensors_metadata(path)
    if meta.get("format") != "interp-ext-checkpoint/1":
        raise CheckpointError(f"{path} is not an interp-ext checkpoint (metadata {meta})")
    out: dict = {"params": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        if kind in out:
            out[kind][name] = value
    out.update(seed=int(meta["seed"]), step=int(meta["step"]), adam_step=float(meta["adam_step"]), rng=tensors.get("rng/torch_cpu"))
    return out


# --------------------------------------------------------------------------- metrics table


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_metrics(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else ("int64" if c in ("seed", "step") else "object")) for c in METRIC_COLUMNS})
    return pd.read_parquet(path)


def append_metrics(path: Path, rows: pd.DataFrame | Iterable[dict], run_name: str = "") -> pd.DataFrame:
    """Append rows to the tidy table, replacing rows with the same key.

    The key is every column except ``value``, so re-running a measurement
    replaces its own rows instead of duplicating them. Extra columns (e.g.
    ``direction``, ``params``) are allowed; missing ones are filled with "".
    """
    new = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if new.empty:
        return read_metrics(path)
    if "run" not in new:
        new["run"] = run_name
    for col in ("family", "metric"):
        if col not in new:
            raise ValueError(f"metric rows need a {col!r} column; got columns {list(new.columns)}")
    new["component"] = new.get("component", "")
    new["component"] = new["component"].fillna("").astype(str)
    new["seed"] = new.get("seed", -1)
    new["step"] = new.get("step", -1)
    new = new.astype({"seed": "int64", "step": "int64", "value": "float64"})
    with _locked(path):
        old = read_metrics(path)
        extra = [c for c in list(old.columns) + list(new.columns) if c not in METRIC_COLUMNS]
        extra = list(dict.fromkeys(extra))
        for frame in (old, new):
            for col in extra:
                if col not in frame:
                    frame[col] = ""
        key = [c for c in METRIC_COLUMNS + extra if c != "value"]
        for frame in (old, new):
            for col in key:
                if col not in ("seed", "step"):
                    frame[col] = frame[col].fillna("").astype(str)
        combined = pd.concat([old, new[METRIC_COLUMNS + extra]], ignore_index=True) if len(old) else new[METRIC_COLUMNS + extra]
        combined = combined.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
        tmp = path.with_name(path.name + ".tmp")
        combined.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return combined


def drop_metrics(path: Path, family: str) -> None:
    """Remove every row of one family (for measurements whose keys change between runs)."""
    if not path.exists():
        return
    with _locked(path):
        df = read_metrics(path)
        tmp = path.with_name(path.name + ".tmp")
        df[df["family"] != family].to_parquet(tmp, index=False)
        os.replace(tmp, path)


# --------------------------------------------------------------------------- run


class Run:
    """A run directory opened for reading (and appending metrics).

    Attributes:
        path: the run directory.
        config: the resolved :class:`RunConfig` the run was made with.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        if not cfg_path.exists():
            raise RunError(f"{self.path} is not a run directory (no config.json); create one with `interp-ext train --out {self.path}`")
        self.config = RunConfig.load(cfg_path)
        self.name = self.path.name
        self._tokenizer = None
        self._model_cache: dict = {}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, seeds={self.seeds}, steps={self.steps[:3]}...{self.steps[-1:] if self.steps else []})"

    # -- layout
    def checkpoint_path(self, seed: int, step: int) -> Path:
        return self.path / "checkpoints" / f"seed={seed}" / f"step={step}.safetensors"

    def activation_path(self, seed: int, step: int) -> Path:
        return self.path / "activations" / f"seed={seed}" / f"step={step}.safetensors"

    @property
    def metrics_path(self) -> Path:
        """The file this process appends to (a per-rank part file under torchrun)."""
        from interp_ext.distributed import metrics_part

        return self.path / metrics_part()

    def _steps_in(self, folder: Path) -> list[int]:
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in folder.iterdir() if (m := _STEP_RE.match(f.name)))

    @property
    def seeds(self) -> list[int]:
        """Seeds with at least one checkpoint."""
        root = self.path / "checkpoints"
        if not root.is_dir():
            return []
        return sorted(int(m.group(1)) for d in root.iterdir() if (m := _SEED_RE.match(d.name)) and self._steps_in(d))

    def steps_for(self, seed: int) -> list[int]:
        return self._steps_in(self.path / "checkpoints" / f"seed={seed}")

    @property
    def steps(self) -> list[int]:
        """Checkpoint steps present for every seed."""
        per_seed = [set(self.steps_for(s)) for s in self.seeds]
        return sorted(set.intersection(*per_seed)) if per_seed else []

    def _check_step(self, seed: int, step: int | None) -> int:
        if seed not in self.seeds:
            raise RunError(f"seed {seed} has no checkpoints in {self.path}; available seeds: {self.seeds}")
        steps = self.steps_for(seed)
        if step is None:
            return steps[-1]
        if step not in steps:
            raise RunError(f"no checkpoint for seed {seed} at step {step}; available steps: {steps}")
        return step

    # -- contents
    def tokenizer(self):
        if self._tokenizer is None:
            from interp_ext.data import load_tokenizer

            self._tokenizer = load_tokenizer(self.path / "tokenizer")
        return self._tokenizer

    @property
    def d_vocab(self) -> int:
        return int(json.loads((self.path / "run_info.json").read_text())["d_vocab"])

    def state_dict(self, seed: int, step: int | None = None) -> dict[str, torch.Tensor]:
        """The parameters of one seed at one checkpoint (TransformerLens names)."""
        step = self._check_step(seed, step)
        return load_checkpoint(self.checkpoint_path(seed, step))["params"]

    def checkpoint(self, seed: int, step: int | None = None) -> dict:
        """The whole checkpoint (params, AdamW moments, step counter)."""
        step = self._check_step(seed, step)
        return load_checkpoint(self.checkpoint_path(seed, step))

    @property
    def device(self) -> str:
        """Where measurements run: the training device when it is available here, else the CPU."""
        dev = self.config.train.device
        return dev if dev == "cpu" or (dev.startswith("cuda") and torch.cuda.is_available()) else "cpu"

    def model(self, seed: int | None = None, step: int | None = None, device: str | None = None):
        """A ready `HookedTransformer` (with the run's tokenizer) at a checkpoint.

        Args:
            seed: defaults to the first seed.
            step: defaults to the last checkpoint of that seed.
            device: defaults to :attr:`device`.
        """
        from interp_ext.models import build_model

        device = device or self.device

        seed = self.seeds[0] if seed is None else seed
        state = self.state_dict(seed, step)
        model = build_model(self.config.model, self.d_vocab, seed=0, device=device, tokenizer=self.tokenizer())
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.endswith((".mask", ".IGNORE"))]
        if bad or unexpected:
            raise CheckpointError(f"checkpoint of seed {seed} step {step} does not match the model: missing {bad}, unexpected {unexpected}")
        model.eval()
        return model

    def activations(self, seed: int, step: int) -> dict[str, torch.Tensor]:
        """Recorded hook activations at one step: hook name -> [n_seq, ...] float32."""
        path = self.activation_path(seed, step)
        if not path.exists():
            have = self._steps_in(path.parent)
            raise RunError(f"no activations recorded for seed {seed} at step {step}; recorded steps: {have}; record hooks with --record HOOK")
        return load_safetensors(path)

    def recorded_hooks(self) -> list[str]:
        return list(self.config.record.hooks)

    def probe_set(self) -> dict[str, torch.Tensor]:
        """The fixed probe tokens: ``lm`` [B, batch, pos], ``heldout``, ``repeated``."""
        return load_safetensors(self.path / "probe_set.safetensors")

    def train_tokens(self) -> np.ndarray:
        return np.load(self.path / "data" / "train.npy")

    def heldout_tokens(self) -> np.ndarray:
        return np.load(self.path / "data" / "heldout.npy")

    def metrics(self, family: str | None = None) -> pd.DataFrame:
        """The tidy metrics table (optionally one family), per-rank part files merged."""
        parts = [self.path / "metrics.parquet"] + sorted(self.path.glob("metrics.rank*.parquet"))
        frames = [read_metrics(p) for p in parts if p.exists()]
        if len(frames) > 1:
            df = pd.concat(frames, ignore_index=True)
            key = [c for c in df.columns if c != "value"]
            df[key] = df[key].fillna("")
            df = df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
        else:
            df = frames[0] if frames else read_metrics(self.path / "metrics.parquet")
        return df[df["family"] == family].reset_index(drop=True) if family else df

    def append_metrics(self, rows: pd.DataFrame | Iterable[dict]) -> pd.DataFrame:
        """Append rows (dicts or a DataFrame) to ``metrics.parquet``; same key replaces."""
        return append_metrics(self.metrics_path, rows, run_name=self.name)

    def drop_metrics(self, family: str) -> None:
        """Remove a family's rows from this process's metrics file (before re-measuring it)."""
        drop_metrics(self.metrics_path, family)

    def info(self) -> dict:
        df = self.metrics()
        return {
            "path": str(self.path),
            "preset": self.config.preset,
            "seeds": self.seeds,
            "steps": self.steps,
            "corpus": json.loads((self.path / "run_info.json").read_text()).get("corpus_note", ""),
            "d_vocab": self.d_vocab,
            "model": self.config.model.__dict__,
            "recorded_hooks": self.recorded_hooks(),
            "metric_families": sorted(df["family"].unique().tolist()) if len(df) else [],
        }


def open_run(path: str | Path) -> Run:
    """Open a run directory written by ``interp-ext train``."""
    return Run(path)
