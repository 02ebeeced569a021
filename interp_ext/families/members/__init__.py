"""``members``: Stream 3 by member at checkpoints: the signal and the noise in each set's gradient
energy, and the member matrix of flow rates (who reinforces whom).

For every seed and checkpoint after the first step (AdamW has a denominator there):

* ``S``, ``N``, ``E`` of every set (each circuit member, its layer-matched control head, the
  circuit ``C``, the controls' union ``CTRL``, ``rest``): E_A = S_A + N_A, S_A the unbiased
  energy of the mean gradient (U-statistic over distinct pairs of probe batches), N_A the
  unbiased variance of one probe batch's gradient on A
  (:mod:`interp_ext.stream3.members`), at each probe batch size (``probe``: sequences per
  batch; N_A falls like 1 / size for independent sequences, S_A does not);
* ``R_S``, ``R_N``, ``R_E`` with component ``A|B``: R^X[A, B] = grad_{theta_B} X_A . u_B, u the
  expected AdamW step per unit of lr x steps, -(gbar / D + wd theta), D from the checkpoint's
  second moment, gbar from fresh training batches independent of the probe batches; A and B over
  the members, their controls, ``C`` and ``CTRL``. The diagonal of the members' block is each
  member's self term, the off-diagonal entries reinforcement between members;
* each with ``/se``: the standard error of the mean over ``groups`` independent groups (each
  group its own probe and fresh batches).

The probe sequences are fresh draws of the seed's training distribution at the checkpoint's data
position (the same sequences for every batch size), not the run's probe set, so that both batch
sizes see the same data. Rows at step -1: ``member`` (the circuit's components, with their role)
and ``control`` (``<member>|<control head>``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import pandas as pd
import torch

from circuits.circuit import Circuit, Head
from circuits.induction import head_scores, quiet_heads
from interp_ext.measurement.circuits import resolve_circuit, seed_circuit, source_folders
from interp_ext.measurement.probes import repeated_probe
from interp_ext.measurement.runner import Checkpoint, Family, Settings, setting
from interp_ext.measurement.stream3 import FRESH_DRAWS, PROBE_DRAWS
from interp_ext.optim_step import step_batch
from interp_ext.stream3.members import adam_denominator, member_matrix

log = logging.getLogger("interp_ext")


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"8,32"`` -> (8, 32); raises ValueError on anything but positive integers."""
    sizes = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    if not sizes or min(sizes) < 1:
        raise ValueError(text)
    return sizes


@dataclass(frozen=True)
class MembersSettings(Settings):
    family = "members"

    circuit: str = setting(
        "cause", "'cause', 'induction', heads like L1H2,L0H3, or a Circuit JSON file."
    )
    controls: bool = setting(
        True, "A layer-matched random head per member head (same layer, outside the circuit)."
    )
    probe_sizes: str = setting(
        "8,32",
        "Sequences per probe batch, comma-separated (N_A falls like 1 / size, S_A does not).",
    )
    sequences: int = setting(
        256, "Probe sequences (fresh training draws at the checkpoint), the same for every size."
    )
    fresh: int = setting(
        16, "Fresh training batches whose mean gradient makes the flow direction u."
    )
    groups: int = setting(4, "Independent groups of probe and fresh batches (standard errors).")
    source: str = setting("", "Settings id of the rows the circuit is read from (resolved).")
    chunk: int | None = setting(
        None,
        "Probe batches per vmap (default: 4 up to 4,096 tokens, else 1); speed only.",
        key=False,
    )

    def check(self) -> None:
        try:
            sizes = parse_sizes(self.probe_sizes)
        except ValueError:
            sizes = ()
        self.require(
            bool(sizes), "probe_sizes", "give positive sequences per probe batch, e.g. 8,32"
        )
        self.require(self.groups >= 1, "groups", "must be >= 1")
        for size in sizes:
            self.require(
                self.sequences % size == 0 and self.sequences // size >= 2 * self.groups,
                "sequences",
                f"must be a multiple of each probe size ({size}) giving at least 2 batches per "
                f"group ({2 * self.groups * size} sequences at size {size}, {self.groups} groups)",
            )
        self.require(self.fresh >= self.groups, "fresh", f"needs one per group ({self.groups})")


class Members(Family):
    name = "members"
    report_order = 96
    settings = MembersSettings
    columns = ("probe",)

    def prepare(self, run, settings: MembersSettings) -> MembersSettings:
        return replace(settings, **resolve_circuit(run, settings.circuit, settings.source))

    def seed_steps(self, run, settings: MembersSettings, seed: int, steps: list[int]) -> list[int]:
        return [s for s in steps if s > 0]  # AdamW has no denominator before its first step

    def start_seed(self, run, settings: MembersSettings, seed: int) -> dict:
        circuit = seed_circuit(run, seed, settings.circuit, settings.source)
        controls = member_controls(run, seed, circuit) if settings.controls else {}
        return {"circuit": circuit, "controls": controls}

    def checkpoint(self, ctx: Checkpoint, settings: MembersSettings, state: dict) -> pd.DataFrame:
        return checkpoint_rows(ctx, settings, state["circuit"], state["controls"])

    def finish_seed(self, run, settings: MembersSettings, seed: int, rows: pd.DataFrame):
        state = self.start_seed(run, settings, seed)
        circuit = state["circuit"]
        out = [
            {"metric": "member", "component": c, "value": 1.0, "probe": circuit.roles.get(c, "")}
            for c in circuit.components
        ]
        out += [
            {"metric": "control", "component": f"{m}|{c}", "value": 1.0, "probe": ""}
            for m, c in state["controls"].items()
        ]
        return pd.DataFrame([{**r, "step": -1} for r in out])

    def inputs(self, run, settings: MembersSettings) -> list:
        return source_folders(run, settings.circuit, settings.source)

    def describe(self, rows: pd.DataFrame) -> list[str]:
        return describe_members(rows)


