"""The run's metrics table as an append-only folder of immutable parquet parts (SPEC section 2).

::

    <run>/metrics/<family>/<settings id>/<unit>.parquet

One part holds the rows one unit of work produced: ``seed3-step250`` (one seed at
one checkpoint), ``seed3-final`` (a seed's summary over its checkpoints),
``all-step250`` (across seeds at one checkpoint) or ``all-final`` (across seeds
over the run). A part is written once, atomically (temporary file + rename), and
never rewritten except by the same unit with the same settings (a re-run after a
crash); nothing reads and rewrites the whole table, and ranks under ``torchrun``
write different files, so no lock is needed. The folder reads as one dataset
with ``pyarrow.dataset`` (DuckDB's ``read_parquet('<run>/metrics/**/*.parquet',
union_by_name=true)`` and polars read it too).

Every row carries the SPEC columns ``run, seed, step, family, metric, component,
value`` plus ``settings``, the id of the settings that made it
(``<run>/measurements/<id>.json``). Family-specific columns (``direction``,
``circuit``, ...) are strings. A run written before this layout kept one
``metrics.parquet`` (and ``metrics.rank<r>.parquet`` parts under torchrun); those
rows still read, with ``settings="legacy"``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

METRIC_COLUMNS = ["run", "seed", "step", "family", "metric", "component", "value"]
COLUMNS = METRIC_COLUMNS + ["settings"]
LEGACY = "legacy"
_INT = ("seed", "step")


def unit_name(seed: int | None, step: int | None) -> str:
    """Part name of a unit of work: ``seed3-step250``, ``seed3-final``, ``all-step250``, ``all-final``."""
    who = "all" if seed is None or seed < 0 else f"seed{seed}"
    when = "final" if step is None or step < 0 else f"step{step}"
    return f"{who}-{when}"


def empty_frame(extra: Iterable[str] = ()) -> pd.DataFrame:
    cols = COLUMNS + [c for c in extra if c not in COLUMNS]
    return pd.DataFrame(
        {
            c: pd.Series(dtype="float64" if c == "value" else ("int64" if c in _INT else "object"))
            for c in cols
        }
    )


def normalise(
    rows: pd.DataFrame | Iterable[dict],
    run_name: str,
    family: str | None = None,
    settings: str | None = None,
    extra_columns: Iterable[str] = (),
) -> pd.DataFrame:
    """Tidy rows: SPEC columns first, ``seed``/``step`` int64 (-1 = across seeds / over steps),
    ``value`` float64, every other column a string ("" where absent).

    ``extra_columns`` are added (empty) when missing, so every part a family writes has
    the same columns.
    """
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty:
        return empty_frame(list(frame.columns) + list(extra_columns))
    for col in extra_columns:
        if col not in frame:
            frame[col] = ""
    if "metric" not in frame:
        raise ValueError(f"metric rows need a 'metric' column; got columns {list(frame.columns)}")
    defaults = {
        "run": run_name,
        "family": family,
        "settings": settings,
        "component": "",
        "seed": -1,
        "step": -1,
    }
    for col, default in defaults.items():
        if col not in frame:
            if default is None:
                raise ValueError(
                    f"metric rows need a {col!r} column; got columns {list(frame.columns)}"
                )
            frame[col] = default
    frame = frame.astype({"seed": "int64", "step": "int64", "value": "float64"})
    extra = [c for c in frame.columns if c not in COLUMNS]
    for col in ["run", "family", "metric", "component", "settings"] + extra:
        frame[col] = frame[col].fillna("").astype(str)
    return frame[COLUMNS + extra].reset_index(drop=True)


def write_part(
    root: Path,
    family: str,
    settings: str,
    unit: str,
    rows: pd.DataFrame,
    seeds: list[int] | None = None,
) -> Path:
    """Write one part atomically (a temporary file in the same folder, then a rename); returns its path.

    ``seeds``: the seeds a cross-seed part was formed over, kept in the file's metadata.
    """
    folder = root / family / settings
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{unit}.parquet"
    tmp = folder / f".{unit}.{uuid.uuid4().hex}.tmp"
    schema = pa.schema(
        [
            (c, pa.int64() if c in _INT else pa.float64() if c == "value" else pa.string())
            for c in rows.columns
        ]
    )
    table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
    if seeds is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"interp_ext.seeds": json.dumps(list(seeds)).encode()}
        )
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def part_seeds(path: Path) -> list[int] | None:
    """The seeds a cross-seed part was formed over (None if it does not say)."""
    if not path.exists():
        return None
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"interp_ext.seeds")
    return json.loads(raw) if raw else None


def has_part(root: Path, family: str, settings: str, unit: str) -> bool:
    return (root / family / settings / f"{unit}.parquet").exists()


def families(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def settings_ids(root: Path, family: str) -> list[str]:
    folder = root / family
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def read_family(root: Path, family: str, settings: Iterable[str]) -> pd.DataFrame:
    """Rows of one family for the given settings ids, read as one ``pyarrow.dataset``."""
    files = [str(f) for s in settings for f in sorted((root / family / s).glob("*.parquet"))]
    if not files:
        return empty_frame()
    schemas = [pq.read_schema(f) for f in _schema_sample(files)]
    schema = (
        pa.unify_schemas(schemas, promote_options="permissive") if len(schemas) > 1 else schemas[0]
    )
    table = pads.dataset(files, format="parquet", schema=schema).to_table()
    frame = table.to_pandas()
    return _fill_strings(frame)


def _schema_sample(files: list[str]) -> list[str]:
    """Files whose schemas are unified: one per settings folder (a folder's parts share one layout)."""
    first: dict[str, str] = {}
    for f in files:
        first.setdefault(str(Path(f).parent), f)
    return list(first.values())


def _fill_strings(frame: pd.DataFrame) -> pd.DataFrame:
    for col in frame.columns:
        if col not in ("seed", "step", "value"):
            frame[col] = frame[col].fillna("").astype(str)
    return frame


def read_legacy(run_path: Path) -> pd.DataFrame:
    """Rows of a run written with the single-table layout (``metrics.parquet`` and rank parts)."""
    parts = [run_path / "metrics.parquet"] + sorted(run_path.glob("metrics.rank*.parquet"))
    frames = [pd.read_parquet(p) for p in parts if p.exists()]
    if not frames:
        return empty_frame()
    frame = pd.concat(frames, ignore_index=True)
    frame["settings"] = LEGACY
    key = [c for c in frame.columns if c != "value"]
    frame[key] = frame[key].fillna("")
    return frame.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate row sets with different extra columns (absent ones become "")."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame()
    out = pd.concat(frames, ignore_index=True)
    extra = [c for c in out.columns if c not in COLUMNS]
    out[extra] = out[extra].fillna("")
    return out[COLUMNS + extra]


def save_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
