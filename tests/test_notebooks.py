"""The tutorial notebooks: each runs top to bottom in fast mode in an empty folder (nbclient), opens
with what it shows, ends with what to try next, and uses only the public API."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import nbformat
import pytest

DEMOS = Path(__file__).resolve().parent.parent / "demos"
NOTEBOOKS = sorted(DEMOS.glob("[0-9][0-9]_*.ipynb"))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-v1"


def test_the_eight_tutorials_are_there_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    assert not list(DEMOS.glob("[0-9][0-9]_*.py")), "the notebooks are the one source"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_tutorial_says_what_it_shows_and_what_to_try_next(path):
    nb = nbformat.read(path, as_version=4)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and "What this shows" in first.source
    assert last.cell_type == "markdown" and "What to try next" in last.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all("interp_ext._" not in c.source and "from tests" not in c.source for c in code)
    assert any("plt.show()" in c.source for c in code), f"{path.name} draws no figure"
    text = nbformat.writes(nb)
    assert not re.search(r"(/tmp/|/home/|/root/|/work/|site-packages)", text), (
        f"{path.name} names a machine path"
    )
    images = [
        o.data["image/png"]
        for c in code
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert all(len(base64.b64decode(png)) <= 200_000 for png in images)
    assert not any(o.output_type == "error" for c in code for o in c.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_tutorial_is_saved_with_its_outputs(path):
    """Readable without running: every code cell executed in order, at least one figure inline."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert all(isinstance(n, int) for n in counts), f"{path.name} has unexecuted cells"
    assert counts == sorted(counts), f"{path.name} was not run top to bottom"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", [])), (
        f"{path.name} is saved without a figure"
    )


# the public API the README promises the tutorials keep to
PUBLIC = ("interp_ext", "interp_ext.api", "interp_ext.families")


def interp_ext_imports(source: str) -> set[str]:
    """The interp_ext modules a cell's code imports (``import``, ``from ... import``, a module
    imported by name from the package) or reaches through an attribute (``interp_ext.x.y``)."""
    import ast

    import interp_ext

    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    code = "\n".join(lines)
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "interp_ext":
                found |= {
                    f"interp_ext.{a.name}" for a in node.names if a.name not in interp_ext.__all__
                }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    for chain in re.findall(r"\binterp_ext\.\w+", code):
        found.add("interp_ext" if chain.split(".")[1] in interp_ext.__all__ else chain)
    return {m for m in found if m.split(".")[0] == "interp_ext"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_tutorial_imports_only_the_public_api_the_readme_names(path):
    nb = nbformat.read(path, as_version=4)
    used = set().union(*(interp_ext_imports(c.source) for c in nb.cells if c.cell_type == "code"))
    assert used and used <= set(PUBLIC), f"{path.name} reaches {sorted(used - set(PUBLIC))}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert 'find_spec("interp_ext")' in first.source and "pip" in first.source, (
        f"{path.name}: the first code cell installs the package when it is missing"
    )


def test_the_readme_names_the_public_api_the_tutorials_keep_to():
    readme = (DEMOS.parent / "README.md").read_text()
    section = readme.split("## Tutorials", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{m}`" in section for m in PUBLIC)
    assert "interp_ext.api.__all__" in section


def test_the_import_walk_sees_a_private_module():
    assert interp_ext_imports("from interp_ext.data import encode_text") == {"interp_ext.data"}
    assert interp_ext_imports("from interp_ext.families.work import W") == {
        "interp_ext.families.work",
        "interp_ext.families",
    }
    assert interp_ext_imports("import interp_ext\nx = interp_ext.geometry.curvature.top") == {
        "interp_ext",
        "interp_ext.geometry",
    }
    assert interp_ext_imports("from interp_ext import data, measure") == {
        "interp_ext",
        "interp_ext.data",
    }
    assert interp_ext_imports("%pip install x\nfrom interp_ext import api") == {
        "interp_ext",
        "interp_ext.api",
    }
    assert interp_ext_imports("interp_ext.measure(run, s)") == {"interp_ext"}


def test_a_saved_progress_bar_is_its_last_frame_once():
    """The saved outputs keep each bar's last frame where the bar first appeared, nested bars'
    cursor escapes dropped; and no saved tutorial holds an escape or a repeated bar."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("execute", DEMOS / "execute.py")
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    nested = (
        "work:   0%|  | 0/17 [00:00<?, ?it/s]\n"
        "work seed 0:   0%|  | 0/1000 [00:00<?, ?it/s]\x1b[A\n"
        "work seed 0: 100%|##| 1000/1000 [06:04<00:00]\x1b[A\n"
        "work: 100%|##| 17/17 [06:04<00:00]  \n"
    )
    assert execute.final_frames(nested) == (
        "work: 100%|##| 17/17 [06:04<00:00]  \nwork seed 0: 100%|##| 1000/1000 [06:04<00:00]\n"
    )
    assert execute.final_frames("train:  10%|#| 1/10\rtrain: 100%|#| 10/10\nloss 3\n") == (
        "train: 100%|#| 10/10\nloss 3\n"
    )
    # two bars of one name, one after the other: both kept
    twice = "train: 100%|#| 10/10\ntrain:  50%|#| 5/10\ntrain: 100%|#| 10/10\n"
    assert execute.final_frames(twice) == "train: 100%|#| 10/10\ntrain: 100%|#| 10/10\n"
    done_twice = (
        "train:  10%|#| 1/10\rtrain: 100%|#| 10/10\ntrain:  90%|#| 9/10\rtrain: 100%|#| 10/10\n"
    )
    assert execute.final_frames(done_twice) == "train: 100%|#| 10/10\ntrain: 100%|#| 10/10\n"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream":
                    assert "\x1b[" not in o.text, path.name
                    assert o.text == execute.final_frames(o.text), path.name


def test_the_tutorials_fit_in_five_megabytes():
    assert sum(p.stat().st_size for p in NOTEBOOKS) <= 5_000_000


@pytest.fixture(scope="module")
def fast_env(tmp_path_factory):
    """Fast mode, one run shared by the notebooks, made by the first in an empty folder."""
    folder = tmp_path_factory.mktemp("tutorials")
    old = dict(os.environ)
    os.environ.update(
        INTERP_EXT_FAST="1",
        INTERP_EXT_RUN=str(folder / "runs" / "tutorial"),
        INTERP_EXT_IMPORT_DIR=str(folder / "runs" / "imported"),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    if DATA.is_dir():
        os.environ["INTERP_EXT_DATA_DIR"] = str(DATA)
    yield folder
    os.environ.clear()
    os.environ.update(old)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_tutorial_runs_top_to_bottom(path, fast_env):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(fast_env)}}
    ).execute()
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
