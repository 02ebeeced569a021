"""``autocatalysis``: Stream 3, the autocatalytic condition on a fixed circuit.

Each seed follows one circuit through training (default: its induction circuit
found by cause at its last checkpoint, ``interp_ext.families.circuit``). Per checkpoint and update direction (``sgd``:
-gbar; ``optimizer``: the real AdamW step after the checkpoint): K[A, B] and
K_norm for the circuit's components and ``rest``, the whole-circuit C|C term, the
energies E_A, the energy budget along the AdamW step, and sampled entries
dG_ii/dtheta_j; the same for random-head control circuits and a non-circuit
parameter group. Across seeds: per-step t-intervals of the seed values (controls
averaged within each seed first) and, when the run has induction rows, the mean
over checkpoints before / during / after each seed's formation step, reduced to
one value per seed before the interval over seeds.

Rows carry ``direction`` (``sgd`` | ``optimizer`` | "") and ``circuit``
(``circuit``, ``control_random_<i>``, ``control_group``, or a role for
``circuit_member`` rows); ``component`` is ``A|B`` (``C|C``: the whole circuit,
rest excluded, against itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from circuits.circuit import Circuit
from interp_ext.measurement.probes import probe_batches
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    resolved,
    setting,
)
from interp_ext.measurement.selection import (
    layer_matched,
    resolve_circuit,
    seed_circuit,
    source_inputs,
)
from interp_ext.measurement.shared_settings import ProbeBatches
from interp_ext.stats import over_seeds, t_interval
from interp_ext.stream3.energy import (
    WHOLE,
    EnergyProbe,
    component_matrix_flat,
    model_probe,
    sample_entries,
    sgd_direction,
    union_mask,
    whole_circuit_terms,
)

log = logging.getLogger("interp_ext")
DIRECTIONS = ("sgd", "optimizer")


@dataclass(frozen=True)
class AutocatalysisSettings(ProbeBatches):
    family = "autocatalysis"

    circuit: str = setting(
        "cause",
        "'cause' (found by key-path patching per seed at its last checkpoint), 'induction' (by scores), heads like L1H2,L0H3, or a Circuit JSON file.",
    )
    directions: tuple[str, ...] = setting(
        DIRECTIONS,
        "Update directions: sgd, optimizer or both (default: both).",
        cli="--direction",
        parse=lambda v: parse_directions(v),
    )
    rows: int = setting(32, "Sampled rows of dG_ii/dtheta_j.")
    controls: int = setting(3, "Random-head control circuits per checkpoint.")
    source: str = resolved(
        "Settings id of the circuit or induction rows the circuit is read from (resolved for 'cause' and 'induction')."
    )
    chunk: int | None = setting(
        None, "Batches per vmap (default: 1 on a CPU, 8 on a GPU); speed only.", key=False
    )

    def check(self) -> None:
        object.__setattr__(self, "directions", parse_directions(self.directions))
        bad = [d for d in self.directions if d not in DIRECTIONS]
        self.require(
            bool(self.directions) and not bad, "directions", f"choose from {DIRECTIONS} (or 'both')"
        )
        self.require(self.n_batches is None or self.n_batches >= 1, "n_batches", "must be >= 1")
        self.require(self.rows >= 0, "rows", "must be >= 0")
        self.require(self.controls >= 0, "controls", "must be >= 0")


def describe_rows(rows: pd.DataFrame) -> list[str]:
    cc = rows[(rows.metric == "K_norm") & (rows.component == "C|C") & (rows.seed >= 0)]
    if cc.empty:
        return []
    summary = cc.groupby(["circuit", "direction"])["value"].agg(["mean", "min", "max"])
    return ["normalised K[C,C] over checkpoints and seeds:", summary.to_string()]


def parse_directions(value) -> tuple[str, ...]:
    """``"both"`` / ``"sgd,optimizer"`` / a sequence -> a tuple of directions."""
    if isinstance(value, str):
        return (
            DIRECTIONS
            if value == "both"
            else tuple(v.strip() for v in value.split(",") if v.strip())
        )
    return tuple(value)


class Autocatalysis(Family):
    name = "autocatalysis"
    requires = ("circuit", "induction")
    report_order = 80
    settings = AutocatalysisSettings
    columns = ("direction", "circuit")

    def prepare(self, run, settings: AutocatalysisSettings) -> AutocatalysisSettings:
        probe_batches(run, "autocatalysis", settings.n_batches)
        return replace(settings, **resolve_circuit(run, settings.circuit, settings.source))

    def start_seed(
        self, run, settings: AutocatalysisSettings, seed: int
    ) -> tuple[Circuit, dict[str, Circuit]]:
        circuit = seed_circuit(run, seed, settings.circuit, settings.source)
        return circuit, controls(run, seed, circuit, settings.controls)

    def checkpoint(self, ctx: Checkpoint, settings: AutocatalysisSettings, state) -> pd.DataFrame:
        circuit, ctrl = state
        return checkpoint_rows(ctx, settings, circuit, ctrl)

    def finish_seed(
        self, run, settings: AutocatalysisSettings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame:
        circ = seed_circuit(run, seed, settings.circuit, settings.source)
        return pd.DataFrame(
            [
                {
                    "step": -1,
                    "metric": "circuit_member",
                    "component": c,
                    "value": 1.0,
                    "direction": "",
                    "circuit": circ.roles.get(c, "member"),
                }
                for c in circ.components
            ]
        )

    def describe(self, rows: pd.DataFrame) -> list[str]:
        return describe_rows(rows)

    def inputs(self, run, settings: AutocatalysisSettings) -> list:
        formation = [("induction", i) for i in run_ids(run, "induction")]
        return formation + source_inputs(settings.circuit, settings.source)

    def finish(self, run, settings: AutocatalysisSettings, rows: pd.DataFrame) -> pd.DataFrame:
        return seed_level_summaries(run, rows)

    def report(self, page) -> list[str]:
        from interp_ext.families.autocatalysis.report import section

        return section(page)


def run_ids(run, family: str) -> list[str]:
    from interp_ext.run import parts

    return parts.settings_ids(run.metrics_dir, family)


def controls(run, seed: int, circuit: Circuit, n_random: int) -> dict[str, Circuit]:
    """Control circuits: ``n_random`` of layer-matched random heads (outside the circuit, below both
    detection thresholds at the seed's last checkpoint) and, reported on its own, a non-circuit group
    (the last layer's MLP; the embedding in attention-only models)."""
    out = layer_matched(run, seed, circuit, n_random)
    cfg = run.config.model
    group = f"L{cfg.n_layers - 1}MLP" if not cfg.attn_only else "EMBED"
    out["control_group"] = Circuit("group", [group])
    return out


def checkpoint_rows(
    ctx: Checkpoint, settings: AutocatalysisSettings, circuit: Circuit, ctrl: dict[str, Circuit]
) -> pd.DataFrame:
    """Every Stream 3 row of one seed at one checkpoint."""
    from interp_ext.trajectory import real_step

    model = ctx.model
    batches = ctx.probe["lm"][: settings.n_batches] if settings.n_batches else ctx.probe["lm"]
    probe = model_probe(model, batches, settings.chunk)
    circuits = {"circuit": circuit} | ctrl
    out: list[dict] = []
    for direction in settings.directions:
        update = None
        if direction == "sgd":
            d = sgd_direction(probe)
        else:
            _, update, _ = real_step(ctx.run, ctx.seed, ctx.step)
            d = probe.flat({n: update[n].float() for n in probe.names})
        for tag, circ in circuits.items():
            masks = circ.with_rest().flat_masks(model)
            frame, energies = component_matrix_flat(probe, masks, d)
            out += k_rows(
                frame,
                energies,
                d,
                masks,
                direction,
                tag,
                energy=direction == settings.directions[0],
            )
            if direction == "optimizer" and tag == "circuit":
                out += budget_rows(ctx, masks, frame, energies, update, batches, settings.chunk)
    masks = circuit.flat_masks(model)
    entries = sample_entries(
        probe,
        union_mask(masks.values(), like=next(iter(masks.values()))),
        m=settings.rows,
        seed=ctx.seed,
    )
    out += [
        {"metric": k, "component": WHOLE, "value": v, "direction": "", "circuit": "circuit"}
        for k, v in entries.items()
    ]
    return pd.DataFrame(out)


def k_rows(
    frame: pd.DataFrame,
    energies: dict,
    d: torch.Tensor,
    masks: dict,
    direction: str,
    tag: str,
    energy: bool,
) -> list[dict]:
    """K and K_norm per component pair and for the whole circuit; energies once per checkpoint."""
    out = []
    for r in frame.itertuples():
        for metric in ("K", "K_norm"):
            out.append(
                {
                    "metric": metric,
                    "component": f"{r.A}|{r.B}",
                    "value": getattr(r, metric),
                    "direction": direction,
                    "circuit": tag,
                }
            )
    whole = whole_circuit_terms(frame, energies, d, masks)
    out += [
        {
            "metric": m,
            "component": f"{WHOLE}|{WHOLE}",
            "value": whole[m],
            "direction": direction,
            "circuit": tag,
        }
        for m in ("K", "K_norm")
    ]
    if energy:
        out += [
            {"metric": "energy", "component": a, "value": e, "direction": "", "circuit": tag}
            for a, e in energies.items()
        ]
        out.append(
            {
                "metric": "energy",
                "component": WHOLE,
                "value": whole["E"],
                "direction": "",
                "circuit": tag,
            }
        )
    return out


def budget_rows(
    ctx: Checkpoint,
    masks: dict,
    frame: pd.DataFrame,
    energies: dict,
    update: dict,
    batches: torch.Tensor,
    chunk: int | None,
    eps: float = 0.1,
) -> list[dict]:
    """sum_B K[A, B] (optimizer) vs the observed change of E_A over the real step.

    ``budget_error`` compares with the whole real AdamW step, which includes its
    second-order effect; ``budget_error_eps`` with (E_A(theta + eps d) - E_A(theta)) / eps
    for a tenth of that step, where the first-order budget must close.
    """
    observed: dict[float, EnergyProbe] = {}
    for scale in (1.0, eps):
        model = ctx.run.model(ctx.seed, ctx.step)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.add_(scale * update[n])
        observed[scale] = model_probe(model, batches, chunk)
    base = {"direction": "optimizer", "circuit": "circuit"}
    rows, errors = [], {"budget_error": [], "budget_error_eps": []}
    for a, mask in masks.items():
        predicted = float(frame[frame.A == a].K.sum())
        for scale, suffix in ((1.0, ""), (eps, "_eps")):
            change = (observed[scale].energy(mask) - energies[a]) / scale
            rel = abs(predicted - change) / max(abs(change), 1e-30)
            errors["budget_error" + suffix].append(rel)
            rows += [
                {**base, "metric": "budget_observed" + suffix, "component": a, "value": change},
                {**base, "metric": "budget_error" + suffix, "component": a, "value": rel},
            ]
        rows.append({**base, "metric": "budget_predicted", "component": a, "value": predicted})
    rows += [
        {**base, "metric": name, "component": "", "value": float(np.median(vals))}
        for name, vals in errors.items()
    ]
    return rows


def seed_level_summaries(run, rows: pd.DataFrame) -> pd.DataFrame:
    """Intervals over seeds of K_norm[C,C] and E_C: per step, and per window around formation.

    Controls are averaged within each seed first (one value per seed and step), so
    every interval has one value per seed.
    """
    sel = rows[
        (rows.seed >= 0)
        & (rows.step >= 0)
        & (
            ((rows.metric == "K_norm") & (rows.component == "C|C"))
            | ((rows.metric == "energy") & (rows.component == WHOLE))
        )
    ]
    if sel.empty:
        return pd.DataFrame()
    kind = np.where(sel.circuit.str.startswith("control_random"), "controls", sel.circuit)
    sel = sel.assign(
        circuit=kind
    )  # random-head controls pooled within seed; the group control on its own
    per_step = over_seeds(sel, ["step", "metric", "component", "direction", "circuit"])
    return pd.concat(
        [per_step, window_summaries(run, sel), run_diagnostics(rows)], ignore_index=True
    )


def run_diagnostics(rows: pd.DataFrame) -> pd.DataFrame:
    """The energy budget's median and largest error over every (seed, checkpoint), and the sampled
    entries' fraction positive: per-seed means over checkpoints, then a t-interval over seeds."""
    out = []
    for name in ("budget_error", "budget_error_eps"):
        err = rows[(rows.metric == name) & (rows.component == "") & (rows.seed >= 0)].value
        if len(err):
            out += [
                {"metric": f"{name}/median", "value": float(err.median())},
                {"metric": f"{name}/max", "value": float(err.max())},
            ]
    frac = (
        rows[(rows.metric == "entry_frac_positive") & (rows.seed >= 0)].groupby("seed").value.mean()
    )
    if len(frac):
        out += [
            {"metric": f"entry_frac_positive/{s}", "value": v}
            for s, v in zip(
                ("seed_mean", "seed_lo", "seed_hi", "seed_n"), t_interval(frac.to_numpy())
            )
        ]
    return pd.DataFrame(
        [{"step": -1, "component": "", "direction": "", "circuit": "circuit", **r} for r in out]
    )


def window_summaries(run, sel: pd.DataFrame) -> pd.DataFrame:
    """Mean K_norm[C,C] before / during / after each seed's formation step, then a t-interval over seeds.

    Windows: before = more than one measured-checkpoint interval before the seed's
    formation step, during = within one interval, after = later. Components
    ``C|C@before`` etc.
    """
    forms = run.metrics("induction")
    forms = {
        int(r.seed): float(r.value)
        for r in forms[(forms.metric == "formation_step") & (forms.seed >= 0)].itertuples()
    }
    k = sel[(sel.metric == "K_norm") & sel.seed.isin(list(forms))]
    if k.empty:
        return pd.DataFrame()
    steps = np.sort(k.step.unique())
    interval = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    rel = k.step - k.seed.map(forms)
    k = k.assign(
        window=np.where(rel < -interval, "before", np.where(rel > interval, "after", "during"))
    )
    per_seed = k.groupby(["direction", "circuit", "window", "seed"])["value"].mean().reset_index()
    out = []
    for (direction, circ, window), g in per_seed.groupby(["direction", "circuit", "window"]):
        for stat, value in zip(
            ("seed_mean", "seed_lo", "seed_hi", "seed_n"), t_interval(g.value.to_numpy())
        ):
            out.append(
                {
                    "step": -1,
                    "metric": f"K_norm_window/{stat}",
                    "component": f"C|C@{window}",
                    "value": value,
                    "direction": direction,
                    "circuit": circ,
                }
            )
    return pd.DataFrame(out)


__all__ = ["Autocatalysis", "AutocatalysisSettings", "controls"]
