"""``sharpness``: the top Hessian eigenvalue, plain and preconditioned by AdamW, against the edge of
stability (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability").

Per checkpoint (and, with ``--window``, every ``--window-every`` real steps replayed bit for bit
through each seed's formation window), on the training loss averaged over the first
``--batches`` probe batches:

* ``sharpness``: lambda_1(H);
* ``sharpness_precond``: lambda_1(P^-1 H), P built from the saved AdamW second moment
  (:func:`interp_ext.adamw.preconditioner`);
* ``edge_of_stability``: (2 + 2 beta1) / ((1 - beta1) lr), 38 / lr for beta1 = 0.9, and
  ``precond_edge_ratio`` = ``sharpness_precond`` / ``edge_of_stability``;
* with ``--circuit``, the same two eigenvalues of the circuit's block of H (component ``C``), and
  the block's whole spectral density by stochastic Lanczos quadrature (Papyan 2020; ``--spectrum``
  steps from a seeded random start): ``spectrum_node/i`` and ``spectrum_weight/i`` (Ritz values and
  their weights, summing to 1; the density is their Gaussian-smoothed sum,
  :func:`interp_ext.geometry.curvature.spectral_density`) and ``spectrum_negative_mass``, the weight
  at nodes below -1% of the largest |node| (the block's negative directions, apart from the bulk
  at zero);
* ``hvp_calls``: Hessian-vector products spent (each costs about two gradients).

Rows at step 0 (no AdamW state yet) have no preconditioned values. Lanczos runs on curvlinops'
Hessian-vector products through scipy's ``eigsh``; the operator, the eigenvalues and the
quadrature are tested against the dense Hessian of a micro model
(``tests/geometry/test_sharpness.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from interp_ext.adamw import preconditioner
from interp_ext.geometry.curvature import model_hessian, stability_threshold
from interp_ext.measurement.probes import probe_batches
from interp_ext.measurement.replays import check_replay
from interp_ext.measurement.runner import Checkpoint, Family, setting
from interp_ext.measurement.selection import resolve_circuit, seed_circuit, source_inputs
from interp_ext.measurement.shared_settings import CircuitSource, FormationSource
from interp_ext.measurement.windows import (
    formation_or_null,
    replayed_rows,
    settings_window,
    window_problem,
)

METRICS = ("sharpness", "sharpness_precond", "precond_edge_ratio")


@dataclass(frozen=True)
class SharpnessSettings(CircuitSource, FormationSource):
    family = "sharpness"

    n_batches: int = setting(4, "Probe batches the Hessian's loss averages over.", cli="--batches")
    k: int = setting(1, "Top eigenvalues per operator.")
    tol: float = setting(1e-3, "Lanczos relative tolerance.")
    circuit: str = setting(
        "",
        "Also the circuit's block: 'cause', 'induction', heads like L1H2,L0H3, or a Circuit JSON file ('' for none).",
    )
    spectrum: int = setting(
        30,
        "Lanczos steps for the circuit block's spectral density (with --circuit; 0: none).",
    )
    window: str = setting(
        "",
        "Real steps replayed and measured between checkpoints: 'auto' (each formed seed's window), START:END, or '' (checkpoints only).",
    )
    window_every: int = setting(50, "Real steps between measurements inside the window.")
    margin: int = setting(500, "Auto window: steps before and after the formation step.")
    chunk: int | None = setting(None, "Probe batches per vmap call; speed only.", key=False)

    def check(self) -> None:
        self.require(self.n_batches >= 1, "n_batches", "must be >= 1")
        self.require(self.k >= 1, "k", "must be >= 1")
        self.require(0 < self.tol < 1, "tol", "must lie in (0, 1)")
        self.require(self.spectrum >= 0, "spectrum", "must be >= 0")
        self.require(self.window_every >= 1, "window_every", "must be >= 1")
        self.require(self.margin >= 0, "margin", "must be >= 0")
        if self.window:
            problem = window_problem(self.window)
            self.require(problem is None, "window", str(problem))


class Sharpness(Family):
    name = "sharpness"
    requires = ("circuit", "induction")
    report_order = 88
    settings = SharpnessSettings
    summary_metrics = METRICS
    between_checkpoints = True

    def prepare(self, run, settings: SharpnessSettings) -> SharpnessSettings:
        probe_batches(run, "sharpness", settings.n_batches)
        if settings.window:
            formation = check_replay(run, "sharpness", settings.window)
            settings = replace(settings, formation=settings.formation or formation)
        if settings.circuit:
            settings = replace(settings, **resolve_circuit(run, settings.circuit, settings.source))
        return settings

    def seed_steps(
        self, run, settings: SharpnessSettings, seed: int, steps: list[int]
    ) -> list[int]:
        """The chosen checkpoints, plus the window's first (its replay starts there)."""
        window = settings_window(run, settings, seed)
        return sorted(set(steps) | ({window[0]} if window else set()))

    def start_seed(self, run, settings: SharpnessSettings, seed: int) -> dict:
        circuit = (
            seed_circuit(run, seed, settings.circuit, settings.source) if settings.circuit else None
        )
        return {"circuit": circuit, "window": settings_window(run, settings, seed)}

    def checkpoint(self, ctx: Checkpoint, settings: SharpnessSettings, state: dict) -> pd.DataFrame:
        run = ctx.run
        ckpt = run.checkpoint(ctx.seed, ctx.step)
        v = ckpt["exp_avg_sq"] or None
        rows = measure_point(
            ctx.model, run, settings, state["circuit"], v, float(ckpt["adam_step"] or 0)
        )
        rows["step"] = ctx.step
        frames = [rows]
        window = state["window"]
        if window and ctx.step == window[0]:
            frames.append(window_rows(run, ctx.seed, window, settings, state["circuit"]))
        out = pd.concat(frames, ignore_index=True)
        out["value"] = out["value"].astype(float)
        return out[["step", "metric", "component", "value"]]

    def finish_seed(self, run, settings: SharpnessSettings, seed: int, rows: pd.DataFrame):
        """The seed's largest lambda_1(P^-1 H) / edge, its step, the share of points within 10% of
        the edge, and whether the peak lies within one checkpoint interval of the seed's formation
        step (a never-formed seed: of the median formation step of the seeds that did; ``null_``)."""
        ratio = rows[
            (rows.metric == "precond_edge_ratio") & (rows.component == "") & (rows.step >= 0)
        ]
        if ratio.empty:
            return None
        top = ratio.loc[ratio.value.idxmax()]
        out = [
            ("precond_edge_ratio/max", float(top.value)),
            ("precond_edge_ratio/argmax", float(top.step)),
            ("near_edge_share", float((ratio.value >= 0.9).mean())),
        ]
        form, prefix = formation_or_null(run, seed)
        if math.isfinite(form):
            interval = float(np.median(np.diff(run.steps_for(seed))))
            out += [
                (f"{prefix}formation_step", form),
                (f"{prefix}peak_at_formation", float(abs(top.step - form) <= interval)),
            ]
        return pd.DataFrame(
            [{"step": -1, "metric": m, "component": "", "value": v} for m, v in out]
        )

    def finish(self, run, settings: SharpnessSettings, rows: pd.DataFrame):
        """k of n seeds whose peak sits at formation (and the same for the never-formed seeds)."""
        per = rows[(rows.seed >= 0) & (rows.step == -1)]
        out = []
        for prefix in ("", "null_"):
            hit = per[per.metric == f"{prefix}peak_at_formation"].value
            if len(hit):
                out += [
                    {
                        "step": -1,
                        "metric": f"{prefix}peak_at_formation/seeds",
                        "component": "",
                        "value": float((hit > 0).sum()),
                    },
                    {
                        "step": -1,
                        "metric": f"{prefix}peak_at_formation/seed_n",
                        "component": "",
                        "value": float(len(hit)),
                    },
                ]
        out += permuted_peak_rows(run, per)
        return pd.DataFrame(out) if out else None

    def inputs(self, run, settings: SharpnessSettings) -> list:
        return source_inputs(settings.circuit, settings.source)

    def describe(self, rows: pd.DataFrame) -> list[str]:
        sel = rows[
            (rows.metric == "precond_edge_ratio") & (rows.component == "") & (rows.seed >= 0)
        ]
        if sel.empty:
            return []
        top = sel.loc[sel.value.idxmax()]
        return [
            f"largest lambda_1(P^-1 H) / edge: {top.value:.3g} (seed {int(top.seed)}, step {int(top.step)}); "
            f"median over measured points {sel.value.median():.3g}"
        ]

    def report(self, page) -> list[str]:
        from interp_ext.families.sharpness.report import section

        return section(page)


