"""``members``: Stream 3 by member at checkpoints: the signal and the noise in each set's gradient
energy, and the member matrix of flow rates (who reinforces whom).

For every seed and checkpoint after the first step (AdamW has a denominator there):

* ``S``, ``N``, ``E`` of every set (each circuit member, its layer-matched control head, the
  circuit ``C``, the controls' union ``CTRL``, ``rest``): E_A = S_A + N_A, S_A the unbiased
  energy of the mean gradient (U-statistic over distinct pairs of probe batches), N_A the
  unbiased variance of one probe batch's gradient on A
  (:mod:`interp_ext.stream3.reinforcement`), at each probe batch size (``probe``: sequences per
  batch; N_A falls like 1 / size for independent sequences, S_A does not);
* ``R_S``, ``R_N``, ``R_E`` with component ``A|B``: R^X[A, B] = grad_{theta_B} X_A . u_B, u the
  expected AdamW step per unit of lr x steps, -(gbar / D + wd theta), D from the checkpoint's
  second moment, gbar from fresh training batches independent of the probe batches; A and B over
  the members, their controls, ``C`` and ``CTRL``. The diagonal of the members' block is each
  member's self term, the off-diagonal entries reinforcement between members;
* each with ``/se``: the standard error of the mean over ``groups`` independent groups (each
  group its own probe and fresh batches);
* the saddle signature (:mod:`interp_ext.stream3.saddle`, ``modes`` > 0) on the probe sequences'
  mean loss (its first ``saddle_sequences``): ``rho`` = gbar_A^T H_AA D_A^-1 gbar_A / (gbar_A^T D_A^-1 gbar_A) for the circuit and
  each member (negative exactly when the block's own flow raises its mean-gradient energy), its
  numerator ``flow_curvature`` and denominator ``flow_rate``, gbar from the two halves of the
  fresh batches; the circuit block's lowest eigenvalues of D^-1/2 H_CC D^-1/2
  (``soft_eigenvalue``, component ``C#i``) and the flow's share in each (``soft_overlap``);
  ``saddle_hvps``, the Hessian-vector products it spent.

Every row carries ``weights``: ``raw`` (the checkpoint's) or ``polyakW``, the slow weights, the
mean of the real trajectory's weights over the W steps up to the checkpoint, replayed bit for
bit from the checkpoint before (``interp_ext.measurement.windows.polyak_average``): the mean gradient at a
noisy point carries the restoring force of its current noise displacement, which the average
removes. D is the checkpoint's at every weights.

With ``window``, the same rows also at the real steps between checkpoints, every
``window_every`` steps through each formed seed's window, replayed bit for bit from the
window's first checkpoint (the replay must reproduce the checkpoint at its end): raw weights,
each point with the AdamW denominator after its own step and the probe sequences and fresh
batches a checkpoint there would use. Polyak weights are not measured between checkpoints.

The probe sequences are fresh draws of the seed's training distribution at the checkpoint's data
position (the same sequences for every batch size), not the run's probe set, so that both batch
sizes see the same data. Rows at step -1: ``member`` (the circuit's components, with their role)
and ``control`` (``<member>|<control head>``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
import torch

from circuits.circuit import Circuit
from interp_ext.adamw import denominators
from interp_ext.data import FRESH_DRAWS, PROBE_DRAWS
from interp_ext.measurement.replays import check_replay
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    resolved_if_set,
    setting,
)
from interp_ext.measurement.selection import (
    member_controls,
    resolve_circuit,
    seed_circuit,
    source_inputs,
)
from interp_ext.measurement.shared_settings import CircuitSource
from interp_ext.measurement.windows import replayed_rows, settings_window, window_problem
from interp_ext.stream3.reinforcement import member_matrix


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"8,32"`` -> (8, 32); raises ValueError on anything but positive integers."""
    sizes = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    if not sizes or min(sizes) < 1:
        raise ValueError(text)
    return sizes


