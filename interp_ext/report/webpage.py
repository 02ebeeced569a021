"""``report.html``: the report as one page to open, with every figure drawn inline.

The page is made from the same markdown lines as ``report.md``, rendered by markdown-it
(tables on, raw HTML off, so text like ``<resid>`` stays text). Each figure the text names
(``![alt](NAME.png) ([interactive](NAME.html))``, :func:`interp_ext.report.draw.image`)
becomes the interactive figure itself, at its place: the div and script from the body of the
saved ``NAME.html``, with a link to the PNG. plotly.js is loaded once, in the head, from the
``plotly.min.js`` beside the page, as the figure pages load it, so the page draws offline when
opened as a file. A figure whose HTML is missing, or is not a plotly page that loads nothing
from elsewhere, is shown as its PNG. A table of contents at the top links to each ``##``
section.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

from interp_ext import diskio
from interp_ext.figures import PLOTLY_JS

FIGURE = re.compile(r"!\[([^\]]*)\]\(([^()\s]+)\.png\) \(\[interactive\]\(\2\.html\)\)")
SLOT = "@@figure-{}@@"
# a line inside a table, list, quote or code block: a figure there stays in its line
NESTED = re.compile(r"^(\s|[|>]|[*+-]\s|\d+[.)]\s)")
# what the figure pages carry that the report page loads once, in its head
PLOTLY_TAGS = re.compile(
    r"<script[^>]*>\s*window\.PlotlyConfig\b[^<]*</script>"
    rf"|<script[^>]*\bsrc=[\"']?{re.escape(PLOTLY_JS)}[\"']?[^>]*>\s*</script>",
    re.I,
)
LOADS = re.compile(r"<(script|link|iframe|img)[^>]+(src|href)=", re.I)

STYLE = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: #222; background: #fff; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 1rem 1.5rem 4rem; }
h1 { font-size: 1.8rem; margin-bottom: .5rem; }
h2 { margin-top: 2.5rem; padding-top: .6rem; border-top: 1px solid #ddd; }
nav.toc { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px;
          padding: .4rem 1.2rem; margin: 1rem 0 1.5rem; }
nav.toc ul { margin: .3rem 0; padding-left: 1.2rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; }
th { background: #f6f8fa; }
code { background: #f3f4f6; padding: 0 .25em; border-radius: 3px; font-size: .9em; }
figure { margin: 1rem 0 1.5rem; overflow-x: auto; }
figure img { max-width: 100%; }
figcaption { font-size: .85rem; color: #555; }
"""


def write_html(lines: list[str], out: Path) -> Path:
    """Write ``out/report.html`` from the report's markdown lines (those of ``report.md``) and
    the figure files beside it; returns its path."""
    figures: list[str] = []
    source = "\n".join(_slot_figures(line, figures, out) for line in lines)
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(source)
    title, sections = _anchor_sections(md, tokens)
    body = _fill_slots(md.renderer.render(tokens, md.options, {}), figures)
    toc = "".join(f'<li><a href="#{slug}">{text}</a></li>' for slug, text in sections)
    nav = f'<nav class="toc"><strong>Contents</strong><ul>{toc}</ul></nav>\n' if toc else ""
    body = body.replace("</h1>\n", "</h1>\n" + nav, 1) if "</h1>\n" in body else nav + body
    plotly = any("Plotly.newPlot" in f for f in figures)
    if plotly and not (out / PLOTLY_JS).exists():
        from plotly.offline import get_plotlyjs

        diskio.write_text(out / PLOTLY_JS, get_plotlyjs())
    scripts = (
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f'<script charset="utf-8" src="{PLOTLY_JS}"></script>\n'
        if plotly
        else ""
    )
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n{scripts}</head>\n"
        f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )
    path = out / "report.html"
    diskio.write_text(path, page)
    return path


def _slot_figures(line: str, figures: list[str], out: Path) -> str:
    """The line with each figure replaced by a slot that the figure's HTML fills after
    rendering; a figure in a paragraph line gets a paragraph of its own, so that its block
    never sits inside a ``<p>``."""
    own_block = not NESTED.match(line)

    def slot(match: re.Match) -> str:
        figures.append(_figure(out, match.group(2), match.group(1)))
        mark = SLOT.format(len(figures) - 1)
        return f"\n\n{mark}\n\n" if own_block else mark

    text = FIGURE.sub(slot, line)
    # the text after a figure, now a paragraph of its own, starts without the figure's "; "
    return re.sub(r"(@@\n\n)[;,]\s*", r"\1", text) if own_block else text


def _fill_slots(body: str, figures: list[str]) -> str:
    """Put each figure's HTML where its slot was rendered (a paragraph of its own, or inside a
    table cell or list item)."""
    for i, figure in enumerate(figures):
        mark = SLOT.format(i)
        body = body.replace(f"<p>{mark}</p>", figure).replace(mark, figure)
    return body


def _figure(out: Path, name: str, alt: str) -> str:
    """One figure: the interactive plot from ``NAME.html`` and links to its PNG and its own
    page, or the PNG itself when there is no plot to take."""
    png, own = (html.escape(f"{name}.{ext}") for ext in ("png", "html"))
    plot = _plot_of(out / f"{name}.html")
    if plot is None:
        return (
            f'<figure class="figure"><img src="{png}" alt="{html.escape(alt)}">'
            f'<figcaption>{html.escape(alt)}: <a href="{png}">PNG</a></figcaption></figure>\n'
        )
    return (
        f'<figure class="figure plot" id="figure-{html.escape(name)}">\n{plot}\n'
        f'<figcaption>{html.escape(alt)}: <a href="{png}">PNG</a>, '
        f'<a href="{own}">own page</a></figcaption></figure>\n'
    )


def _plot_of(page: Path) -> str | None:
    """The figure in a saved plotly page (its div and script, from the body) without the tags
    that load plotly.js, which the report page loads once; None when the page is missing, holds
    no plotly figure or would load anything else."""
    if not page.is_file():
        return None
    body = re.search(r"<body[^>]*>(.*)</body>", page.read_text(encoding="utf-8"), re.S | re.I)
    if body is None or "Plotly.newPlot" not in body.group(1):
        return None
    plot = PLOTLY_TAGS.sub("", body.group(1)).strip()
    return None if LOADS.search(plot) else plot


def _anchor_sections(md: MarkdownIt, tokens) -> tuple[str, list[tuple[str, str]]]:
    """Give each ``##`` heading an id; returns the page title (the first ``#`` heading) and the
    sections as (id, heading as HTML) for the table of contents."""
    title, sections, used = None, [], set()
    for i, token in enumerate(tokens):
        if token.type != "heading_open" or token.tag not in ("h1", "h2"):
            continue
        text = tokens[i + 1].content
        if token.tag == "h1":
            title = text if title is None else title
            continue
        base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
        slug, n = base, 1
        while slug in used:
            n += 1
            slug = f"{base}-{n}"
        used.add(slug)
        token.attrSet("id", slug)
        sections.append((slug, md.renderInline(text)))
    return title or "Report", sections
