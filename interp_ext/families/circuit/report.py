"""The ``circuit`` family's section of the report: the induction circuit found by cause, per seed.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

import math

import pandas as pd

from interp_ext.report.draw import (
    one,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return circuit_section(page.rows)


def circuit_section(m: pd.DataFrame) -> list[str]:
    """The circuit each seed is followed with, found by cause, and what its members restore."""
    circ = select(m, family="circuit")
    if circ.empty:
        return []
    lines = [
        "## Circuits found by cause",
        "",
        "Induction heads by score; earlier heads and MLPs by the share of an induction head's attention to its targets that their key-path patch restores "
        "(receiver-attention metric, best over the induction heads); the set is the smallest that restores the bar together, every subset up to the size bound tried. "
        "Routes: a head (or the embeddings) patched into an MLP's input only, the MLP's changed output into the key (best over the induction heads).",
        "",
        "| seed | step | induction heads | earlier heads and MLPs (key-path share, how chosen) | set restores | best single one restores | all earlier restore | routes through MLPs (share) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (seed, step), d in circ[circ.seed >= 0].groupby(["seed", "step"]):
        members = d[d.metric == "member"]
        share = d[d.metric == "key_path_share_best"].set_index("component").value
        heads = ", ".join(members[members.role == "induction"].component)
        earlier = ", ".join(
            f"{r.component} ({share.get(r.component, math.nan):.2f}, {r.method})"
            for r in members[members.role != "induction"].itertuples()
        )
        routes = d[d.metric == "route_share"]
        best_route = (
            routes.assign(route=routes.component.str.split("->").str[0])
            .groupby("route")
            .value.max()
            .sort_values(ascending=False)
        )
        route_text = (
            ", ".join(f"{k} ({v:.2f})" for k, v in best_route.head(3).items())
            if len(best_route)
            else "none (no MLP)"
        )
        restored = one(d, metric="set_restoration", component="")
        everything = one(d, metric="earlier_restoration", component="")
        single = one(d, metric="best_restoration_by_size", component="1")
        lines.append(
            f"| {seed} | {step} | {heads} | {earlier} | {restored:.2f} | {single:.2f} | {everything:.2f} | {route_text} |"
        )
    return lines + [
        "",
        "Reading: an earlier head outside the set with a large share means the previous-token function is spread; "
        "a route through an MLP with a large share means the MLP relays that head to the key. Stream 3 follows this circuit.",
        "",
    ]
