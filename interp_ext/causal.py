"""The causal test of Stream 3: branch each formed seed before formation and freeze, slow or
clamp a circuit member, then watch whether and when its induction heads form.

For every formed seed of a run (induction rows with a formation step f, a circuit found by
cause) and every ``lead`` (steps before formation), a branch starts at the seed's last
checkpoint at or before f - lead and trains ``steps`` steps, checkpointing every
``checkpoint_every``, once per *arm*:

* ``none``: no intervention (the seed's own unperturbed branch, which every arm is paired with);
* ``prev*M``: the AdamW update of the previous-token members (the circuit's ``prev_token``
  role) multiplied by M (``prev*0`` freezes them; moments run on);
* ``ind*0``: the induction members frozen;
* ``ctrl*0``: as many layer-matched heads outside the circuit frozen (each previous-token
  member's control head, the one the ``members`` family draws), the same parameter count;
  ``ictrl*0`` the same for the induction members (on seeds whose induction layer has heads
  outside the circuit left; other seeds have no such unit); ``prevlayer*0`` every head of the
  previous-token members' layer (another head of it can take the partner's place);
* ``ablate:prev`` / ``ablate:ctrl``: the previous-token members' (or their controls') outputs
  replaced in training by their batch mean (``hook_z``);
* ``proj:prev>ind``: at every step, the part of the previous-token members' update that raises
  the induction members' signal energy removed (``project_out``, :mod:`interp_ext.interventions`);
  ``projrand:prev>ind`` subtracts a vector of the same norm along a random direction of the same
  block (its matched control); ``proj:ind>prev`` the other way round.

Each branch is measured with the ``induction`` family, so a branch's formation follows the
study's rule (the steepest rise of the best induction score, a head past the detection
threshold), censored at the branch's end when no head passes it. Units are resumable: a
branch whose training was cut short continues (``train --resume``), one whose training ended
is measured, a measured one is read. :func:`unit_row` gives one row per (seed, lead, arm), and
the tables hold every finished unit of the folder made with the same length and checkpoint
spacing (arms and leads added by later calls included; others are named and left out);
:func:`paired_tests` the exact tests of each arm against ``none`` over seeds (sign test on
later / earlier, censored pairs ordered where the order is known) and the Kaplan-Meier median
of formation per arm.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from circuits.circuit import Head
from interp_ext.branch import BranchError, Interventions, branch
from interp_ext.measurement.selection import resolve_circuit, seed_circuit
from interp_ext.measurement.windows import formation_of, formed_seeds
from interp_ext.run import open_run
from interp_ext.run.layout import Layout
from interp_ext.stats import km_median, paired_order, sign_test, sign_test_floor, signed_rank_p

log = logging.getLogger("interp_ext")

DEFAULT_ARMS = ("none", "prev*0", "ind*0", "ctrl*0")
WHO = ("prev", "ind", "ctrl", "ictrl", "prevlayer")
DOSE_ARMS = ("prev*0.25", "prev*0.5", "prev*2", "prev*4")
ABLATION_ARMS = ("ablate:prev", "ablate:ctrl")


def parse_arm(arm: str) -> tuple[str, str, float | str | tuple[str, str]]:
    """``"prev*0.5"`` -> ("scale", "prev", 0.5); ``"ablate:ctrl"`` -> ("ablate", "ctrl", "mean");
    ``"proj:prev>ind"`` -> ("project", "prev", ("ind", "signal")), ``"projrand:..."`` the same
    with "random"; ``"none"`` -> ("none", "", 1.0). Raises BranchError naming the arm otherwise."""
    if arm == "none":
        return "none", "", 1.0
    if arm.startswith("ablate:") and arm[7:] in WHO:
        return "ablate", arm[7:], "mean"
    for prefix, control in (("proj:", "signal"), ("projrand:", "random")):
        block, sep, members = arm.removeprefix(prefix).partition(">")
        if arm.startswith(prefix) and sep and block in WHO and members in WHO:
            return "project", block, (members, control)
    who, sep, value = arm.partition("*")
    if sep and who in WHO:
        try:
            m = float(value)
        except ValueError:
            m = math.nan
        if math.isfinite(m) and m >= 0:
            return "scale", who, m
    raise BranchError(
        f"arm {arm!r} is not one of none, prev*M, ind*M, ctrl*M, ictrl*M, prevlayer*M (M >= 0), "
        "ablate:prev, ablate:ind, ablate:ctrl, ablate:ictrl, ablate:prevlayer, "
        "proj:X>Y or projrand:X>Y (X, Y among prev, ind, ctrl, ictrl, prevlayer)"
    )


@dataclass(frozen=True)
class Unit:
    seed: int
    lead: int
    arm: str
    start: int
    formation: float
    interventions: Interventions
    targets: tuple[str, ...]
    prev: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"seed={self.seed}/lead={self.lead}/arm={self.arm}"


def seed_roles(run, seed: int) -> dict[str, list[str]]:
    """The seed's previous-token members, induction members, and the control head of each
    previous-token member (``ctrl``) and of each induction member (``ictrl``, where its layer has a
    head outside the circuit left), as the ``members`` family draws them; ``prevlayer``: every
    head of the previous-token members' layer(s)."""
    from interp_ext.measurement.selection import member_controls

    spec = resolve_circuit(run, "cause")
    circuit = seed_circuit(run, seed, "cause", spec["source"])
    prev = [c for c in circuit.components if circuit.roles.get(c) == "prev_token"]
    ind = [c for c in circuit.components if circuit.roles.get(c) == "induction"]
    controls = member_controls(run, seed, circuit)
    n_heads = run.config.model.n_heads
    return {
        "prev": prev,
        "ind": ind,
        "ctrl": [controls[p] for p in prev if p in controls],
        "ictrl": [controls[i] for i in ind if i in controls],
        "prevlayer": sorted(
            {str(Head(Head.parse(p).layer, h)) for p in prev for h in range(n_heads)}
        ),
    }


