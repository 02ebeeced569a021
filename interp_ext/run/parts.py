"""The run's metrics table as an append-only folder of immutable parquet parts (SPEC section 2).

::

    <run>/metrics/family=<family>/settings=<settings id>/<unit>.parquet

One part holds the rows one unit of work produced: ``seed3-step250`` (one seed at
one checkpoint), ``seed3-final`` (a seed's summary over its checkpoints),
``all-step250`` (across seeds at one checkpoint) or ``all-final`` (across seeds
over the run). A part is written once, atomically (temporary file + rename), and
never rewritten except by the same unit with the same settings (a re-run after a
crash); nothing reads and rewrites the whole table, and ranks under ``torchrun``
write different files, so no lock is needed. The folder reads as one dataset
with ``pyarrow.dataset``. The folder names are Hive-style ``key=value``, so DuckDB, polars and
pyarrow prune by folder (DuckDB: ``read_parquet('<run>/metrics/family=*/settings=*/*.parquet',
hive_partitioning=true, union_by_name=true)`` reads a ``WHERE family = 'geometry'`` from that
folder alone). Runs written before keep their ``<family>/<settings id>/`` folders: every
function here reads both, and a settings' later parts go where its first ones are, so one
settings never has parts in two places.

Every row carries the SPEC columns ``run, seed, step, family, metric, component,
value`` plus ``settings``, the id of the settings that made it
(``<run>/measurements/<id>.json``). Family-specific columns (``direction``,
``circuit``, ...) are strings.

A part counts as written only when it verifies: its footer reads and holds the
row count written into its metadata. A part that does not (a copy cut short, a
disk that filled) is moved aside to ``<run>/metrics/.broken/`` with a warning
naming it, so the runner measures its unit again and readers never see it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

log = logging.getLogger("interp_ext")

METRIC_COLUMNS = ["run", "seed", "step", "family", "metric", "component", "value"]
COLUMNS = METRIC_COLUMNS + ["settings"]
BROKEN = ".broken"
_ROWS = b"interp_ext.rows"
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
    path = part_path(root, family, settings, unit)  # a settings' parts stay in one folder
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{unit}.{uuid.uuid4().hex}.tmp"
    schema = pa.schema(
        [
            (c, pa.int64() if c in _INT else pa.float64() if c == "value" else pa.string())
            for c in rows.columns
        ]
    )
    table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
    meta = {**(table.schema.metadata or {}), _ROWS: str(table.num_rows).encode()}
    if seeds is not None:
        meta[b"interp_ext.seeds"] = json.dumps(list(seeds)).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, path)
    return path


def part_problem(path: Path) -> str | None:
    """Why a part is not a complete part of the store (None when it verifies)."""
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as err:
        return f"unreadable ({str(err).splitlines()[0]})"
    stored = (meta.metadata or {}).get(_ROWS)
    if stored is not None and int(stored) != meta.num_rows:
        return f"holds {meta.num_rows} rows of the {int(stored)} written"
    return None


def set_aside(path: Path, problem: str) -> Path:
    """Move a broken part to ``<metrics>/.broken/`` (never counted as measured); returns where."""
    root = path.parents[2]
    target = root / BROKEN / path.parent.parent.name / path.parent.name / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    log.warning(
        "metrics part %s is broken (%s): moved to %s; its unit is measured again on the next run of the measurement",
        path,
        problem,
        target,
    )
    return target


def verified(path: Path) -> bool:
    """Whether the part exists and verifies; a broken one is set aside."""
    if not path.exists():
        return False
    problem = part_problem(path)
    if problem is None:
        return True
    set_aside(path, problem)
    return False


def part_seeds(path: Path) -> list[int] | None:
    """The seeds a cross-seed part was formed over (None if it does not say)."""
    if not path.exists():
        return None
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"interp_ext.seeds")
    return json.loads(raw) if raw else None


def settings_folder(root: Path, family: str, settings: str) -> Path:
    """Where the parts of a new settings go: ``family=<family>/settings=<id>``."""
    return root / f"family={family}" / f"settings={settings}"


def settings_folders(root: Path, family: str, settings: str) -> list[Path]:
    """The existing folder of a settings' parts: the Hive-style one, or the ``<family>/<id>``
    folder of a run written before (empty when nothing is measured)."""
    both = (settings_folder(root, family, settings), root / family / settings)
    return [f for f in both if f.is_dir()][:1]


def part_files(root: Path, family: str, settings: str) -> list[Path]:
    """A settings' parts, by unit name."""
    return sorted(p for f in settings_folders(root, family, settings) for p in f.glob("*.parquet"))


def part_path(root: Path, family: str, settings: str, unit: str) -> Path:
    folder = (
        settings_folders(root, family, settings) or [settings_folder(root, family, settings)]
    )[0]
    return folder / f"{unit}.parquet"


def has_part(root: Path, family: str, settings: str, unit: str) -> bool:
    """Whether the unit is measured: its part exists and verifies (a broken one is set aside)."""
    return verified(part_path(root, family, settings, unit))


def families(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    names = {p.name.removeprefix("family=") for p in root.iterdir() if p.is_dir()}
    return sorted(names - {BROKEN})


def settings_ids(root: Path, family: str) -> list[str]:
    ids = set()
    for folder in (root / f"family={family}", root / family):
        if folder.is_dir():
            ids |= {p.name.removeprefix("settings=") for p in folder.iterdir() if p.is_dir()}
    return sorted(ids)


def read_family(root: Path, family: str, settings: Iterable[str]) -> pd.DataFrame:
    """Rows of one family for the given settings ids, read as one ``pyarrow.dataset``."""
    files = [str(f) for s in settings for f in part_files(root, family, s)]
    try:
        return _read(files)
    except (OSError, pa.ArrowException):  # a broken part: set it aside, read the rest
        return _read([f for f in files if verified(Path(f))])


def _read(files: list[str]) -> pd.DataFrame:
    if not files:
        return empty_frame()
    schemas = [pq.read_schema(f) for f in _schema_sample(files)]
    schema = (
        pa.unify_schemas(schemas, promote_options="permissive") if len(schemas) > 1 else schemas[0]
    )
    table = pads.dataset(files, format="parquet", schema=schema).to_table()
    return _fill_strings(table.to_pandas())


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


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate row sets with different extra columns (absent ones become "")."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame()
    out = pd.concat(frames, ignore_index=True)
    extra = [c for c in out.columns if c not in COLUMNS]
    out[extra] = out[extra].fillna("")
    return out[COLUMNS + extra]
