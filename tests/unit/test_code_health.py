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
