"""The README's notebook snippet for `interp_ext.api` runs as written (extracted, executed)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_api_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "from interp_ext import api" in b)
    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(snippet, str(README), "exec", dont_inherit=True), namespace)
    for name in ("found", "sim", "sae_a", "opt"):
        assert name in namespace
    assert namespace["sim"].shape == (64, 64)
