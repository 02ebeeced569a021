"""``circuit``: the induction circuit found by cause.

At each selected checkpoint (default: the last) and seed: induction heads by
score, then the earlier heads and MLPs whose key-path patch restores the
induction heads' attention to their targets (the receiver-attention metric),
chosen as the smallest set that restores at least ``together`` of it, searched
over every subset up to ``max_size`` members, or the whole earlier layer when
none does. Rows: each member with its role and how it was chosen, every earlier
sender's key-path share into every induction head, each head's share through
each MLP on the way (``route_share``), and what the chosen set and all earlier
senders together restore. Stream 3 follows this circuit by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from circuits.circuit import Circuit
from circuits.discovery import DEFAULT_MAX_SIZE, DEFAULT_TOGETHER, discover_induction_circuit
from circuits.induction import DEFAULT_THRESHOLD
from interp_ext.measurement.probes import repeated_probe
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    Settings,
    setting,
)
from interp_ext.measurement.selection import circuit_from_rows


@dataclass(frozen=True)
class CircuitSettings(Settings):
    family = "circuit"
    # the 10% candidate filter of the search before it covered every subset and MLPs
    retired = ("min_share",)

    threshold: float = setting(DEFAULT_THRESHOLD, "Induction score an induction head needs.")
    together: float = setting(
        DEFAULT_TOGETHER,
        "Share the chosen earlier heads and MLPs must restore together (mean over induction heads).",
    )
    max_size: int = setting(
        DEFAULT_MAX_SIZE,
        "Largest subset of earlier heads and MLPs the exhaustive search tries.",
    )
    corruption_seed: int = setting(
        0, "Seed of the fresh tokens of the corrupted input [BOS] + r' + r."
    )

    def check(self) -> None:
        self.require(0 < self.threshold < 1, "threshold", "must lie in (0, 1)")
        self.require(
            isinstance(self.max_size, int) and self.max_size >= 1,
            "max_size",
            "must be an integer >= 1",
        )
        self.require(0 < self.together <= 1, "together", "must lie in (0, 1]")


class CircuitByCause(Family):
    name = "circuit"
    requires = ("induction",)
    circuit_spec = "cause"
    report_order = 20
    settings = CircuitSettings
    columns = ("role", "method")

    def default_steps(self, run, settings: CircuitSettings) -> list[int]:
        return run.steps[-1:]

    def prepare(self, run, settings: CircuitSettings) -> CircuitSettings:
        if run.config.model.n_layers < 2:
            raise MeasureError(
                f"an induction circuit needs two layers; {run.path} has {run.config.model.n_layers}"
            )
        return settings

    def circuit_of(self, run, seed: int, settings: CircuitSettings, step: int | None = None):
        return cause_circuit(run, seed, settings, step)

    def checkpoint(self, ctx: Checkpoint, settings: CircuitSettings, state) -> pd.DataFrame:
        found = discover(ctx.model, repeated_probe(ctx.run), settings, f"cause-seed{ctx.seed}")
        circ = found.circuit
        rows = [
            {
                "metric": "member",
                "component": c,
                "value": 1.0,
                "role": circ.roles[c],
                "method": found.method[c],
            }
            for c in circ.components
        ]
        rows += [
            {"metric": "key_path_share", "component": f"{r.sender}->{r.receiver}", "value": r.share}
            for r in found.shares.itertuples()
        ]
        rows += [
            {"metric": "key_path_share_best", "component": s, "value": v}
            for s, v in found.shares.groupby("sender").share.max().items()
        ]
        rows += [
            {
                "metric": "route_share",
                "component": f"{r.sender}>{r.via}->{r.receiver}",
                "value": r.share,
            }
            for r in found.routes.itertuples()
        ]
        for name, per in (
            ("set_restoration", found.set_restoration),
            ("earlier_restoration", found.earlier_restoration),
        ):
            rows += [{"metric": name, "component": r, "value": v} for r, v in per.items()]
        rows += [
            {"metric": "set_restoration", "component": "", "value": found.mean_set_restoration},
            {
                "metric": "earlier_restoration",
                "component": "",
                "value": found.mean_earlier_restoration,
            },
            {"metric": "fallback", "component": "", "value": float(found.fallback)},
            {"metric": "subsets_tried", "component": "", "value": float(found.subsets_tried)},
            *(
                {"metric": "best_restoration_by_size", "component": str(k), "value": v}
                for k, v in found.best_by_size.items()
            ),
        ]
        return pd.DataFrame(rows)

    def describe(self, rows: pd.DataFrame) -> list[str]:
        lines = []
        for (seed, step), d in rows[rows.seed >= 0].groupby(["seed", "step"]):
            members = d[d.metric == "member"]
            best = d[d.metric == "key_path_share_best"].set_index("component").value
            parts = [
                f"{r.component} ({r.role}{f', share {best[r.component]:.2f}' if r.component in best else ''})"
                for r in members.itertuples()
            ]
            restored = float(d[(d.metric == "set_restoration") & (d.component == "")].value.iloc[0])
            fallback = (
                " (fallback: whole earlier layer)"
                if float(d[d.metric == "fallback"].value.iloc[0])
                else ""
            )
            lines.append(
                f"seed {seed} step {step}: {', '.join(parts)}; the set restores {restored:.2f} of the target attention{fallback}"
            )
        return lines

    def report(self, page) -> list[str]:
        from interp_ext.families.circuit.report import section

        return section(page)


def discover(model, repeated, settings: CircuitSettings, name: str):
    return discover_induction_circuit(
        model,
        repeated,
        settings.threshold,
        settings.together,
        settings.max_size,
        settings.corruption_seed,
        name,
    )


def cause_circuit(
    run, seed: int, settings: CircuitSettings | None = None, step: int | None = None
) -> Circuit:
    """The circuit of one seed found by cause at ``step`` (default: its last checkpoint).

    From the run's ``circuit`` rows of ``settings`` (default: the latest) when they
    hold that checkpoint; otherwise discovered now (nothing is written).
    """
    step = run.steps_for(seed)[-1] if step is None else step
    rows = run.metrics("circuit", settings=settings.id if settings else "latest", seeds=[seed])
    at = rows[(rows.seed == seed) & (rows.step == step)]
    if len(at):
        return circuit_from_rows(at, f"cause-seed{seed}")
    return discover(
        run.model(seed, step),
        repeated_probe(run),
        settings or CircuitSettings(),
        f"cause-seed{seed}",
    ).circuit


__all__ = ["CircuitByCause", "CircuitSettings", "cause_circuit"]
