"""The metrics store's folders: Hive-style for new settings, the layout of runs written before
still read (and written to, per settings), and the README's DuckDB query over a run's parts."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from interp_ext import measure
from interp_ext.families import InductionSettings
from interp_ext.run import parts

README = Path(__file__).resolve().parents[2] / "README.md"


def frame(family: str, settings: str, step: int) -> pd.DataFrame:
    rows = pd.DataFrame({"metric": ["a", "b"], "value": [1.0, 2.0], "seed": 0, "step": step})
    return parts.normalise(rows, "r", family, settings)


def test_new_settings_are_hive_folders_and_old_layouts_are_still_read(tmp_path):
    root = tmp_path / "metrics"
    new = parts.write_part(
        root, "geometry", "geometry-new", "seed0-step2", frame("geometry", "geometry-new", 2)
    )
    assert new == root / "family=geometry" / "settings=geometry-new" / "seed0-step2.parquet"
    # a run written before: <family>/<settings>/, for a family the new layout also has and one it has not
    for family, settings in (("geometry", "geometry-old"), ("induction", "induction-old")):
        (root / family / settings).mkdir(parents=True)
        got = parts.write_part(root, family, settings, "seed0-step2", frame(family, settings, 2))
        assert got == root / family / settings / "seed0-step2.parquet"  # the settings' own folder
    assert parts.families(root) == ["geometry", "induction"]
    assert parts.settings_ids(root, "geometry") == ["geometry-new", "geometry-old"]
    assert parts.has_part(root, "geometry", "geometry-old", "seed0-step2")
    assert not parts.has_part(root, "geometry", "geometry-old", "seed0-step4")
    later = parts.write_part(
        root, "geometry", "geometry-old", "seed0-step4", frame("geometry", "geometry-old", 4)
    )
    assert later.parent == root / "geometry" / "geometry-old"  # never split over two folders
    assert not (root / "family=geometry" / "settings=geometry-old").exists()
    rows = parts.read_family(root, "geometry", ["geometry-new", "geometry-old"])
    assert sorted(map(tuple, rows[["settings", "step"]].drop_duplicates().values)) == [
        ("geometry-new", 2),
        ("geometry-old", 2),
        ("geometry-old", 4),
    ]
    assert len(rows) == 6


def test_the_readmes_duckdb_query_reads_a_runs_parts(micro_run, tmp_path):
    import duckdb

    measure(micro_run, InductionSettings(), progress=False)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "import duckdb" in b)
    snippet = snippet.replace("runs/tiny", str(micro_run.path))
    namespace: dict = {}
    exec(
        compile("result = " + snippet.split("\n", 2)[2], str(README), "exec"),
        {"duckdb": duckdb},
        namespace,
    )
    got = namespace["result"]
    want = micro_run.metrics("induction")
    want = want[want.metric == "best_induction_score"].sort_values(["seed", "step"])
    assert len(got) == len(want) > 0
    assert got.value.tolist() == want.value.tolist()
    assert got.step.tolist() == want.step.tolist()
