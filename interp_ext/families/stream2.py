"""``stream2``: cross-seed gradient alignment per parameter group (SPEC section 5).

At each checkpoint, over every selected seed: the raw cosine of the seeds' mean
gradients on the shared probe batches per group and per layer, and the
permutation-matched variant (heads and MLP neurons matched across seeds by
Hungarian matching on weight similarity first). Both depend on the seeds'
coordinate bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from interp_ext.families.geometry import GeometrySettings
from interp_ext.geometry.streams import cross_seed_alignment
from interp_ext.runner import Family, MeasureError, Settings, register, setting


@dataclass(frozen=True)
class Stream2Settings(Settings):
    family = "stream2"

    n_batches: int | None = setting(
        None, "Probe batches (default: all of the probe set).", cli="--batches"
    )
    params: str = setting("all", "'all', 'blocks' or comma-separated groups.")

    def check(self) -> None:
        self.require(self.n_batches is None or self.n_batches >= 1, "n_batches", "must be >= 1")
        GeometrySettings(params=self.params)  # the same group names


@register
class Stream2(Family):
    name = "stream2"
    settings = Stream2Settings
    scope = "cross_seed"
    min_seeds = 2

    def prepare(self, run, settings: Stream2Settings) -> Stream2Settings:
        available = run.probe_set()["lm"].shape[0]
        if settings.n_batches and settings.n_batches > available:
            raise MeasureError(
                f"stream2 setting n_batches={settings.n_batches} is invalid: the run's probe set holds {available} batches"
            )
        return settings

    def cross_seed_step(
        self, run, settings: Stream2Settings, seeds: list[int], step: int
    ) -> pd.DataFrame:
        lm = run.probe_set()["lm"]
        lm = lm[: settings.n_batches] if settings.n_batches else lm
        models = [run.model(s, step) for s in seeds]
        return cross_seed_alignment(
            models, lm, GeometrySettings(params=settings.params).param_groups
        )


__all__ = ["Stream2", "Stream2Settings"]
