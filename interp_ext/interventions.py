"""Interventions on training: the parts of a branch (``interp_ext.branch``) that the trainer applies.

* ``lr_scale``: {component set: multiplier}. The AdamW update of the components' parameters (its
  weight-decay part included) is multiplied: theta <- theta_before + s (theta_adamw -
  theta_before) on their coordinates (0 freezes them). ``moments="run"``: AdamW's moments of
  those coordinates keep running on their gradients; ``"freeze"``: they are held at their
  values at each step's start too.
* ``ablate``: {component: "mean" | "zero"}: a head's output (``hook_z``) or an MLP's
  (``hook_mlp_out``) replaced in every training forward pass by its mean over the batch's
  sequences (per position) or by zero.
* ``project_out``: {block B: member set A}. At every step, the part of B's AdamW update that
  raises A's signal energy S_A is removed: d = grad_B S_A at the step's start, S_A = g1_A . g2_A
  the unbiased estimate of ||gbar_A||^2 from the two halves of the step's own batch (its
  expectation over batches is the mean gradient's energy; members family), and the update
  Delta_B <- Delta_B - max(0, Delta_B . d^) d^ (the component along d^ where it raises S_A;
  nothing where it lowers it). ``project_control="random"``: a vector of the same norm max(0,
  Delta_B . d^) is subtracted along a random unit direction of B instead (drawn per seed and
  step): an equal-norm perturbation that changes the update by as much without aiming at S_A.
  Moments run on; each step's amount and the update's norm on B are written to
  ``projection.csv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from circuits.circuit import Circuit, Head
from interp_ext import diskio
from interp_ext.errors import InterpExtError
from interp_ext.run.layout import Layout

ABLATIONS = ("mean", "zero")
MOMENTS = ("run", "freeze")
PROJECTIONS = ("signal", "random")


class BranchError(InterpExtError):
    """A branch that cannot be made: its one line names the bad value and the fix."""


@dataclass
class Interventions:
    lr_scale: dict[str, float] = field(default_factory=dict)
    moments: str = "run"
    ablate: dict[str, str] = field(default_factory=dict)
    project_out: dict[str, str] = field(default_factory=dict)
    project_control: str = "signal"

    def to_dict(self) -> dict:
        return {
            "lr_scale": dict(self.lr_scale),
            "moments": self.moments,
            "ablate": dict(self.ablate),
            "project_out": dict(self.project_out),
            "project_control": self.project_control,
        }

    @classmethod
    def from_dict(cls, payload: dict) -> Interventions:
        return cls(
            dict(payload.get("lr_scale", {})),
            payload.get("moments", "run"),
            dict(payload.get("ablate", {})),
            dict(payload.get("project_out", {})),
            payload.get("project_control", "signal"),
        )

    def __bool__(self) -> bool:
        return bool(self.lr_scale or self.ablate or self.project_out)


def ablation_hooks(iv: Interventions) -> list[tuple[str, object]]:
    """(hook name, hook function) for every ablated component."""
    hooks = []
    for spec, mode in iv.ablate.items():
        for comp in spec.split(","):
            if Head.is_head(comp):
                head = Head.parse(comp)
                name, index = f"blocks.{head.layer}.attn.hook_z", head.head
            else:
                name, index = f"blocks.{int(comp[1:].removesuffix('MLP'))}.hook_mlp_out", None
            hooks.append((name, _ablate_fn(mode, index)))
    return hooks


def _ablate_fn(mode: str, head: int | None):
    def hook(act, hook):  # noqa: ARG001 - TransformerLens passes the hook point
        part = act[:, :, head] if head is not None else act
        value = (
            part.mean(0, keepdim=True).expand_as(part) if mode == "mean" else torch.zeros_like(part)
        )
        if head is None:
            return value
        out = act.clone()
        out[:, :, head] = value
        return out

    return hook


def scaled_masks(iv: Interventions, model) -> list[tuple[str, tuple, float]]:
    """(parameter name, index into it, multiplier) for every component of a set whose multiplier
    is not 1 (a multiplier of 1 is no intervention, and is not applied, so it stays bit for bit);
    an index is a head's slice or a whole tensor (``Circuit.indices``), so the update is scaled
    on views, without a gather."""
    out = []
    seen: set[str] = set()
    for spec, scale in iv.lr_scale.items():
        comps = spec.split(",")
        twice = seen & set(comps)
        if twice:
            raise BranchError(
                f"--lr-scale names {sorted(twice)} twice; give each component one multiplier"
            )
        seen |= set(comps)
        if scale == 1:
            continue
        for per_param in Circuit("lr_scale", comps).indices(model).values():
            out += [(name, index, scale) for name, index in per_param.items()]
    return out


def _pairs(spec: str, model) -> list[tuple[str, object]]:
    """(parameter name, index) of every component of a comma-separated set (``Circuit.indices``)."""
    comps = spec.split(",")
    return [(n, i) for per in Circuit("set", comps).indices(model).values() for n, i in per.items()]


class Projection:
    """The ``project_out`` intervention of one seed's training (module docstring): the
    direction grad_B S_A before the step, the update's component along it removed after."""

    def __init__(self, iv: Interventions, model, seed: int, log_path: Path | None):
        if len(iv.project_out) != 1:
            raise BranchError("--project-out takes one BLOCK=MEMBERS pair")
        ((block, members),) = iv.project_out.items()
        self.a, self.b = _pairs(members, model), _pairs(block, model)
        self.control, self.seed, self.log_path = iv.project_control, seed, log_path
        self.aim: list[torch.Tensor] = []
        self.move: list[torch.Tensor] = []
        self.before: list[torch.Tensor] = []
        self.step = -1

    def prepare(self, model, tokens: torch.Tensor, step: int, autocast) -> None:
        """Before the step: d^ = grad_B S_A / ||.|| at the current weights (S_A from the batch's
        two halves, each forward under ``autocast()`` as training's), the direction the removal
        moves along (d^, or a random unit one) and B's values."""
        params = dict(model.named_parameters())
        half = tokens.shape[0] // 2
        if half < 1:
            raise BranchError("--project-out needs a batch of at least 2 sequences (two halves)")
        names = sorted({n for n, _ in self.a})
        halves = []
        for part in (tokens[:half], tokens[half:]):
            with autocast():
                loss = model(part, return_type="loss").float()
            grads = dict(
                zip(names, torch.autograd.grad(loss, [params[n] for n in names], create_graph=True))
            )
            halves.append([grads[n][i] for n, i in self.a])
        energy = sum((x * y).sum() for x, y in zip(*halves))
        bnames = sorted({n for n, _ in self.b})
        grads = torch.autograd.grad(energy, [params[n] for n in bnames], allow_unused=True)
        grads = {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(bnames, grads)}
        self.aim = _unit([grads[n][i].detach().float() for n, i in self.b])
        self.move = self.aim
        if self.control == "random":
            gen = torch.Generator().manual_seed(1_000_003 * self.seed + step)
            # drawn on the CPU (the same draws on any device), used where the parameters live
            self.move = [
                v.to(a.device)
                for v, a in zip(
                    _unit([torch.randn(v.shape, generator=gen) for v in self.aim]), self.aim
                )
            ]
        self.before = [params[n].detach()[i].clone() for n, i in self.b]
        self.step = step

    def apply(self, model) -> None:
        """After the step: remove max(0, Delta_B . d^) along the chosen direction; log the step."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            delta = [params[n][i].float() - old.float() for (n, i), old in zip(self.b, self.before)]
            along = float(sum((x * d).sum() for x, d in zip(delta, self.aim))) if self.aim else 0.0
            amount = max(0.0, along)
            if amount > 0:
                for (n, i), m in zip(self.b, self.move):
                    params[n][i] -= (amount * m).to(params[n].dtype)
            norm = math.sqrt(float(sum((x**2).sum() for x in delta)))
        if self.log_path is not None:
            new = not self.log_path.exists()
            with open(self.log_path, "a") as f:
                if new:
                    f.write("seed,step,update_norm,along,removed\n")
                f.write(f"{self.seed},{self.step},{norm:.6e},{along:.6e},{amount:.6e}\n")


def _unit(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(float(sum((v.double() ** 2).sum() for v in parts)))
    return [v / norm for v in parts] if norm > 0 else []


def interventions_of(out: str | Path) -> Interventions:
    """A run directory's interventions (none for a run that is no branch)."""
    path = Layout(out).branch
    return (
        Interventions.from_dict(diskio.read_json(path)["interventions"])
        if path.exists()
        else Interventions()
    )


def apply_scaled_update(opt, views, scaled, moments: str) -> None:
    """One AdamW step of one seed with its update scaled on the masked coordinates: ``scaled``
    from :func:`scaled_masks`, ``views`` the seed's parameters by name."""
    before = [(views[k], m, s, views[k].detach()[m].clone()) for k, m, s in scaled]
    held = []
    if moments == "freeze":
        for k, m, _ in scaled:
            st = opt.state.get(views[k])
            if st:
                held.append((st, m, st["exp_avg"][m].clone(), st["exp_avg_sq"][m].clone()))
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, m, s, old in before:
            p[m] = old + s * (p[m] - old)
        for st, m, avg, avg_sq in held:
            st["exp_avg"][m] = avg
            st["exp_avg_sq"][m] = avg_sq


__all__ = [
    "ABLATIONS",
    "MOMENTS",
    "PROJECTIONS",
    "BranchError",
    "Projection",
    "Interventions",
    "ablation_hooks",
    "apply_scaled_update",
    "interventions_of",
    "scaled_masks",
]
