"""Families are plugins: a family from another installed package (an entry point in group
``interp_ext.families``) is listed, measured and drawn by the report like a built-in one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser

import pytest
import torch
from typer.testing import CliRunner

from interp_ext.cli import app
from interp_ext.measurement import runner as runner_module
from interp_ext.run import open_run

cli = CliRunner()

OUTSIDE = '''
"""A family from another package: the squared norm of each seed's weights per checkpoint."""
from dataclasses import dataclass

import pandas as pd

from interp_ext.measurement.runner import Family, Settings, setting


@dataclass(frozen=True)
class WeightNormSettings(Settings):
    family = "weightnorm"
    scale: float = setting(1.0, "Multiply the norm by this.")


class WeightNorm(Family):
    name = "weightnorm"
    settings = WeightNormSettings
    summary_metrics = ("weight_norm",)

    def checkpoint(self, ctx, settings, state):
        total = sum(float((p.detach() ** 2).sum()) for p in ctx.model.parameters())
        return pd.DataFrame([{"metric": "weight_norm", "value": settings.scale * total}])
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The package as pip would leave it: its module and a dist-info naming the entry point."""
    site = tmp_path / "site"
    (site / "outside_family").mkdir(parents=True)
    (site / "outside_family" / "__init__.py").write_text(textwrap.dedent(OUTSIDE))
    info = site / "outside_family-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[interp_ext.families]\nweightnorm = outside_family:WeightNorm\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    runner_module._REGISTRY.pop("weightnorm", None)
    sys.modules.pop("outside_family", None)


def test_an_outside_family_is_listed_measured_and_reported(installed, micro_run, tmp_path):
    help_text = cli.invoke(app, ["measure", "--help"]).output
    assert "weightnorm" in help_text
    own_help = cli.invoke(app, ["measure", "weightnorm", "--help"]).output
    assert "--scale" in own_help
    run_dir = tmp_path / "run"
    shutil.copytree(micro_run.path, run_dir)
    result = cli.invoke(app, ["measure", "weightnorm", str(run_dir), "--scale", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    run = open_run(run_dir)
    rows = run.metrics("weightnorm")
    model = run.model(1, 4)
    expected = 2 * sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    actual = rows[(rows.seed == 1) & (rows.step == 4) & (rows.metric == "weight_norm")].value
    assert actual.item() == pytest.approx(expected, rel=1e-6)
    assert {"weight_norm/seed_mean", "weight_norm/seed_lo"} <= set(rows.metric)

    report = cli.invoke(app, ["report", str(run_dir)])
    assert report.exit_code == 0, report.output
    out = run_dir / "report"
    text = (out / "report.md").read_text()
    assert "## weightnorm" in text and "weightnorm_weight_norm.png" in text
    assert (out / "weightnorm_weight_norm.png").stat().st_size > 0


def test_report_html_loads_nothing_from_the_network(micro_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(micro_run.path, run_dir)
    assert cli.invoke(app, ["report", str(run_dir)]).exit_code == 0
    out = run_dir / "report"
    pages = sorted(out.glob("*.html"))
    assert pages and (out / "plotly.min.js").stat().st_size > 1_000_000
    remote = re.compile(r"""<(script|link)[^>]+(src|href)=["']?(https?:)?//""", re.I)
    for page in pages:
        html = page.read_text()
        assert not remote.search(html), page.name
        assert '<script charset="utf-8" src="plotly.min.js"></script>' in html, page.name


