"""``stream2``: cross-seed gradient alignment, basis-free and basis-dependent.

At each checkpoint, over every selected seed:

* ``cka`` (basis-free): per parameter group and per layer, the linear CKA of two
  seeds' centred per-batch gradient Gram matrices on the same probe batches,
  averaged over seed pairs (each pair's value in ``cka_pair``, its second seed in
  ``partner``; each seed's mean over its pairs in ``cka_seed``). It is invariant to any orthogonal change of a
  group's coordinates (rotating a head's d_head basis, permuting heads or
  neurons), so a function-identical twin scores 1. Per head (``cka_head`` for the
  first seed's heads, ``cka_heads`` per layer): heads matched across seeds by
  their attention patterns on the shared probe batches first.
* ``cka_unbiased`` (and ``_pair``, ``_seed``, heads, nulls: every ``cka`` metric with
  ``_unbiased``): the same from the unbiased HSIC, which ignores the Grams' diagonals
  (each batch's own squared gradient norm) that make the biased estimator's floors high.
* Nulls: ``cka_null_shuffled``, the same with one seed's batch order shuffled
  (no batch correspondence left), and ``cka_null_untrained`` (step -1), the
  measure between independently initialised untrained models.
* ``cross_seed_alignment`` (raw cosine of the mean gradients) and
  ``cross_seed_alignment_perm`` (after matching heads and neurons by weight
  similarity) stay, labelled basis-dependent: they compare coordinates.

The Gram matrices come from the per-batch gradients the ``geometry`` family
already formed (saved beside its rows); without a geometry measurement they are
formed here. ``composition=fixed`` compares the seeds on batches that each hold the
same number of corpus-text rows (``measurement.probes.fixed_composition_batches``)
instead of the probe batches, whose binomial mix of text and random rows makes
per-batch gradients differ alike in every seed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pandas as pd
import torch

from interp_ext.families.geometry import GeometrySettings
from interp_ext.geometry import spectral
from interp_ext.geometry.dashboard import gram_blocks
from interp_ext.geometry.gradients import per_batch_gradients, select_params
from interp_ext.geometry.streams import (
    cka_alignment,
    cross_seed_alignment,
    head_patterns,
    match_heads,
    shuffled_null,
)
from interp_ext.measurement.grams import load_grams
from interp_ext.measurement.probes import fixed_composition_batches, probe_batches
from interp_ext.measurement.runner import Family, setting
from interp_ext.measurement.shared_settings import ProbeBatches

NULL_SEED = 10_000


@dataclass(frozen=True)
class Stream2Settings(ProbeBatches):
    family = "stream2"
    # 1: the seed-level rows (per pair, per seed); 2: the unbiased-HSIC CKA beside the biased one
    revision = 2

    params: str = setting("all", "'all', 'blocks' or comma-separated groups.")
    geometry: str = setting(
        "",
        "Settings id of the geometry measurement whose Gram matrices are compared (resolved: the latest with the same batches).",
    )
    null_models: int = setting(4, "Untrained models whose pairs give the untrained null.")
    shuffles: int = setting(4, "Batch-order shuffles per seed pair for the shuffled null.")
    pattern_batches: int = setting(
        2, "Probe batches whose attention patterns match heads across seeds."
    )
    composition: str = setting(
        "probe",
        "'probe': the run's probe batches; 'fixed': as many batches of the same size, each with the same number of text rows (one set for every seed).",
        key="if_set",
    )

    def check(self) -> None:
        self.require(self.n_batches is None or self.n_batches >= 2, "n_batches", "must be >= 2")
        self.require(
            self.null_models >= 2 or self.null_models == 0,
            "null_models",
            "must be 0 or >= 2 (the null compares pairs)",
        )
        self.require(
            self.shuffles >= 0 and self.pattern_batches >= 1,
            "shuffles",
            "shuffles >= 0 and pattern_batches >= 1",
        )
        GeometrySettings(params=self.params)  # the same group names
        self.require(
            self.composition in ("probe", "fixed"), "composition", "choose 'probe' or 'fixed'"
        )


class Stream2(Family):
    name = "stream2"
    requires = ("geometry",)
    report_order = 50
    settings = Stream2Settings
    scope = "cross_seed"
    min_seeds = 2
    columns = ("partner",)

    def prepare(self, run, settings: Stream2Settings) -> Stream2Settings:
        available = probe_batches(run, "stream2", None)
        probe_batches(run, "stream2", settings.n_batches)
        if settings.geometry:
            return settings
        if settings.composition == "fixed":  # other batches than the geometry family's Grams
            return replace(settings, geometry="none")
        geo = run.measurements()
        geo = geo[geo.family == "geometry"].sort_values("used")
        match = [
            r.id
            for r in geo.itertuples()
            if (r.settings.get("n_batches") or available) == (settings.n_batches or available)
        ]
        return replace(settings, geometry=match[-1] if match else "none")

    def cross_seed_step(
        self, run, settings: Stream2Settings, seeds: list[int], step: int
    ) -> pd.DataFrame:
        lm = batches(run, settings)
        models = [run.model(s, step) for s in seeds]
        rows = [
            cross_seed_alignment(models, lm, GeometrySettings(params=settings.params).param_groups)
        ]
        grams = [seed_grams(run, settings, s, step, m, lm) for s, m in zip(seeds, models)]
        patterns = [head_patterns(m, lm[: settings.pattern_batches].flatten(0, 1)) for m in models]
        perms = {
            (i, j): match_heads(patterns[i], patterns[j])
            for i, j in itertools.combinations(range(len(models)), 2)
        }
        rows += [
            part
            for unbiased in (False, True)
            for part in (
                cka_alignment(grams, perms, seeds, unbiased=unbiased),
                shuffled_null(grams, settings.shuffles, seed=step, seeds=seeds, unbiased=unbiased),
            )
        ]
        return pd.concat(rows, ignore_index=True)

    def finish(self, run, settings: Stream2Settings, rows: pd.DataFrame) -> pd.DataFrame | None:
        if settings.null_models == 0:
            return None
        return untrained_null(run, settings)

    def report(self, page) -> list[str]:
        from interp_ext.families.stream2.report import section

        return section(page)


def batches(run, settings: Stream2Settings) -> torch.Tensor:
    lm = run.probe_set()["lm"]
    lm = lm[: settings.n_batches] if settings.n_batches else lm
    if settings.composition == "fixed":
        return fixed_composition_batches(run, lm.shape[0], lm.shape[1])
    return lm


def grams_of(model, lm: torch.Tensor, params) -> dict[str, torch.Tensor]:
    grads = per_batch_gradients(model, lm, params)
    return spectral.block_grams(grads, gram_blocks(model, select_params(model, params)))


def seed_grams(
    run, settings: Stream2Settings, seed: int, step: int, model, lm: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The geometry measurement's Gram matrices of (seed, step), or formed now when it has none."""
    saved = load_grams(run, settings.geometry, seed, step)
    if saved is not None:
        return saved
    return grams_of(model, lm, GeometrySettings(params=settings.params).param_groups)


