"""``beta``: the beta fit of subspace similarity and the transition window.

Formed once over the run from the ``geometry`` rows of one geometry settings id
(default: the latest): sim(t) = sim* (1 - exp(-gamma (t - t0))) fitted to the
seed-mean ``subspace_similarity`` with bootstrap-over-seeds intervals (family
``beta``), and the window where several seed-mean dashboard series change regime
together (family ``transition``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from interp_ext.geometry.streams import beta_fit, detect_transition
from interp_ext.measurement.runner import Family, MeasureError, Settings, setting

TRANSITION_METRICS = (
    "effective_rank",
    "participation_ratio",
    "topk_variance",
    "grad_cosine",
    "overlap_prev",
    "energy_in_subspace",
)


@dataclass(frozen=True)
class BetaSettings(Settings):
    family = "beta"

    geometry: str = setting(
        "", "Settings id of the geometry rows to fit (default: the latest geometry measurement)."
    )
    lag_metric: str = setting(
        "subspace_similarity", "Geometry metric the saturating curve is fitted to."
    )
    metrics: tuple[str, ...] = setting(
        TRANSITION_METRICS, "Seed-mean series whose change points vote for the transition."
    )
    min_gain: float = setting(
        0.25, "Share of a series' variance its change point must explain to vote."
    )
    n_boot: int = setting(200, "Bootstrap draws over seeds for the fit's intervals.")

    def check(self) -> None:
        self.require(0 < self.min_gain < 1, "min_gain", "must lie in (0, 1)")
        self.require(self.n_boot >= 0, "n_boot", "must be >= 0")
        self.require(len(self.metrics) >= 1, "metrics", "name at least one geometry metric")


class Beta(Family):
    name = "beta"
    requires = ("geometry",)
    report_order = 70
    settings = BetaSettings
    scope = "run"
    row_families = ("beta", "transition")

    def prepare(self, run, settings: BetaSettings) -> BetaSettings:
        if settings.geometry:
            recorded = run.measurements()
            recorded = sorted(recorded[recorded.family == "geometry"].id)
            if settings.geometry not in recorded:
                raise MeasureError(
                    f"beta setting geometry={settings.geometry!r}: no such geometry measurement in {run.path}; recorded: {recorded}"
                )
            return settings
        geo = run.metrics("geometry")
        if geo.empty:
            raise MeasureError(
                f"the beta fit reads geometry rows and {run.path} has none; run `interp-ext measure geometry {run.path}` first"
            )
        return replace(settings, geometry=str(geo.settings.iloc[0]))

    def inputs(self, run, settings: BetaSettings) -> list:
        return [("geometry", settings.geometry)]

    def finish(self, run, settings: BetaSettings, rows: pd.DataFrame) -> pd.DataFrame:
        geo = run.metrics("geometry", settings=settings.geometry)
        geo = geo[(geo.component == "") & (geo.seed >= 0)]
        out = []
        sub = geo[geo.metric == settings.lag_metric]
        curves = {int(s): (g.step.to_numpy(), g.value.to_numpy()) for s, g in sub.groupby("seed")}
        if curves:
            fit = beta_fit(curves, n_boot=settings.n_boot)
            out += [
                {"family": "beta", "metric": k, "component": settings.lag_metric, "value": v}
                for k, v in fit.items()
            ]
        series = {}
        for m in settings.metrics:
            mean = geo[geo.metric == m].groupby("step")["value"].mean()
            if len(mean):
                series[m] = (mean.index.to_numpy(), mean.to_numpy())
        tr = detect_transition(series, settings.min_gain)
        agreeing = ",".join(tr["agreeing"])
        out += [
            {"family": "transition", "metric": k, "component": agreeing, "value": v}
            for k, v in (
                ("start", tr["start"]),
                ("end", tr["end"]),
                ("n_agreeing", float(len(tr["agreeing"]))),
            )
        ]
        out += [
            {"family": "transition", "metric": "change_point", "component": m, "value": v}
            for m, v in tr["points"].items()
        ]
        return pd.DataFrame(out)

    def report(self, page) -> list[str]:
        from interp_ext.families.beta.report import section

        return section(page)

    def context(self, rows) -> dict:
        from interp_ext.report.draw import one, select

        tr = select(rows, family="transition")
        return {"window": (one(tr, metric="start"), one(tr, metric="end"))} if len(tr) else {}


__all__ = ["Beta", "BetaSettings"]
