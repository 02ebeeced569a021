"""docs/findings.md is made from per-seed values: the committed page is the committed snapshot
rendered, every number moves with the values under it, and each row links a section of the log."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from interp_ext import findings as F

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def snapshot():
    return json.loads((DOCS / "findings.json").read_text())


def test_the_page_is_the_snapshot_rendered(snapshot):
    assert (DOCS / "findings.md").read_text() == F.render(snapshot), (
        "docs/findings.md differs from its snapshot: run `interp-ext findings --study runs/study "
        "--causal runs/causal`"
    )


def test_every_claim_has_a_row_and_a_section_of_the_log(snapshot):
    page = (DOCS / "findings.md").read_text()
    rows = [line for line in page.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(F.CLAIMS)
    headings = {
        F.github_anchor(line.lstrip("#").strip())
        for line in (DOCS / "results.md").read_text().splitlines()
        if line.startswith("#")
    }
    for row in rows:
        anchor = re.search(r"\(results\.md#([^)]*)\)", row).group(1)
        assert anchor in headings, row[:80]
    statuses = {c.status for c in F.CLAIMS}
    assert statuses <= {"holds", "null", "undecided", "not read", "withdrawn"}
    # a claim with values has them in the snapshot; a claim without is marked for the log
    for claim in F.CLAIMS:
        assert (claim.collect is None) == (claim.key not in snapshot["claims"]), claim.key


def _flip_first_formed(rows: list[dict], column: str) -> None:
    row = next(r for r in rows if r["formed"] and r[column] == r[column])
    row[column] = -row[column] if row[column] else 1.0


def test_the_numbers_move_with_the_per_seed_values(snapshot):
    """Change one seed's value and the counts and p-values on its row change: the page's numbers
    are computed from the values, not written in."""
    page = F.render(snapshot)
    for key, column in (("reinforce_slow", "value"), ("saddle", "rho")):
        changed = copy.deepcopy(snapshot)
        _flip_first_formed(changed["claims"][key]["rows"], column)
        other = F.render(changed)
        assert other != page
        old_row = [line for line in page.splitlines() if F.CLAIMS_BY_KEY[key].claim[:40] in line]
        new_row = [line for line in other.splitlines() if F.CLAIMS_BY_KEY[key].claim[:40] in line]
        assert old_row != new_row
    assert F.differences(snapshot, snapshot) == []
    changed = copy.deepcopy(snapshot)
    changed["claims"]["formation"]["seeds"]["0"]["formation"] += 250
    assert F.differences(snapshot, changed) == ["formation"]


def test_the_sign_counts_match_the_values(snapshot):
    """The slow-weight decision row against a count done here from the snapshot's values, and its
    p-value against scipy's exact binomial test."""
    from scipy.stats import binomtest

    rows = [
        r
        for r in snapshot["claims"]["reinforce_slow"]["rows"]
        if r["formed"] and r["value"] == r["value"]
    ]
    summary = F.summarize_slow(snapshot["claims"]["reinforce_slow"])
    for entry in {r["entry"] for r in rows}:
        values = [r["value"] for r in rows if r["entry"] == entry]
        k = sum(v > 0 for v in values)
        assert f"{entry} positive on {k} of {len(values)}" in summary["effect"]
        p = binomtest(k, len(values), alternative="greater").pvalue
        assert f"{entry}: p = {p:.2g}" in summary["test"]


def test_the_readme_links_the_findings_first():
    readme = (DOCS.parent / "README.md").read_text()
    links = re.findall(r"docs/[a-z_]+\.md", readme)
    assert links and links[0] == "docs/findings.md"
    top = (DOCS / "results.md").read_text().splitlines()[:6]
    assert any("findings.md" in line for line in top), "results.md says it is the log"


def test_a_bad_study_folder_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "interp_ext.cli", "findings", "--study", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "nope" in proc.stderr


def test_numbers_written_into_a_claim_are_quoted_from_the_log():
    """A claim's own text (not computed from values) may quote a number only from the log."""
    log = (DOCS / "results.md").read_text().replace(",", "")
    for claim in F.CLAIMS:
        for field in (claim.claim, claim.null, claim.overturn):
            for number in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", field.replace(",", "")):
                assert number in log, f"{claim.key}: {number} is not in docs/results.md"
