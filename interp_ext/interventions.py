"""Interventions on training: the parts of a branch (``interp_ext.branch``) that the trainer applies.

* ``lr_scale``: {component set: multiplier}. The AdamW update of the components' parameters (its
  weight-decay part included) is multiplied: theta <- theta_before + s (theta_adamw -
  theta_before) on their coordinates (0 freezes them). ``moments="run"``: AdamW's moments of
  those coordinates keep running on their gradients; ``"freeze"``: they are held at their
  values at each step's start too.
* ``ablate``: {component: "mean" | "zero"}: a head's output (``hook_z``) or an MLP's
  (``hook_mlp_out``) replaced in every training forward pass by its mean over the batch's
  sequences (per position) or by zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from circuits.circuit import Circuit, Head
from interp_ext.errors import InterpExtError
from interp_ext.run import io
from interp_ext.run.layout import Layout

ABLATIONS = ("mean", "zero")
MOMENTS = ("run", "freeze")


class BranchError(InterpExtError):
    """A branch that cannot be made: its one line names the bad value and the fix."""


@dataclass
class Interventions:
    lr_scale: dict[str, float] = field(default_factory=dict)
    moments: str = "run"
    ablate: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "lr_scale": dict(self.lr_scale),
            "moments": self.moments,
            "ablate": dict(self.ablate),
        }

    @classmethod
    def from_dict(cls, payload: dict) -> Interventions:
        return cls(
            dict(payload.get("lr_scale", {})),
            payload.get("moments", "run"),
            dict(payload.get("ablate", {})),
        )

    def __bool__(self) -> bool:
        return bool(self.lr_scale or self.ablate)


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


def interventions_of(out: str | Path) -> Interventions:
    """A run directory's interventions (none for a run that is no branch)."""
    path = Layout(out).branch
    return (
        Interventions.from_dict(io.read_json(path)["interventions"])
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
    "BranchError",
    "Interventions",
    "ablation_hooks",
    "apply_scaled_update",
    "interventions_of",
    "scaled_masks",
]