def measure_point(
    model, run, settings: SharpnessSettings, circuit, exp_avg_sq: dict | None, count: float
) -> pd.DataFrame:
    """The rows of one point: eigenvalues of H and of P^-1 H, for the model and the circuit block."""
    cfg = run.config.train
    op = model_hessian(model, run.probe_set()["lm"][: settings.n_batches], chunk=settings.chunk)
    precond = preconditioner(exp_avg_sq, count, cfg.betas) if exp_avg_sq and count >= 1 else None
    edge = stability_threshold(cfg.lr, cfg.betas[0])
    blocks = {"": None}
    if circuit is not None:
        masks = circuit.flat_masks(model)
        blocks["C"] = torch.stack([m for c, m in masks.items() if c != "rest"]).any(0)
    out = []
    for comp, mask in blocks.items():
        top = op.top(mask=mask, k=settings.k, tol=settings.tol)
        out += eigen_rows("sharpness", comp, top)
        if precond is not None:
            pre = op.top(preconditioner=precond, mask=mask, k=settings.k, tol=settings.tol)
            out += eigen_rows("sharpness_precond", comp, pre)
            out.append({"metric": "precond_edge_ratio", "component": comp, "value": pre[0] / edge})
        if mask is not None and settings.spectrum:
            out += spectrum_rows(comp, op.spectrum(mask, min(settings.spectrum, int(mask.sum()))))
    out.append({"metric": "edge_of_stability", "component": "", "value": edge})
    out.append({"metric": "hvp_calls", "component": "", "value": float(op.calls)})
    return pd.DataFrame(out)


