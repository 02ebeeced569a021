"""Where every file of a run directory lives: the one place that decides a path.

The tree below is the README's "run directory" section (a test keeps them equal)::

    <run>/config.json                                   resolved config, package versions, git sha
    <run>/run_info.json                                 vocabulary size, BOS token, corpus note
    <run>/import.json                                   imported runs: referenced checkpoints, hashes, frozen weights, duplicate steps
    <run>/branch.json                                   branches: parent run, seeds, step branched from, interventions
    <run>/tokenizer/                                    the run's tokenizer (local pretrained dir)
    <run>/data/{train,heldout}.npy                      token streams trained on / held out
    <run>/probe_set.safetensors                         lm [B, batch, pos], heldout, repeated ([BOS] r r)
    <run>/checkpoints/seed=<s>/step=<t>.safetensors     params, AdamW moments, step (= data position)
    <run>/activations/seed=<s>/step=<t>.safetensors     recorded hooks on the probe set
    <run>/metrics/family=<f>/settings=<id>/<unit>.parquet  one row per value, an immutable part per unit of work
    <run>/metrics/.broken/                              parts that failed verification, moved aside
    <run>/measurements/<settings>.json                  the settings each measurement was made with
    <run>/grams/<settings>/seed=<s>/step=<t>.safetensors  per-block B x B gradient Grams (geometry)
    <run>/saes/<settings>/seed=<s>/step=<t>/            sae-lens SAE (cfg.json + weights); lineage.parquet per seed
    <run>/calibration/<settings>.json                   a calibration sweep (LLC) and the settings it chose
    <run>/report/                                       report.md, *.png, *.html, plotly.min.js
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TREE = __doc__.split("::\n\n", 1)[1].strip("\n")


@dataclass(frozen=True)
class Layout:
    """Every path of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- the run's own files
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def run_info(self) -> Path:
        return self.root / "run_info.json"

    @property
    def import_index(self) -> Path:
        return self.root / "import.json"

    @property
    def branch(self) -> Path:
        return self.root / "branch.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def tokens(self, split: str) -> Path:
        """``train`` or ``heldout`` token stream."""
        return self.data / f"{split}.npy"

    @property
    def probe_set(self) -> Path:
        return self.root / "probe_set.safetensors"

    # -- per seed and step
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def seed_checkpoints(self, seed: int) -> Path:
        return self.checkpoints / f"seed={seed}"

    def checkpoint(self, seed: int, step: int) -> Path:
        return self.seed_checkpoints(seed) / f"step={step}.safetensors"

    @property
    def activations(self) -> Path:
        return self.root / "activations"

    def activation(self, seed: int, step: int) -> Path:
        return self.activations / f"seed={seed}" / f"step={step}.safetensors"

    # -- measurements
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def broken_parts(self) -> Path:
        return self.metrics / ".broken"

    @property
    def measurements(self) -> Path:
        return self.root / "measurements"

    def measurement(self, settings_id: str) -> Path:
        return self.measurements / f"{settings_id}.json"

    def artifacts(self, kind: str, settings_id: str = "") -> Path:
        """The folder of a family's own files of one kind made with ``settings_id`` (``kind``
        names it: the geometry family's ``grams``, the sae family's ``saes``, the llc family's
        ``calibration``): ``<run>/<kind>/<settings_id>``; the kind's folder for ``""``."""
        return self.root / kind / settings_id if settings_id else self.root / kind

    def artifact(
        self, kind: str, settings_id: str, seed: int, step: int | None = None, suffix: str = ""
    ) -> Path:
        """One seed's (and step's) file or folder under :meth:`artifacts`:
        ``.../seed=<s>[/step=<t><suffix>]``."""
        folder = self.artifacts(kind, settings_id) / f"seed={seed}"
        return folder if step is None else folder / f"step={step}{suffix}"

    @property
    def report(self) -> Path:
        return self.root / "report"
