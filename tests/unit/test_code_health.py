"""Code health: functions stay short enough to read, or say why not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 60
REASON = "Long because"


def long_functions() -> list[str]:
    out = []
    for package in ("interp_ext", "circuits"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    body = path.read_text().splitlines()[node.lineno - 1 : node.end_lineno]
                    given = REASON in (ast.get_docstring(node) or "") or any(
                        line.strip().startswith(f"# {REASON}") for line in body
                    )
                    if length > LIMIT and not given:
                        out.append(
                            f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
                        )
    return out


def test_no_function_over_the_limit_without_a_reason():
    assert long_functions() == [], (
        f"functions over {LIMIT} lines need a line starting '{REASON}' (docstring or comment)"
    )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in ("interp_ext", "circuits")
        for p in (ROOT / package).rglob("*.py")
    }


def import_edges() -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """module -> {(imported module, names taken from it)}, every import statement counted (those
    inside functions too): ``from pkg import sub`` is an import of ``pkg.sub`` when it is a module,
    and importing anything inside a package from outside it imports the package's ``__init__``."""
    files = source_files()
    edges: dict[str, set] = {m: set() for m in files}
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[mod] |= {(a.name, ()) for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module:
                # a folder without __init__.py (a namespace package) is no module of its own
                subs = {a.name for a in node.names if f"{node.module}.{a.name}" in files}
                edges[mod] |= {(f"{node.module}.{s}", ()) for s in subs}
                names = tuple(a.name for a in node.names if a.name not in subs)
                if names and node.module in files:
                    edges[mod].add((node.module, names))
        own = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for target, _ in list(edges[mod]):
            parts = target.split(".")
            for i in range(1, len(parts)):
                package = ".".join(parts[:i])
                inside = own == package or own.startswith(package + ".")
                if package in files and package != target and not inside:
                    edges[mod].add((package, ()))
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_two_modules_import_each_other():
    graph = {m: {t for t, _ in e if t != m} for m, e in import_edges().items()}
    assert cycles(graph) == []


def test_importing_inside_a_package_counts_its_init():
    edges = {t for t, _ in import_edges()["interp_ext.training"]}
    assert {"interp_ext.run.checkpoints", "interp_ext.run"} <= edges


def floors() -> list[tuple[str, list[str]]]:
    """(floor, module prefixes), lowest first, from the table in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- floors:", 1)[1].split("\n\n", 1)[0]
    out = []
    for line in table.splitlines()[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out.append((cells[0], re.findall(r"`([\w.]+)`", cells[1])))
    return out


def floor_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    best = None
    for i, (_, prefixes) in enumerate(table):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_every_import_goes_down_the_floors_of_the_architecture_page():
    """No module imports one on a floor above its own (docs/architecture.md), whether at the top
    of the file or inside a function; every module has a floor."""
    table = floors()
    assert [name for name, _ in table] == [
        "circuits",
        "base",
        "math",
        "run",
        "training",
        "drawing",
        "runner",
        "families",
        "app",
    ]
    names = [name for name, _ in table]
    bad = []
    for mod, edges in import_edges().items():
        own = floor_of(mod, table)
        if own is None:
            bad.append(f"{mod} has no floor")
            continue
        for target, _ in edges:
            up = floor_of(target, table)
            if up is not None and up > own:
                bad.append(f"{mod} ({names[own]}) imports {target} ({names[up]})")
    assert bad == []


def test_the_floor_check_finds_an_import_upwards():
    table = [("math", ["m"]), ("run", ["r"])]
    assert (
        floor_of("m.x", table) == 0 and floor_of("r", table) == 1 and floor_of("q", table) is None
    )


def test_adamw_is_written_in_one_module():
    """The update expression (bias corrections, eps, a moment's step) and the optimizer's
    construction and numerics (AdamW, autocast, deterministic algorithms) appear in
    interp_ext.adamw alone; everything else calls it."""
    pattern = re.compile(
        r"1\.?0? - (b1|b2|beta1|beta2|cur_b1|cur_b2|betas\[[01]\])\s*\*\*"
        r"|1e-8|\(1 - (b1|b2|beta1|beta2|cur_b1|cur_b2)\) \*"
    )
    built = re.compile(
        r"optim\.AdamW\(|(torch|amp)\.autocast\(|from torch(\.amp)? import .*autocast"
        r"|use_deterministic_algorithms\("
    )
    bad = []
    for mod, path in source_files().items():
        if mod == "interp_ext.adamw":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code) or (built.search(code) and "``" not in code):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert bad == []


def test_no_family_builds_or_walks_a_trajectory_itself():
    """A family measures at the steps the runner's replay_window hands it: it builds no
    trajectory (Replay, ArmReplay, ArmState, Lockstep, build), walks none and takes no step."""
    builders = {"Replay", "ArmReplay", "ArmState", "Lockstep", "build", "walk"}
    bad = []
    for path in sorted((ROOT / "interp_ext" / "families").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = (
                    f.id
                    if isinstance(f, ast.Name)
                    else f.attr
                    if isinstance(f, ast.Attribute)
                    else ""
                )
                if name in builders or name == "take":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}")
    assert bad == []


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def family_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["interp_ext", "families"] and len(parts) > 2 else None


def test_families_take_nothing_but_settings_classes_from_each_other():
    """A family may import another family's Settings class (to key the rows it reads), and
    nothing else from it; the run package and the report know no family."""
    bad = []
    for mod, edges in import_edges().items():
        own = family_of(mod)
        for target, names in edges:
            other = family_of(target)
            if own and other and other != own:
                if not names or not all(n.endswith("Settings") for n in names):
                    bad.append(f"{mod} imports {names or 'the module'} from {target}")
            if (
                mod.startswith(("interp_ext.run", "interp_ext.report"))
                or mod == "interp_ext.measurement.runner"
            ) and other:
                bad.append(f"{mod} imports family module {target}")
    assert bad == []


def test_the_readme_shows_the_run_layout_the_code_has():
    from interp_ext.run.layout import TREE

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The run directory\n\n```\n", 1)[1].split("```", 1)[0]
    assert section.strip("\n") == TREE


def test_every_path_of_a_run_comes_from_the_layout():
    """Outside the run package no code joins a run's own file or folder names to a path."""
    names = ("config.json", "run_info.json", "import.json", "probe_set.safetensors")
    folders = ('"checkpoints"', '"activations"', '"metrics"', '"measurements"', '"grams"', '"saes"')
    bad = []
    for path in sorted((ROOT / "interp_ext").rglob("*.py")):
        if "run" in path.relative_to(ROOT).parts[1:2]:
            continue
        text = path.read_text()
        for name in (*(f'/ "{n}"' for n in names), *(f"/ {f}" for f in folders)):
            if name in text:
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert bad == []


def _run_python(code: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_importing_the_families_package_loads_no_family():
    _run_python(
        "import sys, interp_ext.families as f\n"
        "loaded = [m for m in sys.modules if m.startswith('interp_ext.families.')]\n"
        "assert loaded == [], loaded\n"
        "f.GeometrySettings\n"
        "loaded = {m.split('.')[2] for m in sys.modules if m.startswith('interp_ext.families.')}\n"
        "assert loaded == {'geometry'}, loaded\n"
    )


def test_drawing_a_figure_leaves_the_matplotlib_backend_alone():
    _run_python(
        "import matplotlib, tempfile, pathlib\n"
        "matplotlib.use('pdf')\n"
        "from interp_ext.figures import Figure, Panel, Trace, save\n"
        "out = pathlib.Path(tempfile.mkdtemp())\n"
        "save(Figure('t', [Panel('p', [Trace([0, 1], [1, 2], 'a')])]), out, 'f')\n"
        "assert (out / 'f.png').stat().st_size > 1000\n"
        "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()\n"
    )


def test_no_word_names_two_modules_on_different_floors():
    """Outside the families (whose names are the measurements' names on the command line, and
    whose ``report`` module is each one's report section) one word names modules of one floor
    only: ``stream3`` is Stream 3's math, not also a runner module."""
    table = floors()
    seen: dict[str, set[tuple[int, str]]] = {}
    for mod in source_files():
        parts = mod.split(".")
        if parts[:2] == ["interp_ext", "families"]:
            continue
        for i in range(1 if parts[0] == "interp_ext" else 0, len(parts)):
            prefix = ".".join(parts[: i + 1])
            for word in parts[i].split("_"):
                stem = word[:-1] if len(word) > 4 and word.endswith("s") else word
                seen.setdefault(stem, set()).add((floor_of(prefix, table) or 0, prefix))
    shared = {w: sorted(v) for w, v in seen.items() if len({f for f, _ in v}) > 1 and len(v) > 1}
    assert shared == {}


def test_a_family_names_another_only_when_it_declares_it():
    """The plugin bar extends to strings: a family's code names another family (as a string: rows
    it reads, a settings id it resolves) only when that family is in its ``requires``."""
    from interp_ext.measurement.runner import family_names, get_family

    names = set(family_names())
    bad = []
    for name in sorted(names):
        fam = get_family(name)
        own = {name, *fam.families()}
        folder = ROOT / "interp_ext" / "families" / name
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names - own:
                    if node.value not in fam.requires:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}")
        assert set(fam.requires) <= names, name
    assert bad == []