def untrained_null(run, settings: Stream2Settings) -> pd.DataFrame:
    """CKA between independently initialised untrained models of the run's architecture, on the same batches:
    the mean over pairs and its spread (``cka_null_untrained``, ``cka_null_untrained_sd``), groups and heads."""
    from interp_ext.models import build_model

    lm = batches(run, settings)
    models = [
        build_model(run.config.model, run.d_vocab, seed=NULL_SEED + i, device=run.device)
        for i in range(settings.null_models)
    ]
    grams = [grams_of(m, lm, GeometrySettings(params=settings.params).param_groups) for m in models]
    patterns = [head_patterns(m, lm[: settings.pattern_batches].flatten(0, 1)) for m in models]
    per_pair = []
    for i, j in itertools.combinations(range(len(models)), 2):
        perm = {(0, 1): match_heads(patterns[i], patterns[j])}
        for unbiased in (False, True):
            pair = cka_alignment([grams[i], grams[j]], perm, unbiased=unbiased)
            per_pair.append(pair[~pair.metric.isin(["cka_head", "cka_head_unbiased"])])
    frame = pd.concat(per_pair, ignore_index=True)
    stats = frame.groupby(["metric", "component"]).value.agg(["mean", "std"]).reset_index()
    out = [
        {
            "step": -1,
            "metric": f"{r.metric}_null_untrained",
            "component": r.component,
            "value": r.mean,
        }
        for r in stats.itertuples()
    ]
    out += [
        {
            "step": -1,
            "metric": f"{r.metric}_null_untrained_sd",
            "component": r.component,
            "value": r.std,
        }
        for r in stats.itertuples()
    ]
    return pd.DataFrame(out)


__all__ = ["Stream2", "Stream2Settings"]