def arm_interventions(arm: str, roles: dict[str, list[str]]) -> tuple[Interventions, tuple]:
    kind, who, value = parse_arm(arm)
    if kind == "none":
        return Interventions(), ()
    targets = tuple(roles[who])
    if not targets:
        raise BranchError(f"arm {arm}: the seed has no {who} heads")
    spec = ",".join(targets)
    if kind == "scale":
        return Interventions(lr_scale={spec: float(value)}), targets
    if kind == "project":
        members, control = value
        if not roles[members]:
            raise BranchError(f"arm {arm}: the seed has no {members} heads")
        return (
            Interventions(project_out={spec: ",".join(roles[members])}, project_control=control),
            targets,
        )
    return Interventions(ablate={t: str(value) for t in targets}), targets


def plan(run, arms, leads, seeds=None) -> list[Unit]:
    """Every (formed seed, lead, arm) unit; seeds without formation are skipped (logged)."""
    for arm in arms:
        parse_arm(arm)
    chosen = formed_seeds(run) if seeds is None else list(seeds)
    units = []
    for seed in chosen:
        f = formation_of(run, "", seed)
        if not math.isfinite(f):
            log.warning("seed %d never formed: no branch before its formation", seed)
            continue
        roles = seed_roles(run, seed)
        for lead in leads:
            before = [s for s in run.steps_for(seed) if s <= f - lead]
            if not before or before[-1] == 0:
                log.warning("seed %d: no checkpoint %d steps before formation %g", seed, lead, f)
                continue
            for arm in arms:
                try:
                    iv, targets = arm_interventions(arm, roles)
                except BranchError as err:  # a seed without such heads has no such unit
                    log.warning("seed %d: %s; no branch", seed, err)
                    continue
                units.append(
                    Unit(seed, lead, arm, before[-1], f, iv, targets, tuple(roles["prev"]))
                )
    return units


def run_unit(run, unit: Unit, root: Path, steps: int, checkpoint_every: int, progress: bool):
    """Train (or finish training) the unit's branch and measure its induction rows; returns the
    branch. A folder left without a config by a crash in its preparation is made again."""
    from interp_ext.families import InductionSettings
    from interp_ext.measurement.runner import measure
    from interp_ext.training import train

    out = root / unit.name
    layout = Layout(out)
    if out.exists() and not layout.config.exists():
        shutil.rmtree(out)
    if not out.exists():
        made = branch(
            run,
            [unit.seed],
            unit.start,
            steps,
            out,
            unit.interventions,
            progress=progress,
            checkpoint_every=checkpoint_every,
        )
    else:
        made = open_run(out)
        if made.steps_for(unit.seed)[-1] < unit.start + steps:
            made = train(made.config, out, resume=True, progress=progress)
    measure(made, InductionSettings(), progress=False)
    return made


