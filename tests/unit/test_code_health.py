"""Code health: functions stay short enough to read, or say why not."""

from __future__ import annotations

import ast
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
                    if length > LIMIT and REASON not in (ast.get_docstring(node) or ""):
                        out.append(
                            f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
                        )
    return out


def test_no_function_over_the_limit_without_a_reason():
    assert long_functions() == [], (
        f"functions over {LIMIT} lines need a docstring line starting '{REASON}'"
    )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges() -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """module -> {(imported module, names taken from it)}, every import statement counted (those
    inside functions too): ``from pkg import sub`` is an import of ``pkg.sub`` when it is a module."""
    files = {
        module_name(p): p
        for package in ("interp_ext", "circuits")
        for p in (ROOT / package).rglob("*.py")
    }
    edges: dict[str, set] = {m: set() for m in files}
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[mod] |= {(a.name, ()) for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module in files:
                subs = {a.name for a in node.names if f"{node.module}.{a.name}" in files}
                edges[mod] |= {(f"{node.module}.{s}", ()) for s in subs}
                names = tuple(a.name for a in node.names if a.name not in subs)
                if names:
                    edges[mod].add((node.module, names))
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