@dataclass(frozen=True)
class MembersSettings(CircuitSource):
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
    matrix: bool = setting(
        True,
        "The flow rates R (the member matrix); False: S, N and E of every set alone, at the cost "
        "of the probe batches' gradients (dense series, the growth law).",
    )
    weights: str = setting(
        "raw",
        "Where to measure, comma-separated: 'raw' (the checkpoint's weights) and/or polyakW (the "
        "slow weights: the mean of the real weights over the W steps up to the checkpoint, "
        "replayed bit for bit), e.g. raw,polyak50,polyak200.",
    )
    saddle_sequences: int = setting(
        64, "Probe sequences (the first ones) whose mean loss's Hessian the saddle signature uses."
    )
    modes: int = setting(
        3,
        "Lowest eigenvalues of the circuit block's preconditioned Hessian D^-1/2 H_CC D^-1/2 (and "
        "the flow's overlap with each); 0: no saddle signature.",
    )
    near: str = setting(
        "all",
        "Checkpoints: 'all'; 'phases': those the decision of results 3.6 reads, [f - 750, "
        "f + 250] around each seed's formation f (a never-formed seed's own steepest rise); "
        "'before': its deciding phase alone, [f - 750, f - 250].",
        key=False,
    )
    window: str = setting(
        "",
        "Also the real steps between checkpoints, replayed bit for bit (raw weights): 'auto' (each "
        "formed seed's formation window), START:END, or '' (checkpoints only).",
        key="if_set",
    )
    window_every: int = setting(
        50, "Real steps between measurements inside the window.", key="if_set"
    )
    margin: int = setting(
        500, "Auto window: steps before and after the formation step.", key="if_set"
    )
    formation: str = resolved_if_set(
        "Settings id of the induction rows giving each seed's formation step (resolved)."
    )
    chunk: int | None = setting(
        None,
        "Probe batches per vmap (default: 32 sequences up to a 4,096-token vocabulary, else 1); speed only.",
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
        self.require(self.window_every >= 1, "window_every", "must be >= 1")
        self.require(self.margin >= 0, "margin", "must be >= 0")
        if self.window:
            problem = window_problem(self.window)
            self.require(problem is None, "window", str(problem))
        for size in sizes:
            self.require(
                self.sequences % size == 0 and self.sequences // size >= 2 * self.groups,
                "sequences",
                f"must be a multiple of each probe size ({size}) giving at least 2 batches per "
                f"group ({2 * self.groups * size} sequences at size {size}, {self.groups} groups)",
            )
        self.require(self.fresh >= self.groups, "fresh", f"needs one per group ({self.groups})")
        self.require(
            self.fresh >= 2, "fresh", "needs at least 2 (two halves for the saddle signature)"
        )
        self.require(self.modes >= 0, "modes", "must be >= 0")
        self.require(
            self.near in ("all", "phases", "before"), "near", "choose all, phases or before"
        )
        smallest = min(sizes)
        self.require(
            1 <= self.saddle_sequences <= self.sequences and self.saddle_sequences % smallest == 0,
            "saddle_sequences",
            f"must be between 1 and sequences={self.sequences} and a multiple of the smallest probe size",
        )
        try:
            parse_weights(self.weights)
        except ValueError:
            self.require(False, "weights", "choose raw and/or polyakW (W >= 1), e.g. raw,polyak50")


def parse_weights(text: str) -> dict[str, int]:
    """``"raw,polyak50"`` -> {"raw": 0, "polyak50": 50}: each weights' Polyak width (0: raw)."""
    out = {}
    for part in str(text).replace(" ", "").split(","):
        if part == "raw":
            out[part] = 0
        elif part.startswith("polyak") and part[6:].isdigit() and int(part[6:]) >= 1:
            out[part] = int(part[6:])
        elif part:
            raise ValueError(part)
    if not out:
        raise ValueError(text)
    return out


class Members(Family):
    name = "members"
    requires = ("circuit", "induction")
    report_order = 96
    settings = MembersSettings
    columns = ("probe", "weights")
    between_checkpoints = True

    def prepare(self, run, settings: MembersSettings) -> MembersSettings:
        if settings.window:
            formation = check_replay(run, "members", settings.window)
            settings = replace(settings, formation=settings.formation or formation)
        return replace(settings, **resolve_circuit(run, settings.circuit, settings.source))

    def seed_steps(self, run, settings: MembersSettings, seed: int, steps: list[int]) -> list[int]:
        """Checkpoints after the first step (AdamW has a denominator there) with room before them
        for the widest Polyak average; with ``near="phases"`` only the decision's phases, with
        ``near="before"`` its deciding phase."""
        from interp_ext.families.members.decision import PHASES, seed_formation

        width = max(parse_weights(settings.weights).values())
        first = run.steps_for(seed)[0]
        steps = [s for s in steps if s > 0 and s - width + 1 >= first]
        if settings.near != "all":
            f, _ = seed_formation(run, seed)
            last = "rise" if settings.near == "phases" else "before"
            lo, hi = PHASES["before"][0], PHASES[last][1]
            steps = [s for s in steps if math.isfinite(f) and f + lo <= s <= f + hi]
        window = settings_window(run, settings, seed)
        return sorted(set(steps) | ({window[0]} if window else set()))

    def start_seed(self, run, settings: MembersSettings, seed: int) -> dict:
        circuit = seed_circuit(run, seed, settings.circuit, settings.source)
        controls = member_controls(run, seed, circuit) if settings.controls else {}
        return {
            "circuit": circuit,
            "controls": controls,
            "window": settings_window(run, settings, seed),
        }

    def checkpoint(self, ctx: Checkpoint, settings: MembersSettings, state: dict) -> pd.DataFrame:
        rows = checkpoint_rows(ctx, settings, state["circuit"], state["controls"])
        window = state["window"]
        if not window or ctx.step != window[0]:
            return rows
        between = window_rows(
            ctx.run, ctx.seed, window, settings, state["circuit"], state["controls"]
        )
        return pd.concat([rows, between], ignore_index=True)

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
        out = [{**r, "weights": ""} for r in out]
        return pd.DataFrame([{**r, "step": -1} for r in out])

    def inputs(self, run, settings: MembersSettings) -> list:
        return source_inputs(settings.circuit, settings.source)

    def describe(self, rows: pd.DataFrame) -> list[str]:
        return describe_members(rows)

    def report(self, page) -> list[str]:
        from interp_ext.families.members.report import section

        return section(page)


def probe_sequences(run, seed: int, step: int, sequences: int, first: int) -> torch.Tensor:
    """``sequences`` fresh training sequences at ``step``'s data position: [sequences, pos]."""
    size = run.config.train.batch_size
    draws = [run.batch(seed, step, draw=first + j) for j in range(math.ceil(sequences / size))]
    return torch.cat(draws)[:sequences]


def checkpoint_rows(
    ctx: Checkpoint, settings: MembersSettings, circuit: Circuit, controls: dict[str, str]
) -> pd.DataFrame:
    """Every row of one seed at one checkpoint (see the module docstring), at each weights."""
    run = ctx.run
    ckpt = run.checkpoint(ctx.seed, ctx.step)
    train = run.config.train
    denominator = denominators(ckpt["exp_avg_sq"], float(ckpt["adam_step"]), train.betas[1])
    seqs, fresh = point_data(run, ctx.seed, ctx.step, settings)
    frames = []
    for label, width in parse_weights(settings.weights).items():
        model = ctx.model if not width else slow_model(run, ctx.seed, ctx.step, width)
        rows = point_rows(
            model, settings, circuit, controls, denominator, train.weight_decay, seqs, fresh
        )
        frames.append(rows.assign(weights=label))
    return pd.concat(frames, ignore_index=True)


def window_rows(
    run, seed: int, window, settings: MembersSettings, circuit, controls
) -> pd.DataFrame:
    """Every ``window_every`` real steps between checkpoints through the window, replayed bit for
    bit (:func:`interp_ext.measurement.windows.replayed_rows`): raw weights, each point with the
    AdamW denominator after its own step and the probe sequences and fresh batches a checkpoint
    at that step would use."""
    train = run.config.train

    def measure(model, step, at):
        denominator = denominators(step.new_exp_avg_sq, step.count + 1, train.betas[1])
        seqs, fresh = point_data(run, seed, at, settings)
        rows = point_rows(
            model, settings, circuit, controls, denominator, train.weight_decay, seqs, fresh
        )
        return rows.assign(weights="raw")

    return replayed_rows(run, seed, window, settings.window_every, measure)


def point_data(run, seed: int, step: int, settings: MembersSettings):
    """(probe sequences, fresh batches) at ``step``'s data position."""
    seqs = probe_sequences(run, seed, step, settings.sequences, PROBE_DRAWS)
    fresh = torch.stack(
        [run.batch(seed, step, draw=FRESH_DRAWS + j) for j in range(settings.fresh)]
    )
    return seqs, fresh


def slow_model(run, seed: int, step: int, width: int):
    """The seed's model at ``step`` carrying the Polyak-averaged weights over ``width`` steps."""
    from interp_ext.measurement.windows import polyak_average

    model = run.model(seed, step)
    slow = polyak_average(run, seed, step, width)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(slow[n].to(p.dtype))
    return model


def point_rows(model, settings, circuit, controls, denominator, wd, seqs, fresh) -> pd.DataFrame:
    """S, N, E and the member matrix at each probe size, and the saddle signature, at the
    model's current weights."""
    sets = {c: [c] for c in circuit.components} | {c: [c] for c in controls.values()}
    unions = {"C": list(circuit.components)}
    if controls:
        unions["CTRL"] = list(controls.values())
    levels = {"rest": circuit.with_rest().flat_masks(model)["rest"]}
    out = []
    for size in parse_sizes(settings.probe_sizes):
        batches = seqs.reshape(-1, size, seqs.shape[-1])
        chunk = settings.chunk or default_chunk(model, size)
        frame = member_matrix(
            model,
            batches,
            fresh,
            sets,
            denominator,
            wd,
            settings.groups,
            unions,
            levels,
            chunk,
            matrix=settings.matrix,
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
    if settings.modes:
        size = min(parse_sizes(settings.probe_sizes))
        chunk = settings.chunk or default_chunk(model, size)
        out += saddle_rows(model, settings, circuit, denominator, seqs, fresh, chunk)
    return pd.DataFrame(out)


def default_chunk(model, size: int) -> int:
    """Probe batches per vmap: 32 sequences at a time up to a 4,096-token vocabulary, one batch
    at a time above it (the tangents of every set ride along, so memory grows with both)."""
    return max(1, 32 // size) if model.cfg.d_vocab <= 4096 else 1


def saddle_rows(model, settings, circuit, denominator, seqs, fresh, chunk) -> list[dict]:
    """The saddle signature (:mod:`interp_ext.stream3.saddle`) on the probe sequences' mean loss:
    rho, its numerator and denominator for the circuit and each member (gbar from the two halves
    of the fresh batches), and the circuit block's ``modes`` softest modes with the flow's
    overlap; ``saddle_hvps`` counts the Hessian-vector products spent."""
    from interp_ext.geometry.curvature import model_hessian
    from interp_ext.geometry.gradients import current_params, flatten, loss_function
    from interp_ext.stream3.reinforcement import set_masks
    from interp_ext.stream3.saddle import flow_curvature, soft_modes

    names = [n for n, p in model.named_parameters() if p.requires_grad]  # as the masks are
    theta = current_params(model, names)
    loss_fn = loss_function(model, names)
    device = next(iter(theta.values())).device
    size = min(parse_sizes(settings.probe_sizes))
    head = seqs[: settings.saddle_sequences]
    hess = model_hessian(model, head.reshape(-1, size, seqs.shape[-1]), names, chunk)
    half = fresh.shape[0] // 2

    def mean_grad(part):
        grads = [flatten(torch.func.grad(loss_fn)(theta, b.to(device)), names) for b in part]
        return torch.stack(grads).double().mean(0)

    gbar_a, gbar_b = mean_grad(fresh[:half]), mean_grad(fresh[half:])
    inv_d = 1 / flatten({n: denominator[n].to(device) for n in names}, names).double()
    masks = set_masks(model, {"C": list(circuit.components)} | {c: [c] for c in circuit.components})
    out = []
    for a, mask in masks.items():
        for metric, value in flow_curvature(hess, mask, inv_d, gbar_a, gbar_b).items():
            out.append({"metric": metric, "component": a, "value": value})
    modes = soft_modes(hess, masks["C"], inv_d, (gbar_a + gbar_b) / 2, k=settings.modes)
    for i, (value, overlap) in enumerate(zip(modes["eigenvalues"], modes["overlap"])):
        out.append({"metric": "soft_eigenvalue", "component": f"C#{i}", "value": float(value)})
        out.append({"metric": "soft_overlap", "component": f"C#{i}", "value": float(overlap)})
    out.append({"metric": "saddle_hvps", "component": "C", "value": float(hess.calls)})
    return [{**r, "probe": ""} for r in out]


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


__all__ = ["Members", "MembersSettings"]