def unit_row(made, unit: Unit, steps: int) -> dict:
    """Formation (steps after the branch point; censored at ``steps``), the best induction score
    at the branch's end, the previous-token members' mean previous-token score at its start and
    end, and the best previous-token score among the other heads of their layer (a head that can
    take their place) at both."""
    rows = made.metrics("induction")
    rows = rows[(rows.seed == unit.seed) & (rows.step >= 0)]
    form = formation_of(made, "", unit.seed)
    end = rows.step.max()
    last = rows[rows.step == end]
    best = last[last.metric == "induction_score"].value.max()
    prev = last[(last.metric == "prev_token_score") & last.component.isin(unit.prev)].value
    first = rows[rows.step == rows.step.min()]
    prev0 = first[(first.metric == "prev_token_score") & first.component.isin(unit.prev)].value
    layers = {Head.parse(p).layer for p in unit.prev}

    def mates(c: str) -> bool:
        return Head.is_head(c) and c not in unit.prev and Head.parse(c).layer in layers

    def others(at):  # the best previous-token score among the partners' layer-mates
        sel = at[(at.metric == "prev_token_score") & at.component.map(mates)]
        return float(sel.value.max()) if len(sel) else math.nan

    return {
        "seed": unit.seed,
        "lead": unit.lead,
        "arm": unit.arm,
        "start": unit.start,
        "parent_formation": unit.formation,
        "formed": bool(math.isfinite(form)),
        "time": (form - unit.start) if math.isfinite(form) else float(steps),
        "best_induction_end": float(best),
        "targets": ",".join(unit.targets),
        "prev_token_start": float(prev0.mean()) if len(prev0) else math.nan,
        "prev_token_end": float(prev.mean()) if len(prev) else math.nan,
        "other_prev_token_start": others(first),
        "other_prev_token_end": others(last),
    }


def run_experiment(
    run,
    root: str | Path,
    arms=DEFAULT_ARMS,
    leads=(500,),
    steps: int = 1000,
    checkpoint_every: int = 50,
    seeds=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Every unit of :func:`plan`, resumable; writes ``root/arms.csv`` (returned),
    ``root/tests.csv`` (:func:`all_tests`) and the figure ``root/causal.png`` / ``.html``."""
    from tqdm.auto import tqdm

    root = Path(root)
    units = plan(run, arms, leads, seeds)
    out = []
    for unit in tqdm(units, desc="branches", unit="branch", disable=not progress):
        made = run_unit(run, unit, root, steps, checkpoint_every, progress=False)
        out.append(unit_row(made, unit, steps))
    out += earlier_rows(run, root, {u.name for u in units}, steps, checkpoint_every)
    table = pd.DataFrame(out)
    if len(table):
        table = table.sort_values(["seed", "lead", "arm"], kind="stable", ignore_index=True)
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "arms.csv", index=False)
    if len(table):
        all_tests(table).to_csv(root / "tests.csv", index=False)
        figure(table, root)
    return table


def earlier_rows(run, root: Path, planned: set[str], steps: int, checkpoint_every: int) -> list:
    """The rows of the folder's finished units that this call did not plan (arms or leads of
    earlier calls), when made with the same ``steps`` and ``checkpoint_every``; a unit made
    with others, or unfinished, is named and left out (its formation is not comparable). Each
    seed's units are planned once (its circuit and roles resolved once), not per folder."""
    from interp_ext.families import InductionSettings
    from interp_ext.measurement.runner import measure

    by_seed: dict[int, list[Path]] = {}
    for folder in sorted(root.glob("seed=*/lead=*/arm=*")):
        if str(folder.relative_to(root)) not in planned and Layout(folder).config.exists():
            by_seed.setdefault(int(folder.parts[-3].split("=", 1)[1]), []).append(folder)
    out = []
    for seed, folders in by_seed.items():
        arms = sorted({f.name.split("=", 1)[1] for f in folders})
        leads = sorted({int(f.parent.name.split("=", 1)[1]) for f in folders})
        units = {u.name: u for u in plan(run, arms, leads, [seed])}
        for folder in folders:
            name = str(folder.relative_to(root))
            unit = units.get(name)
            if unit is None:
                continue
            made, end = open_run(folder), unit.start + steps
            spacing = made.config.train.checkpoint_every
            if made.steps_for(seed)[-1] != end or spacing != min(checkpoint_every, end):
                log.warning(
                    "%s: not made with %d steps, a checkpoint every %d: left out",
                    name,
                    steps,
                    checkpoint_every,
                )
                continue
            measure(made, InductionSettings(), progress=False)
            out.append(unit_row(made, unit, steps))
    return out