def member_controls(run, seed: int, circuit: Circuit) -> dict[str, str]:
    """member head -> a random head of its layer outside the circuit, each used once, heads below
    both induction detection thresholds (at the seed's last checkpoint) drawn first; a member
    whose layer has no head left gets none (logged)."""
    model = run.model(seed, run.steps_for(seed)[-1])
    quiet = set(quiet_heads(head_scores(model, repeated_probe(run))))
    members = [Head.parse(c) for c in circuit.components if Head.is_head(c)]
    gen = torch.Generator().manual_seed(seed)
    used: set[str] = set()
    out = {}
    for m in members:
        pool = [
            str(Head(m.layer, h))
            for h in range(model.cfg.n_heads)
            if str(Head(m.layer, h)) not in circuit.components and str(Head(m.layer, h)) not in used
        ]
        if not pool:
            log.warning("seed %d: no head left in layer %d for a control of %s", seed, m.layer, m)
            continue
        order = torch.randperm(len(pool), generator=gen).tolist()
        ranked = sorted((pool[i] for i in order), key=lambda h: h not in quiet)
        out[str(m)] = ranked[0]
        used.add(ranked[0])
    return out


def probe_sequences(run, seed: int, step: int, sequences: int, first: int) -> torch.Tensor:
    """``sequences`` fresh training sequences at ``step``'s data position: [sequences, pos]."""
    size = run.config.train.batch_size
    draws = [
        step_batch(run, seed, step, draw=first + j) for j in range(math.ceil(sequences / size))
    ]
    return torch.cat(draws)[:sequences]


def checkpoint_rows(
    ctx: Checkpoint, settings: MembersSettings, circuit: Circuit, controls: dict[str, str]
) -> pd.DataFrame:
    """Every row of one seed at one checkpoint (see the module docstring)."""
    run, model = ctx.run, ctx.model
    ckpt = run.checkpoint(ctx.seed, ctx.step)
    train = run.config.train
    denominator = adam_denominator(ckpt["exp_avg_sq"], float(ckpt["adam_step"]), train.betas[1])
    sets = {c: [c] for c in circuit.components} | {c: [c] for c in controls.values()}
    unions = {"C": list(circuit.components)}
    if controls:
        unions["CTRL"] = list(controls.values())
    levels = {"rest": circuit.with_rest().flat_masks(model)["rest"]}
    seqs = probe_sequences(run, ctx.seed, ctx.step, settings.sequences, PROBE_DRAWS)
    fresh = torch.stack(
        [step_batch(run, ctx.seed, ctx.step, draw=FRESH_DRAWS + j) for j in range(settings.fresh)]
    )
    out = []
    for size in parse_sizes(settings.probe_sizes):
        batches = seqs.reshape(-1, size, seqs.shape[-1])
        frame = member_matrix(
            model,
            batches,
            fresh,
            sets,
            denominator,
            train.weight_decay,
            settings.groups,
            unions,
            levels,
            settings.chunk or (4 if model.cfg.d_vocab <= 4096 else 1),
        )
        for r in frame.itertuples():
            metric = r.part if r.B == "" else f"R_{r.part}"
            component = r.A if r.B == "" else f"{r.A}|{r.B}"
            out.append(
                {"metric": metric, "component": component, "value": r.value, "probe": str(size)}
            )
            out.append(
                {
                    "metric": f"{metric}/se",
                    "component": component,
                    "value": r.se,
                    "probe": str(size),
                }
            )
    return pd.DataFrame(out)


def describe_members(rows: pd.DataFrame) -> list[str]:
    sel = rows[
        (rows.seed >= 0) & (rows.step >= 0) & rows.metric.isin(["S", "N"]) & (rows.component == "C")
    ]
    if sel.empty:
        return []
    lines = [
        "the circuit's gradient energy: share of noise N_C / E_C over checkpoints, per probe size:"
    ]
    for probe, g in sel.groupby("probe"):
        wide = g.pivot_table(index=["seed", "step"], columns="metric", values="value")
        share = wide["N"] / (wide["N"] + wide["S"])
        lines.append(f"  {probe} sequences per batch: {share.min():.2f} .. {share.max():.2f}")
    return lines


__all__ = ["Members", "MembersSettings", "member_controls"]
