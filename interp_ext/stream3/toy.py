"""Every split of the exact Stream 3 ledger on a model with no circuit in it: the null of its signs.

A logistic regression (12 parameters, the first 4 called "the circuit" C) trained by AdamW on
minibatches, with E_C = (1/B) sum_b ||P_C g_b||^2 on 16 fixed probe batches: the setting of the
reference toy the ledger is checked against (the same data, batches and optimizer for a given
seed, so seed 0's trajectory is that toy's). Over a window of real steps it measures what the
``work`` family measures on a transformer, by the same definitions:

* the exact work of the real step on E_C (2-point Gauss-Legendre) and its remainder;
* drift and noise: the drift is the AdamW update built from a shadow first moment of the mean
  gradient of ``drift_batches`` fresh batches (carried from ``horizon`` steps before the window)
  with the real second moment; the noise is the rest;
* momentum carried in, this step's gradient, weight decay;
* K[C, C] in its exact form (the work of the circuit block's part of the drift, and of the real
  update), beside the same integrand along a random direction of the same norm on that block;
* the noise's and the drift's own curvature terms u^T Hess(E_C) u / 2 (central differences);

and replays the same window at lr / k with k steps per batch (1 - beta scaled by 1 / k, the
bias-correction count by k, the shadow's M fresh batches of a real step shared out over its k
sub-steps), reporting sums per unit of lr x steps, as ``Replay(scale=k)`` does.

Each real step's k sub-steps are summed into one row per term by the ``work`` family's own
:func:`~interp_ext.stream3.line_integrals.sum_substeps`; :func:`family_sums` then samples and sums those
rows by the family's own rule (:func:`~interp_ext.families.work.sampled`,
:func:`~interp_ext.families.work.window_sums`), so the family's sums can be checked against the
toy's every-sub-step totals at any ``every`` and scale.

Nothing here forms, so any sign that holds on every toy seed is what the construction and plain
AdamW give, not evidence of a self-reinforcing circuit. Run: ``python -m interp_ext.stream3.toy``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from interp_ext.adamw import (
    denominator,
    moment,
    scaled_betas,
    second_moment,
    step_size,
    stepped,
)
from interp_ext.adamw import (
    parts as update_parts,
)

WINDOW = (500, 1000)  # steps 500-999: the loss still falling, AdamW's v settled
GL2 = (0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3))
TERMS = (
    "dE",
    "work",
    "work_remainder",
    "work/drift",
    "work/noise",
    "work/inherited",
    "work/fresh",
    "work/decay",
    "K_CC/drift",
    "K_CC/drift_random",
    "K_CC/real",
    "curv_drift",
    "curv_noise",
)
# each toy term as the ``work`` family names it: (metric, component)
FAMILY_NAMES = {
    "dE": ("dE", "C"),
    "work": ("work", "C"),
    "work_remainder": ("work_remainder", "C"),
    **{f"work/{p}": (f"work/{p}", "C") for p in ("drift", "noise", "inherited", "fresh", "decay")},
    "K_CC/drift": ("work_drift_by", "C|C"),
    "K_CC/drift_random": ("work_drift_by_random", "C|C"),
    "K_CC/real": ("work_by", "C|C"),
    "curv_drift": ("curv_drift", "C"),
    "curv_noise": ("curv_noise", "C"),
}


class Toy:
    """The reference toy's data and loss (numpy); ``seed`` 0 is the reference's own draw."""

    def __init__(self, seed: int = 0, d: int = 12, n: int = 4000):
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(n, d)) * np.linspace(3, 0.3, d)  # sharp and flat directions
        w_true = rng.normal(size=d)
        self.y = np.where(rng.random(n) < 1 / (1 + np.exp(-self.X @ w_true)), 1.0, -1.0)
        self.probe = [rng.choice(n, 16, replace=False) for _ in range(16)]
        self.C = np.zeros(d, bool)
        self.C[:4] = True
        self.rng = rng  # the training batches continue this stream, as in the reference
        self.d, self.n = d, n

    def grad(self, w, idx):
        z = self.y[idx] * (self.X[idx] @ w)
        s = -self.y[idx] / (1 + np.exp(z))
        return self.X[idx].T @ s / len(idx)

    def hess_vec(self, w, idx, v):
        z = self.y[idx] * (self.X[idx] @ w)
        p = 1 / (1 + np.exp(-z))
        return self.X[idx].T @ (p * (1 - p) * (self.X[idx] @ v)) / len(idx)

    def energy(self, w):
        return float(np.mean([np.sum(self.grad(w, b)[self.C] ** 2) for b in self.probe]))

    def grad_energy(self, w):
        out = np.zeros(self.d)
        for b in self.probe:
            out += 2 * self.hess_vec(w, b, np.where(self.C, self.grad(w, b), 0.0))
        return out / len(self.probe)


def run_toy(
    seed: int = 0,
    steps: int = 3000,
    window: tuple[int, int] = (500, 1500),
    scale: int = 1,
    drift_batches: int = 16,
    horizon: int = 67,
    lr: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    batch: int = 32,
) -> dict[str, float]:
    """Sums of every term over the window's real steps [start, end) (every sub-step measured),
    per unit of lr x steps too (``<term>/per_lr_step``); at ``scale`` k the window is replayed at
    lr / k with k steps per batch from the real state at ``start - horizon``. ``rows`` holds one
    row per real step and term, its k sub-steps summed as the ``work`` family sums them."""
    rows = toy_rows(
        seed, steps, window, scale, drift_batches, horizon, lr, betas, weight_decay, batch
    )
    start, end = window
    out = {}
    for term, (metric, component) in FAMILY_NAMES.items():
        sel = rows[(rows.metric == metric) & (rows.component == component)]
        out[term] = float(sel.value.sum())
        out[f"{term}/per_lr_step"] = out[term] / (lr * (end - start))
    out["rows"] = rows
    return out


def family_sums(
    rows: pd.DataFrame,
    window: tuple[int, int],
    every: int,
    detail_every: int | None = None,
    lr: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """The toy's rows sampled and summed by the ``work`` family's own code: the real steps it
    measures at ``every`` (detail terms at ``detail_every``), then its window sums. Per toy term:
    (sum per unit of lr x steps, its standard error)."""
    from interp_ext.families.work import WorkSettings, sampled, window_sums

    start, end = window
    detail_every = detail_every or every
    settings = WorkSettings(every=every, detail_every=detail_every)
    plan = {"replay_from": start, "start": start, "end": end, "formation": math.nan, "null": False}
    keep = np.array([sampled(int(s), plan, every) for s in rows.step])
    detail = ((rows.step - start) % detail_every == 0).to_numpy()
    is_detail = rows.metric.isin(["work_drift_by_random", "curv_drift", "curv_noise"]).to_numpy()
    sums = window_sums(rows[keep & (detail | ~is_detail)], plan, lr, settings)
    sums = sums.set_index(["metric", "component"]).value
    out = {}
    for term, (metric, component) in FAMILY_NAMES.items():
        where = f"{component}@window"
        scale = 1 / (lr * (end - start))
        out[term] = (
            sums[(f"{metric}/sum", where)] * scale,
            sums[(f"{metric}/sum_se", where)] * scale,
        )
    return out


def toy_rows(
    seed: int = 0,
    steps: int = 3000,
    window: tuple[int, int] = (500, 1500),
    scale: int = 1,
    drift_batches: int = 16,
    horizon: int = 67,
    lr: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    batch: int = 32,
) -> pd.DataFrame:
    """One row per real step of the window and term (``step``, ``metric``, ``component``,
    ``value``, named as the ``work`` family names them), its k sub-steps summed by the family's
    :func:`~interp_ext.stream3.line_integrals.sum_substeps`.

    Long because it is the toy's one loop: train, switch to the replay, carry the shadow, measure.
    """
    from interp_ext.stream3.line_integrals import sum_substeps

    if drift_batches % scale:
        raise ValueError(f"drift_batches={drift_batches} must be a multiple of scale={scale}")
    toy = Toy(seed)
    start, end = window
    b1, b2 = betas
    w, m, v = np.zeros(toy.d), np.zeros(toy.d), np.zeros(toy.d)
    batches = [toy.rng.choice(toy.n, batch, replace=False) for _ in range(min(steps, end))]
    fresh = np.random.default_rng(10_000 + seed)  # the shadow's batches: a stream of their own
    shadow_from = max(1, start - horizon)
    rows: list[dict] = []
    noise_rng = np.random.default_rng(20_000 + seed)
    k, t = 1, 0
    for real in range(1, end):
        if real == shadow_from:  # from here on: the shadow moment, and the scaled replay
            m_bar = m.copy()
            k = scale
            lr_k, (b1_k, b2_k) = lr / k, scaled_betas((b1, b2), k)
            t = k * t
        substeps = []
        # the null's direction: one per real step, scaled at each sub-step to that sub-step's norm
        draw = noise_rng.normal(size=toy.d) * toy.C if start <= real < end else None
        for _ in range(k):
            t += 1
            idx = batches[real - 1]
            g = toy.grad(w, idx)
            cur_lr, cur_b1, cur_b2 = (lr, b1, b2) if real < shadow_from else (lr_k, b1_k, b2_k)
            m_old = m.copy()
            m, v = moment(m, g, cur_b1), second_moment(v, g, cur_b2)
            sc = step_size(v, t, cur_lr, (cur_b1, cur_b2))
            inherited, fresh_part, decay = update_parts(
                w, m_old, g, v, t, cur_lr, (cur_b1, cur_b2), weight_decay
            )
            step = inherited + fresh_part + decay
            if real >= shadow_from:
                g_bar = np.mean(
                    [
                        toy.grad(w, fresh.choice(toy.n, batch, replace=False))
                        for _ in range(drift_batches // k)  # M per real step, M / k per sub-step
                    ],
                    axis=0,
                )
                m_bar = moment(m_bar, g_bar, cur_b1)
            if start <= real < end:
                drift = -sc * m_bar + decay
                noise = step - drift
                integrand = 0.5 * sum(toy.grad_energy(w + s * step) for s in GL2)
                e0, e1 = toy.energy(w), toy.energy(w + step)
                block = np.where(toy.C, drift, 0.0)
                rand = draw * np.linalg.norm(block) / max(np.linalg.norm(draw), 1e-300)

                def curv(u, w=w, e0=e0):
                    return (toy.energy(w + u) + toy.energy(w - u) - 2 * e0) / 2

                parts = {
                    "dE": e1 - e0,
                    "work": integrand @ step,
                    "work/drift": integrand @ drift,
                    "work/noise": integrand @ noise,
                    "work/inherited": integrand @ inherited,
                    "work/fresh": integrand @ fresh_part,
                    "work/decay": integrand @ decay,
                    "K_CC/drift": integrand @ block,
                    "K_CC/drift_random": integrand @ rand,
                    "K_CC/real": integrand @ np.where(toy.C, step, 0.0),
                    "curv_drift": curv(drift),
                    "curv_noise": curv(noise),
                }
                parts["work_remainder"] = parts["dE"] - parts["work"]
                substeps.append(
                    [
                        {"metric": m, "component": c, "value": float(parts[term])}
                        for term, (m, c) in FAMILY_NAMES.items()
                    ]
                )
            w = w + step
        if substeps:
            rows += [{**r, "step": real} for r in sum_substeps(substeps)]
    return pd.DataFrame(rows, columns=["step", "metric", "component", "value"])


def sign_table(seeds: int = 8, scales: tuple[int, ...] = (1, 2, 4), **kwargs) -> dict:
    """Per scale and term: per-seed sums per unit of lr x steps, and how many seeds are positive."""
    table = {}
    for k in scales:
        per = [run_toy(seed=s, scale=k, **kwargs) for s in range(seeds)]
        for term in TERMS:
            values = [p[f"{term}/per_lr_step"] for p in per]
            table[(k, term)] = {"values": values, "positive": sum(x > 0 for x in values)}
    return table


# the toy's "members": the circuit's first and second pair of coordinates, and two pairs outside
# it as their controls
TOY_SETS = {"A": [0, 1], "B": [2, 3], "ctrl(A)": [4, 5], "ctrl(B)": [6, 7]}


def toy_members(
    seed: int = 0,
    steps: int = 2000,
    every: int = 250,
    lr: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    batch: int = 32,
    fresh: int = 16,
    groups: int = 4,
) -> pd.DataFrame:
    """The member matrix (:mod:`interp_ext.stream3.reinforcement`, the ``members`` family's own code) on
    the toy with no circuit: at every ``every``-th step of its AdamW run, R^S, R^N and R^E among
    two "members" (the circuit's coordinate pairs A, B) and their controls (pairs outside it),
    u the expected step per unit of lr x steps from AdamW's v there and ``fresh`` fresh batches.
    Rows ``step``, ``part``, ``A``, ``B``, ``value``, ``se``. Whatever sign the cross entries
    take here, a model with no circuit gives it.

    Long because it is the toy's own AdamW loop with the member matrix at its checkpoints.
    """
    import torch

    from interp_ext.stream3.energy import EnergyProbe
    from interp_ext.stream3.reinforcement import flow_direction, grouped_rates

    toy = Toy(seed)
    x, y = torch.tensor(toy.X), torch.tensor(toy.y)

    def loss_fn(params, idx):
        z = y[idx] * (x[idx] @ params["w"])
        return torch.nn.functional.softplus(-z).mean()

    b1, b2 = betas
    w, m, v = np.zeros(toy.d), np.zeros(toy.d), np.zeros(toy.d)
    rng = np.random.default_rng(30_000 + seed)
    masks = {}
    for name, coords in TOY_SETS.items():
        mask = torch.zeros(toy.d, dtype=torch.bool)
        mask[coords] = True
        masks[name] = mask
    probe = torch.tensor(np.stack(toy.probe))
    frames = []
    for t in range(1, steps + 1):
        g = toy.grad(w, toy.rng.choice(toy.n, batch, replace=False))
        m, v = moment(m, g, b1), second_moment(v, g, b2)
        w = stepped(w, m, v, t, lr, (b1, b2), weight_decay)
        if t % every:
            continue
        d = torch.tensor(denominator(v, t, b2))
        theta = {"w": torch.tensor(w)}

        def u_of(i, theta=theta, d=d, per=fresh // groups):
            batches = [rng.choice(toy.n, batch, replace=False) for _ in range(per)]
            gbar = np.mean([toy.grad(theta["w"].numpy(), b) for b in batches], axis=0)
            return flow_direction(torch.tensor(gbar), d, theta["w"], weight_decay)

        frame = grouped_rates(
            lambda sub, theta=theta: EnergyProbe(loss_fn, theta, sub, chunk=16),
            probe,
            u_of,
            masks,
            groups=groups,
            unions={"C": ["A", "B"]},
        )
        frames.append(frame.assign(step=t))
    return pd.concat(frames, ignore_index=True)


def member_sign_table(seeds: int = 8, **kwargs) -> pd.DataFrame:
    """Per seed, the toy's cross entries R^S[A, B] and R^S[B, A] and their controls' averaged
    over its checkpoints."""
    rows = []
    for s in range(seeds):
        f = toy_members(s, **kwargs)
        f = f[f.part == "S"]
        for a, b in (("A", "B"), ("B", "A"), ("A", "ctrl(B)"), ("B", "ctrl(A)"), ("C", "C")):
            rows.append(
                {
                    "seed": s,
                    "entry": f"R[{a}, {b}]",
                    "value": f[(f.A == a) & (f.B == b)].value.mean(),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument(
        "--members", action="store_true", help="The member matrix's cross entries instead."
    )
    args = parser.parse_args()
    if args.members:
        table = member_sign_table(args.seeds)
        print(
            f"toy with no circuit, {args.seeds} seeds: R^S per unit of lr x steps, mean over checkpoints"
        )
        for entry, g in table.groupby("entry", sort=False):
            values = ", ".join(f"{v:+.3g}" for v in g.value)
            print(f"{entry:<14} {values}   ({int((g.value > 0).sum())} of {len(g)} > 0)")
        return
    table = sign_table(args.seeds, window=WINDOW)
    print(f"toy with no circuit, {args.seeds} seeds, window {WINDOW}; sums per unit of lr x steps")
    print(f"{'term':<20}" + "".join(f"{'lr / ' + str(k):>26}" for k in (1, 2, 4)))
    for term in TERMS:
        cells = ""
        for k in (1, 2, 4):
            entry = table[(k, term)]
            mean = float(np.mean(entry["values"]))
            cells += f"{mean:>+14.4g} ({entry['positive']} of {args.seeds} > 0)"
        print(f"{term:<20}{cells}")


if __name__ == "__main__":
    main()
