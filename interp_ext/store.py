"""The run directory (SPEC section 2): checkpoints, recorded activations, the
probe set, the tokenizer and the tidy metrics table, behind :func:`open_run`.

::

    <run>/config.json
    <run>/tokenizer/                              local pretrained tokenizer dir
    <run>/data/{train,heldout}.npy                token streams the run trained on
    <run>/probe_set.safetensors                   lm / heldout / repeated probe tokens
    <run>/checkpoints/seed=<s>/step=<t>.safetensors
    <run>/activations/seed=<s>/step=<t>.safetensors
    <run>/metrics/<family>/<settings>/<unit>.parquet   run, seed, step, family, metric, component, value, settings
    <run>/measurements/<settings>.json            the settings each measurement was made with

Every file is written atomically (temporary file + rename), so a crash or Ctrl-C
leaves the last complete checkpoint loadable. The metrics table is append-only
(:mod:`interp_ext.metrics_store`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interp_ext import metrics_store
from interp_ext.config import RunConfig

_STEP_RE = re.compile(r"^step=(\d+)\.safetensors$")
_SEED_RE = re.compile(r"^seed=(-?\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint or activation file is missing, corrupt or truncated."""


class RunError(FileNotFoundError):
    """A path is not a run directory, or asks for something the run does not hold."""


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata
    )
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
    meta = {
        "format": "interp-ext-checkpoint/1",
        "seed": str(seed),
        "step": str(step),
        "adam_step": repr(float(adam_step)),
    }
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
    out.update(
        seed=int(meta["seed"]),
        step=int(meta["step"]),
        adam_step=float(meta["adam_step"]),
        rng=tensors.get("rng/torch_cpu"),
    )
    return out


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
            raise RunError(
                f"{self.path} is not a run directory (no config.json); create one with `interp-ext train --out {self.path}`"
            )
        self.config = RunConfig.load(cfg_path)
        self.name = self.path.name
        self._tokenizer = None
        self._probe: dict[str, torch.Tensor] | None = None
        self._train: np.ndarray | None = None
        self._imports: dict | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, seeds={self.seeds}, steps={self.steps[:3]}...{self.steps[-1:] if self.steps else []})"

    # -- layout
    def checkpoint_path(self, seed: int, step: int) -> Path:
        return self.path / "checkpoints" / f"seed={seed}" / f"step={step}.safetensors"

    def activation_path(self, seed: int, step: int) -> Path:
        return self.path / "activations" / f"seed={seed}" / f"step={step}.safetensors"

    @property
    def metrics_dir(self) -> Path:
        """The append-only metrics store (one parquet part per unit of work)."""
        return self.path / "metrics"

    def _steps_in(self, folder: Path) -> list[int]:
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in folder.iterdir() if (m := _STEP_RE.match(f.name)))

    @property
    def seeds(self) -> list[int]:
        """Seeds with at least one checkpoint."""
        root = self.path / "checkpoints"
        native = (
            {
                int(m.group(1))
                for d in root.iterdir()
                if (m := _SEED_RE.match(d.name)) and self._steps_in(d)
            }
            if root.is_dir()
            else set()
        )
        return sorted(native | set(self.imported_checkpoints()))

    def steps_for(self, seed: int) -> list[int]:
        native = self._steps_in(self.path / "checkpoints" / f"seed={seed}")
        return sorted(set(native) | set(self.imported_checkpoints().get(seed, {})))

    # -- imported runs (interp_ext.importing)
    @property
    def imported(self) -> bool:
        """Whether the run was made from checkpoints trained elsewhere (its real batches are unknown)."""
        return (self.path / "import.json").exists()

    def imported_checkpoints(self) -> dict[int, dict[int, dict]]:
        """seed -> step -> the referenced source of an imported checkpoint (empty for native runs)."""
        if self._imports is None:
            path = self.path / "import.json"
            raw = json.loads(path.read_text())["checkpoints"] if path.exists() else {}
            self._imports = {
                int(s): {int(t): e for t, e in steps.items()} for s, steps in raw.items()
            }
        return self._imports

    def frozen_parameters(self) -> list[str]:
        """Parameters of an imported run's model that its source did not train (frozen at zero)."""
        path = self.path / "import.json"
        return json.loads(path.read_text()).get("frozen", []) if path.exists() else []

    @property
    def steps(self) -> list[int]:
        """Checkpoint steps present for every seed."""
        per_seed = [set(self.steps_for(s)) for s in self.seeds]
        return sorted(set.intersection(*per_seed)) if per_seed else []

    def _check_step(self, seed: int, step: int | None) -> int:
        if seed not in self.seeds:
            raise RunError(
                f"seed {seed} has no checkpoints in {self.path}; available seeds: {self.seeds}"
            )
        steps = self.steps_for(seed)
        if step is None:
            return steps[-1]
        if step not in steps:
            raise RunError(
                f"no checkpoint for seed {seed} at step {step}; available steps: {steps}"
            )
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

    @property
    def bos(self) -> int:
        """The token id every sequence starts with."""
        return int(json.loads((self.path / "run_info.json").read_text())["bos"])

    def state_dict(self, seed: int, step: int | None = None) -> dict[str, torch.Tensor]:
        """The parameters of one seed at one checkpoint (TransformerLens names)."""
        return self.checkpoint(seed, step)["params"]

    def checkpoint(self, seed: int, step: int | None = None) -> dict:
        """The whole checkpoint (params, AdamW moments, step counter); an imported one converted from its source."""
        step = self._check_step(seed, step)
        path = self.checkpoint_path(seed, step)
        if not path.exists() and step in self.imported_checkpoints().get(seed, {}):
            from interp_ext.importing import load_imported

            return load_imported(self, seed, step)
        return load_checkpoint(path)

    @property
    def device(self) -> str:
        """Where measurements run: the training device when it is available here, else the CPU."""
        dev = self.config.train.device
        return (
            dev if dev == "cpu" or (dev.startswith("cuda") and torch.cuda.is_available()) else "cpu"
        )

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
        model = build_model(
            self.config.model, self.d_vocab, seed=0, device=device, tokenizer=self.tokenizer()
        )
        missing, unexpected = model.load_state_dict(state, strict=False)
        frozen = set(self.frozen_parameters())
        for name, p in model.named_parameters():
            if (
                name in frozen
            ):  # an imported run's source had no such weight: zero, and no coordinate
                p.requires_grad_(False)
                torch.nn.init.zeros_(p)
        bad = [
            k
            for k in missing
            if not k.endswith((".mask", ".IGNORE"))
            and k not in frozen
            and k in dict(model.named_parameters())
        ]
        if bad or unexpected:
            raise CheckpointError(
                f"checkpoint of seed {seed} step {step} does not match the model: missing {bad}, unexpected {unexpected}"
            )
        model.eval()
        return model

    def activations(self, seed: int, step: int) -> dict[str, torch.Tensor]:
        """Recorded hook activations at one step: hook name -> [n_seq, ...] float32."""
        path = self.activation_path(seed, step)
        if not path.exists():
            have = self._steps_in(path.parent)
            raise RunError(
                f"no activations recorded for seed {seed} at step {step}; recorded steps: {have}; record hooks with --record HOOK"
            )
        return load_safetensors(path)

    def recorded_hooks(self) -> list[str]:
        return list(self.config.record.hooks)

    def probe_set(self) -> dict[str, torch.Tensor]:
        """The fixed probe tokens: ``lm`` [B, batch, pos], ``heldout``, ``repeated`` (read once)."""
        if self._probe is None:
            self._probe = load_safetensors(self.path / "probe_set.safetensors")
        return dict(self._probe)

    def train_tokens(self) -> np.ndarray:
        """The token stream the run trained on (read once)."""
        if self._train is None:
            path = self.path / "data" / "train.npy"
            if not path.exists():
                raise RunError(
                    f"{self.path} holds no training data ({path} is missing): batches of the real steps cannot be rebuilt"
                )
            self._train = np.load(path)
        return self._train

    def heldout_tokens(self) -> np.ndarray:
        return np.load(self.path / "data" / "heldout.npy")

    def metrics(
        self,
        family: str | None = None,
        settings: str | object = "latest",
        seeds: Iterable[int] | None = None,
        families: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """The tidy metrics table: SPEC section 2 columns plus ``settings`` (and family extras).

        Args:
            family: one family (default: every family).
            settings: ``"latest"`` (default: per family, the rows of the settings it was
                measured with most recently), ``"all"`` (every settings id; the ``settings``
                column tells them apart), a settings id, or a settings object.
            seeds: keep these seeds (and the cross-seed rows, seed -1).
            families: several families at once (instead of ``family``).
        """
        root = self.metrics_dir
        names = (
            list(families)
            if families is not None
            else [family]
            if family
            else sorted(set(metrics_store.families(root)) | set(self._legacy_families()))
        )
        wanted = settings
        if hasattr(settings, "family"):
            from interp_ext.runner import settings_id

            wanted = settings_id(self, settings)
        frames = []
        for name in names:
            ids = metrics_store.settings_ids(root, name)
            if wanted == "all":
                pick = ids
            elif wanted == "latest":
                pick = [max(ids, key=self._last_used)] if ids else []
            else:
                pick = [wanted] if wanted in ids else []
            frames.append(metrics_store.read_family(root, name, pick))
            if wanted in ("all", metrics_store.LEGACY) or (wanted == "latest" and not ids):
                legacy = self._legacy()
                frames.append(legacy[legacy.family == name])
        df = metrics_store.concat(frames)
        if seeds is not None:
            df = df[df.seed.isin(list(seeds)) | (df.seed < 0)]
        return df.reset_index(drop=True)

    def measurements(self) -> pd.DataFrame:
        """Every settings object the run was measured with: ``id``, ``family``, ``settings``, ``created``, ``used``."""
        folder = self.path / "measurements"
        records = (
            [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
            if folder.is_dir()
            else []
        )
        return pd.DataFrame(records, columns=["id", "family", "settings", "created", "used"])

    def _last_used(self, settings_id: str) -> float:
        path = self.path / "measurements" / f"{settings_id}.json"
        return float(json.loads(path.read_text()).get("used", 0.0)) if path.exists() else 0.0

    def _legacy(self) -> pd.DataFrame:
        return metrics_store.read_legacy(self.path)

    def _legacy_families(self) -> list[str]:
        legacy = self._legacy()
        return sorted(legacy.family.unique()) if len(legacy) else []

    def write_rows(
        self, family: str, settings: str, unit: str, rows: pd.DataFrame | Iterable[dict]
    ) -> None:
        """Write one unit's rows as an immutable part of the metrics store (see :mod:`interp_ext.metrics_store`)."""
        frame = metrics_store.normalise(rows, self.name, family, settings)
        metrics_store.write_part(self.metrics_dir, family, settings, unit, frame)

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
