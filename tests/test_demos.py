"""Every demo runs top to bottom (short settings), in order, on one shared tiny run."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

DEMOS = sorted((Path(__file__).parent.parent / "demos").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory, cache_dir):
    run = tmp_path_factory.mktemp("demo") / "run"
    old = dict(os.environ)
    os.environ.update(DEMO_FAST="1", DEMO_RUN=str(run), MPLBACKEND="Agg")
    yield run
    os.environ.clear()
    os.environ.update(old)


def test_demos_exist():
    assert len(DEMOS) == 6


@pytest.mark.parametrize("demo", DEMOS, ids=[d.stem for d in DEMOS])
def test_demo_runs(demo, demo_env):
    runpy.run_path(str(demo), run_name="__main__")