def paired_tests(table: pd.DataFrame, reference: str = "none") -> pd.DataFrame:
    """Per (lead, arm): over the seeds with both units, how many formed later / earlier than
    their own ``reference`` branch (``stats.paired_order``: a censored branch is later than a
    formation before its end; two censored ones are unordered), the exact one-sided sign-test p
    of each direction over the ordered pairs with its floor given the ties (``floor``) and the
    design's (``floor_design``, every seed ordered); the exact signed-rank p of "later" on the
    differences (a censored time at its bound, a lower bound of the difference); on how many
    seeds the partner's previous-token score gained less over the branch than in the reference
    (``prev_gain_lower`` of ``prev_gain_n``, exact sign test); and the Kaplan-Meier medians of
    both (``stats.km_median``; "> t" when the curve never falls to 1/2)."""
    out = []
    for (lead, arm), g in table.groupby(["lead", "arm"], sort=False):
        if arm == reference:
            continue
        ref = table[(table.lead == lead) & (table.arm == reference)].set_index("seed")
        g = g[g.seed.isin(ref.index)]
        b = ref.loc[g.seed]
        a_cens, b_cens = ~g.formed.to_numpy(bool), ~b.formed.to_numpy(bool)
        later, known = paired_order(g.time, a_cens, b.time, b_cens)
        earlier, _ = paired_order(b.time, b_cens, g.time, a_cens)
        # magnitudes too: the exact signed-rank test of arm minus reference, a censored time at
        # its bound (the difference is then a lower bound: conservative for "later");
        # pairs both censored carry no difference
        both = a_cens & b_cens
        diff = (g.time.to_numpy() - b.time.to_numpy())[~both]
        p_rank, floor_rank = signed_rank_p(diff)
        gain = (g.prev_token_end - g.prev_token_start).to_numpy() - (
            b.prev_token_end - b.prev_token_start
        ).to_numpy()
        gain = gain[np.isfinite(gain) & (gain != 0)]
        lower = int((gain < 0).sum())
        km, km_above = km_median(g.time, a_cens)
        km_ref, ref_above = km_median(b.time, b_cens)
        out.append(
            {
                "lead": lead,
                "arm": arm,
                "seeds": len(g),
                "formed": int(g.formed.sum()),
                "reference_formed": int(b.formed.sum()),
                "later": later,
                "earlier": earlier,
                "ordered": known,
                "p_later": sign_test(later, known),
                "p_earlier": sign_test(earlier, known),
                "floor": sign_test_floor(known),
                "floor_design": sign_test_floor(len(g)),
                "p_later_signed_rank": p_rank,
                "floor_signed_rank": floor_rank,
                "prev_gain_lower": lower,
                "prev_gain_n": len(gain),
                "p_prev_gain_lower": sign_test(lower, len(gain)),
                "km_median": f"> {km:g}" if km_above else f"{km:g}",
                "km_median_reference": f"> {km_ref:g}" if ref_above else f"{km_ref:g}",
            }
        )
    return pd.DataFrame(out).assign(against=reference)


