"""The :class:`Run` reader: a run directory opened for reading and for appending metrics.

Paths come from :class:`~interp_ext.run.layout.Layout`; checkpoints from
:mod:`interp_ext.run.checkpoints` (native) or :mod:`interp_ext.run.sources`
(imported); metric rows from :mod:`interp_ext.run.parts`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp_ext import diskio
from interp_ext.config import RunConfig
from interp_ext.data import training_rows
from interp_ext.errors import CheckpointError, ConfigError, RunError
from interp_ext.run import parts
from interp_ext.run.checkpoints import load_checkpoint
from interp_ext.run.layout import Layout

_STEP_RE = re.compile(r"^step=(\d+)\.safetensors$")
_SEED_RE = re.compile(r"^seed=(-?\d+)$")


def not_a_run(path: Path) -> str:
    """Why ``path`` is not a run directory, and what it looks like instead."""
    if not path.exists():
        return f"{path} does not exist, so it is not a run directory; give one made by `interp-ext train --out {path}`"
    if not path.is_dir():
        return (
            f"{path} is a file, not a run directory; give the folder `interp-ext train --out` made"
        )
    hf = Layout(path).config
    if any(path.glob(f"checkpoint-*/{hf.name}")) or (
        hf.exists() and "architectures" in hf.read_text(errors="replace")
    ):
        return (
            f"{path} is a Hugging Face checkpoint folder, not a run: "
            f"make a run from it with `interp-ext import {path} --out RUN --probe-text FILE`"
        )
    if Layout(path).config.exists():
        return (
            f"{path} has config.json but no {Layout(path).run_info.name}: the run was cut short "
            f"while it was prepared; remove the folder and train it again with `interp-ext train --out {path}`"
        )
    if Layout(path).checkpoints.is_dir() or Layout(path).metrics.is_dir():
        return f"{path} has no config.json: the run is incomplete; train it again with `interp-ext train --out {path}`"
    return f"{path} is not a run directory (no config.json); create one with `interp-ext train --out {path}`"


class Run:
    """A run directory opened for reading (and appending metrics).

    Attributes:
        path: the run directory.
        config: the resolved :class:`RunConfig` the run was made with.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.layout = Layout(self.path)
        if not self.layout.config.exists() or not self.layout.run_info.exists():
            raise RunError(not_a_run(self.path))
        try:
            self.config = RunConfig.load(self.layout.config)
        except ConfigError as err:
            raise RunError(f"{self.path} is not a readable run: {err}") from err
        self._info = diskio.read_json(self.layout.run_info, "the run's vocabulary and corpus")
        self.name = self.path.name
        self._tokenizer = None
        self._probe: dict[str, torch.Tensor] | None = None
        self._train: np.ndarray | None = None
        self._imports: dict | None = None

    def __repr__(self) -> str:
        # relative to the working folder when beneath it: a notebook's output names no machine path
        try:
            shown = str(self.path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            shown = str(self.path)
        return f"Run({shown!r}, seeds={self.seeds}, steps={self.steps[:3]}...{self.steps[-1:] if self.steps else []})"

    # -- layout
    def checkpoint_path(self, seed: int, step: int) -> Path:
        return self.layout.checkpoint(seed, step)

    def activation_path(self, seed: int, step: int) -> Path:
        return self.layout.activation(seed, step)

    @property
    def metrics_dir(self) -> Path:
        """The append-only metrics store (one parquet part per unit of work)."""
        return self.layout.metrics

    def _steps_in(self, folder: Path) -> list[int]:
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in folder.iterdir() if (m := _STEP_RE.match(f.name)))

    @property
    def seeds(self) -> list[int]:
        """Seeds with at least one checkpoint."""
        root = self.layout.checkpoints
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
        native = self._steps_in(self.layout.seed_checkpoints(seed))
        return sorted(set(native) | set(self.imported_checkpoints().get(seed, {})))

    # -- imported runs (interp_ext.importing)
    @property
    def imported(self) -> bool:
        """Whether the run was made from checkpoints trained elsewhere (its real batches are unknown)."""
        return self.layout.import_index.exists()

    def imported_checkpoints(self) -> dict[int, dict[int, dict]]:
        """seed -> step -> the referenced source of an imported checkpoint (empty for native runs)."""
        if self._imports is None:
            raw = self._import_index().get("checkpoints", {})
            self._imports = {
                int(s): {int(t): e for t, e in steps.items()} for s, steps in raw.items()
            }
        return self._imports

    def frozen_parameters(self) -> list[str]:
        """Parameters of an imported run's model that its source did not train (frozen at zero)."""
        return self._import_index().get("frozen", [])

    def duplicate_steps(self, seed: int) -> list[int]:
        """Steps of an imported seed whose weights equal the previous checkpoint's (the same weight
        file hash, found at import); the step-to-step measurements leave them out: the geometry
        family's comparisons with the previous checkpoint, Stream 1's drift, the SAE lineage (the
        next checkpoint is matched against the last distinct one) and the imported real update."""
        return [int(t) for t in self._import_index().get("duplicates", {}).get(str(seed), [])]

    def _import_index(self) -> dict:
        path = self.layout.import_index
        return diskio.read_json(path, "the imported checkpoints' index") if path.exists() else {}

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

            self._tokenizer = load_tokenizer(self.layout.tokenizer)
        return self._tokenizer

    @property
    def d_vocab(self) -> int:
        return int(self._info["d_vocab"])

    @property
    def bos(self) -> int:
        """The token id every sequence starts with."""
        return int(self._info["bos"])

    def state_dict(self, seed: int, step: int | None = None) -> dict[str, torch.Tensor]:
        """The parameters of one seed at one checkpoint (TransformerLens names)."""
        return self.checkpoint(seed, step)["params"]

    def checkpoint(self, seed: int, step: int | None = None) -> dict:
        """The whole checkpoint (params, AdamW moments, step counter); an imported one converted from its source."""
        step = self._check_step(seed, step)
        path = self.checkpoint_path(seed, step)
        if not path.exists() and step in self.imported_checkpoints().get(seed, {}):
            from interp_ext.run.sources import load_imported

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
        return diskio.load_safetensors(path)

    def recorded_hooks(self) -> list[str]:
        return list(self.config.record.hooks)

    def probe_set(self) -> dict[str, torch.Tensor]:
        """The fixed probe tokens: ``lm`` [B, batch, pos], ``heldout``, ``repeated`` (read once)."""
        if self._probe is None:
            self._probe = diskio.load_safetensors(self.layout.probe_set)
        return dict(self._probe)

    def train_tokens(self) -> np.ndarray:
        """The token stream the run trained on (read once)."""
        if self._train is None:
            path = self.layout.tokens("train")
            if not path.exists():
                raise RunError(
                    f"{self.path} holds no training data ({path} is missing): batches of the real steps cannot be rebuilt"
                )
            self._train = np.load(path)
        return self._train

    def batch(self, seed: int, step: int, draw: int | None = None) -> torch.Tensor:
        """The training batch [batch, pos] seed ``seed`` saw at ``step``; ``draw`` gives an
        independent batch from the same distribution (how draws are numbered:
        :mod:`interp_ext.data`, ``*_DRAWS``)."""
        return self.batch_rows(seed, step, draw)[0]

    def batch_rows(
        self, seed: int, step: int, draw: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`batch` and a bool per row: True where the row is uniform random tokens, False
        where it is corpus text (both carry the copied span)."""
        cfg = self.config
        seqs, random_rows = training_rows(
            self.train_tokens(),
            seed,
            step,
            cfg.train.batch_size,
            cfg.model.n_ctx,
            self.bos,
            cfg.data,
            self.d_vocab,
            draw,
        )
        return torch.from_numpy(seqs), torch.from_numpy(random_rows)

    def heldout_tokens(self) -> np.ndarray:
        return np.load(self.layout.tokens("heldout"))

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
            list(families) if families is not None else [family] if family else parts.families(root)
        )
        wanted = settings
        if hasattr(settings, "resolved_id"):  # a settings object: the id its rows carry here
            wanted = settings.resolved_id(self)
        frames = []
        for name in names:
            ids = parts.settings_ids(root, name)
            if wanted == "all":
                pick = ids
            elif wanted == "latest":
                pick = [max(ids, key=self._last_used)] if ids else []
            else:
                pick = [wanted] if wanted in ids else []
            frames.append(parts.read_family(root, name, pick))
        df = parts.concat(frames)
        if seeds is not None:
            df = df[df.seed.isin(list(seeds)) | (df.seed < 0)]
        return df.reset_index(drop=True)

    def measurements(self) -> pd.DataFrame:
        """Every settings object the run was measured with: ``id``, ``family``, ``settings``, ``created``, ``used``."""
        folder = self.layout.measurements
        records = (
            [diskio.read_json(p, "a measurement's settings") for p in sorted(folder.glob("*.json"))]
            if folder.is_dir()
            else []
        )
        return pd.DataFrame(records, columns=["id", "family", "settings", "created", "used"])

    def _last_used(self, settings_id: str) -> float:
        path = self.layout.measurement(settings_id)
        return float(diskio.read_json(path).get("used", 0.0)) if path.exists() else 0.0

    def write_rows(
        self, family: str, settings: str, unit: str, rows: pd.DataFrame | Iterable[dict]
    ) -> None:
        """Write one unit's rows as an immutable part of the metrics store (see :mod:`interp_ext.run.parts`)."""
        frame = parts.normalise(rows, self.name, family, settings)
        parts.write_part(self.metrics_dir, family, settings, unit, frame)

    def broken_parts(self) -> list[Path]:
        """Metrics parts that failed verification and were set aside (their units measure again)."""
        folder = self.layout.broken_parts
        return sorted(folder.rglob("*.parquet")) if folder.is_dir() else []

    def info(self) -> dict:
        df = self.metrics()
        return {
            "path": str(self.path),
            "preset": self.config.preset,
            "seeds": self.seeds,
            "steps": self.steps,
            "corpus": self._info.get("corpus_note", ""),
            "d_vocab": self.d_vocab,
            "model": self.config.model.__dict__,
            "recorded_hooks": self.recorded_hooks(),
            "metric_families": sorted(df["family"].unique().tolist()) if len(df) else [],
            "broken_parts": [str(p.relative_to(self.path)) for p in self.broken_parts()],
        }


def open_run(path: str | Path) -> Run:
    """Open a run directory written by ``interp-ext train`` (or ``interp-ext import``)."""
    return Run(path)