class PageShape(HTMLParser):
    """The h2 headings, the inline scripts and any misnested element of a page."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open, self.bad, self.h2, self.scripts, self.text = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        self.open.append(tag)
        if tag in ("h2", "script"):
            self.text = []
        if tag == "script" and dict(attrs).get("src"):
            self.text = None

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.bad.append(f"</{tag}> closes {self.open[-1:]}")
            return
        self.open.pop()
        if tag == "h2":
            self.h2.append("".join(self.text).strip())
        elif tag == "script" and self.text is not None:
            self.scripts.append("".join(self.text))
        self.text = None if tag in ("h2", "script") else self.text

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)


def test_report_html_is_one_page_with_every_figure_inline(micro_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(micro_run.path, run_dir)
    assert cli.invoke(app, ["report", str(run_dir)]).exit_code == 0
    out = run_dir / "report"
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    headings = [
        line[3:].replace("`", "").strip() for line in md.splitlines() if line.startswith("## ")
    ]
    figures = re.findall(r"\(\[interactive\]\(([^)]+)\.html\)\)", md)
    assert headings and figures
    shape = PageShape()
    shape.feed(page)
    shape.close()
    assert shape.bad == [] and shape.open == []
    assert shape.h2 == headings
    assert page.count("Plotly.newPlot(") == len(figures) == page.count('class="plotly-graph-div"')
    for name in figures:
        assert f'href="{name}.png"' in page and f'id="figure-{name}"' in page
    assert "<iframe" not in page.lower()
    remote = re.compile(r"""<(script|link)[^>]+(src|href)=["']?(https?:)?//""", re.I)
    assert not remote.search(page)
    assert page.count("plotly.min.js") == 1
    assert page.count('<script charset="utf-8" src="plotly.min.js"></script>') == 1
    assert page.index("plotly.min.js") < page.index("</head>") < page.index("Plotly.newPlot(")
    assert all(f'<a href="#{a}"' in page for a in re.findall(r'<h2 id="([^"]+)"', page))
    assert f"<title>Report: {run_dir.name}</title>" in page
    node = shutil.which("node")
    if node is None:
        return
    for i, script in enumerate(shape.scripts):
        js = tmp_path / f"inline_{i}.js"
        js.write_text(script)
        check = subprocess.run([node, "--check", str(js)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_a_family_declared_under_another_name_is_refused(installed, monkeypatch):
    info = next(installed.glob("*.dist-info"))
    (info / "entry_points.txt").write_text(
        "[interp_ext.families]\nnorms = outside_family:WeightNorm\n"
    )
    with pytest.raises(runner_module.MeasureError, match="declare it under its own name"):
        runner_module.get_family("norms")


def test_the_registry_holds_every_built_in_family_by_entry_point():
    names = runner_module.family_names()
    assert {"induction", "circuit", "work", "llc", "sae", "stream2"} <= set(names)
    assert not {"ledger", "counterfactual"} & set(names)  # retired: their old rows still read
    for name in names:
        fam = runner_module.get_family(name)
        assert fam.name == name and fam.settings.family == name
    assert torch.__version__  # the registry loads without a run


def test_a_retired_familys_rows_still_read(micro_run, tmp_path):
    """Rows of a family no longer registered (``ledger``) read back through the run, with their
    extra column, and through pandas alone from the family's folder (docs/metrics.md)."""
    import pandas as pd

    from interp_ext import open_run

    copy = tmp_path / "run"
    shutil.copytree(micro_run.path, copy)
    run = open_run(copy)
    assert "ledger" not in runner_module.family_names()
    row = {"seed": 0, "step": 4, "metric": "L1", "component": "C", "value": 1.5}
    run.write_rows("ledger", "ledger-0123456789", "seed0-step4", [{**row, "direction": "real"}])
    rows = run.metrics("ledger", settings="all")
    assert rows.value.tolist() == [1.5] and rows.direction.tolist() == ["real"]
    assert rows.settings.tolist() == ["ledger-0123456789"]
    (folder,) = [p for p in (copy / "metrics").iterdir() if p.name.endswith("ledger")]
    # the folders are Hive-style (family=, settings=) and the parts hold those columns too
    assert pd.read_parquet(folder, partitioning=None).value.tolist() == [1.5]
    # a run written before the Hive layout: metrics/ledger/<id>/, read by default (latest)
    (part,) = folder.rglob("*.parquet")
    legacy = copy / "metrics" / "ledger" / "ledger-0123456789"
    legacy.mkdir(parents=True)
    part.rename(legacy / part.name)
    shutil.rmtree(folder)
    rows = open_run(copy).metrics("ledger")
    assert rows.value.tolist() == [1.5] and rows.direction.tolist() == ["real"]