def eigen_rows(metric: str, component: str, values) -> list[dict]:
    """lambda_1 as ``metric``; lambda_2.. as ``metric_2``.."""
    return [
        {"metric": metric if i == 0 else f"{metric}_{i + 1}", "component": component, "value": v}
        for i, v in enumerate(values)
    ]


def spectrum_rows(component: str, quadrature: dict[str, np.ndarray]) -> list[dict]:
    """The Lanczos quadrature's nodes and weights as rows, and the weight below -1% of the largest
    |node| (``spectrum_negative_mass``)."""
    nodes, weights = quadrature["nodes"], quadrature["weights"]
    negative = float(weights[nodes < -0.01 * np.abs(nodes).max()].sum())
    return [
        *(
            {"metric": f"spectrum_{kind}/{i}", "component": component, "value": float(v)}
            for kind, values in (("node", nodes), ("weight", weights))
            for i, v in enumerate(values)
        ),
        {"metric": "spectrum_negative_mass", "component": component, "value": negative},
    ]


def window_rows(run, seed: int, window, settings: SharpnessSettings, circuit) -> pd.DataFrame:
    """Every ``window_every`` real steps between checkpoints through the window, replayed bit for
    bit (:func:`interp_ext.measurement.windows.replayed_rows`), with AdamW's state after each."""

    def measure(model, step, at):
        return measure_point(model, run, settings, circuit, step.new_exp_avg_sq, step.count + 1)

    return replayed_rows(run, seed, window, settings.window_every, measure)


__all__ = ["Sharpness", "SharpnessSettings", "measure_point"]


def permuted_peak_rows(run, per: pd.DataFrame) -> list[dict]:
    """Whether the formed seeds' peaks sit at their own formation more often than the formation
    steps permuted across them give (``peak_at_formation/p_permuted``, ``/floor_permuted``;
    :func:`interp_ext.stats.event_near_formation_p`): a peak that every seed has in the same
    stretch of training is not read as marking its own formation. Read it only where every seed
    was measured at the same steps (a denser window on the formed seeds catches a sharp peak
    more easily)."""
    from interp_ext.stats import event_near_formation_p

    form = per[per.metric == "formation_step"].set_index("seed").value
    peak = per[per.metric == "precond_edge_ratio/argmax"].set_index("seed").value
    seeds = [s for s in form.index if s in peak.index]
    if len(seeds) < 2:
        return []
    interval = float(np.median(np.diff(run.steps_for(int(seeds[0])))))
    _, p, floor = event_near_formation_p(
        {s: [float(peak[s])] for s in seeds}, {s: float(form[s]) for s in seeds}, interval
    )
    return [
        {"step": -1, "metric": f"peak_at_formation/{m}", "component": "", "value": float(v)}
        for m, v in (("p_permuted", p), ("floor_permuted", floor))
    ]
