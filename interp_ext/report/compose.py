"""The report of a run: every family's section on one page (``report.md``, ``report.html``).

The report loops over the measurement families that have rows in the run (each
found through the registry, :func:`interp_ext.measurement.runner.families_in`) and
draws each family's own section (:meth:`Family.report`; a family without one gets
the default: its summary metrics per step with intervals over seeds). It names no
family and computes nothing. Each figure is saved as PNG and as interactive HTML
that works offline (one ``plotly.min.js`` beside the figures). ``report.html`` is the one
page to open: the same text with every figure drawn inline (:mod:`interp_ext.report.webpage`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from interp_ext import diskio
from interp_ext.figures import Figure, save
from interp_ext.measurement.runner import families_in
from interp_ext.report.draw import Page, context_of, image, metric_panel, select
from interp_ext.report.webpage import write_html


def write_report(run, out: Path | None = None, beside: tuple = ()) -> Path:
    """Write every figure the run's rows allow, ``report.md`` and ``report.html`` (the same
    text as one page, figures inline); returns the path of ``report.md``.

    ``beside``: other runs whose rows are drawn next to this one's, by the families that
    compare runs (:meth:`Family.report_beside`; the Stream 3 ledger).
    """
    out = Path(out or run.layout.report)
    out.mkdir(parents=True, exist_ok=True)
    m = run.metrics()
    families = families_in(run)
    ctx = context_of(m, families)
    lines = [
        f"# Report: {run.name}",
        "",
        f"Preset `{run.config.preset}`, seeds {run.seeds}, checkpoints {run.steps[:1]}..{run.steps[-1:]} "
        f"(every {run.config.train.checkpoint_every} steps). Corpus: {run.info()['corpus']}. Settings of each family: its latest measurement (`{run.path.name}/measurements/`).",
        "",
    ]
    lines += loss_section(m, out, ctx)
    page = Page(run, m, out, ctx)
    for fam in families:
        lines += fam.report(page)
    if beside:
        runs = {
            f"{run.name} ({run.config.preset})": run,
            **{f"{r.name} ({r.config.preset})": r for r in beside},
        }
        for fam in families:
            lines += fam.report_beside(runs, out)
    path = out / "report.md"
    diskio.write_text(path, "\n".join(lines) + "\n")
    write_html(lines, out)
    return path


def loss_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    """The training loss the trainer recorded (the run's own rows, not a measurement's)."""
    loss = select(m, family="train", metric="loss")
    if loss.empty:
        return []
    fig = Figure(
        "Training loss (mean over each checkpoint interval)",
        [metric_panel(loss, "loss", "cross-entropy (nats/token)", ctx)],
    )
    files = save(fig, out, "train_loss")
    last = loss[loss.step == loss.step.max()].sort_values("seed")
    per_seed = ", ".join(f"seed {int(r.seed)} {r.value:.3f}" for r in last.itertuples())
    return [
        "## Training loss",
        "",
        image(files, "loss"),
        "",
        f"Loss at the last checkpoint: {per_seed} nats/token. Reading: a plateau followed by a drop marks the induction transition.",
        "",
    ]