# each intervention beside the control that removes as much from outside the circuit
MATCHED = {
    "prev*0": "ctrl*0",
    "ablate:prev": "ablate:ctrl",
    "prevlayer*0": "ctrl*0",
    "ictrl*0": "ctrl*0",
    "ind*0": "ictrl*0",
    "proj:prev>ind": "projrand:prev>ind",
    "proj:ind>prev": "projrand:ind>prev",
}


def all_tests(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`paired_tests` of every arm against ``none``, then of each arm of :data:`MATCHED`
    against its matched control (column ``against``): an intervention and its control can each
    differ from ``none`` while only their difference is specific to the circuit."""
    frames = [paired_tests(table)]
    for arm, control in MATCHED.items():
        if {arm, control} <= set(table.arm):
            frames.append(paired_tests(table[table.arm.isin([arm, control])], reference=control))
    return pd.concat(frames, ignore_index=True)


def figure(table: pd.DataFrame, out: Path) -> list[str]:
    """``causal.png`` / ``.html``: per lead, formation (steps after the branch point; open
    markers censored at the branch's end) of each seed against its arm, the partner's
    learning-rate multiplier on the x axis for the ``prev*M`` arms (``none`` at 1), the other
    arms beside them; lines join a seed's arms; beside it the partner's previous-token score
    gained over each branch.

    Long because both panels share the arms' x positions and the seeds' colours."""
    from interp_ext.figures import PALETTE, Figure, Panel, Trace, save

    def position(arm: str) -> float:
        kind, who, value = parse_arm(arm)
        if kind == "none":
            return 1.0
        if kind == "scale" and who == "prev":
            return float(value)
        extra = [a for a in OTHER_ORDER if a in set(table.arm)]
        return 5.0 + extra.index(arm) if arm in extra else 5.0 + len(extra)

    panels = []
    for lead, g in table.groupby("lead"):
        traces = []
        for i, (seed, h) in enumerate(g.groupby("seed")):
            h = h.assign(x=h.arm.map(position)).sort_values("x")
            color = PALETTE[i % len(PALETTE)]
            dose = h[h.x <= 4]
            traces.append(
                Trace(dose.x, dose.time, f"seed {seed}", color, mode="markers", alpha=0.8)
            )
            for formed, tag in ((True, "formed"), (False, "censored")):
                pts = h[h.formed == formed]
                if len(pts):
                    traces.append(
                        Trace(
                            pts.x,
                            pts.time,
                            f"seed {seed} {tag}",
                            color,
                            mode="points",
                            legend=False,
                            alpha=1.0 if formed else 0.35,
                        )
                    )
        named = [f"{position(a):g} {a}" for a in OTHER_ORDER if a in set(g.arm)]
        rows = [", ".join(named[i : i + 4]) for i in range(0, len(named), 4)]
        labels = "\n".join(["x: the partner's lr multiplier (0-4); other arms at"] + rows)
        panels.append(
            Panel(
                f"formation, branched at least {lead} steps before it",
                traces,
                xlabel=labels,
                ylabel="formation, steps after the branch point",
            )
        )
        gains = []
        for i, (seed, h) in enumerate(g.groupby("seed")):
            h = h.assign(x=h.arm.map(position)).sort_values("x")
            gains.append(
                Trace(
                    h.x,
                    h.prev_token_end - h.prev_token_start,
                    f"seed {seed}",
                    PALETTE[i % len(PALETTE)],
                    mode="points",
                    legend=False,
                )
            )
        panels.append(
            Panel(
                "partner's previous-token score gained",
                gains,
                xlabel="arm (as above)",
                ylabel="score at end - at start",
                zero=True,
            )
        )
    return save(Figure("Formation under interventions, per seed", panels, ncols=2), out, "causal")


OTHER_ORDER = (
    "ind*0",
    "ictrl*0",
    "ctrl*0",
    "prevlayer*0",
    "ablate:prev",
    "ablate:ctrl",
    "proj:prev>ind",
    "projrand:prev>ind",
    "proj:ind>prev",
    "projrand:ind>prev",
)


__all__ = [
    "ABLATION_ARMS",
    "DEFAULT_ARMS",
    "DOSE_ARMS",
    "MATCHED",
    "Unit",
    "all_tests",
    "arm_interventions",
    "paired_tests",
    "parse_arm",
    "figure",
    "plan",
    "run_experiment",
]
