"""The ``beta`` family's section of the report: the beta fit and the transition window.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

import pandas as pd

from interp_ext.report.draw import (
    one,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return beta_section(page.rows)


def beta_section(m: pd.DataFrame) -> list[str]:
    beta = select(m, family="beta")
    if beta.empty:
        return []
    lines = [
        "## Beta fit of subspace similarity",
        "",
        "| parameter | estimate | 95% interval (bootstrap over seeds) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {p} | {one(beta, metric=p):.4g} | {one(beta, metric=p + '_lo'):.4g} .. {one(beta, metric=p + '_hi'):.4g} |"
        for p in ("sim_star", "gamma", "t0")
    ]
    return lines + [""]
