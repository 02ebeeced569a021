"""A `Circuit`: a named set of model components and their parameters (SPEC section 7).

Component names:

* ``L{layer}H{head}``: one attention head: W_Q[h], W_K[h], W_V[h], W_O[h],
  b_Q[h], b_K[h], b_V[h] (b_O is shared by the heads of a layer and belongs to
  ``L{layer}ATTN_OUT``);
* ``L{layer}ATTN_OUT``: the attention output bias b_O of a layer;
* ``L{layer}MLP``: W_in, b_in, W_out, b_out of a layer;
* ``L{layer}LN1``, ``L{layer}LN2``, ``LN_FINAL``: LayerNorm weight and bias;
* ``EMBED`` (W_E, W_pos) and ``UNEMBED`` (W_U, b_U);
* ``rest``: every parameter not in the circuit's other components (used by
  Stream 3 to complete a partition of theta).

Each component maps to parameter slices of a `HookedTransformer`, to boolean
masks over each parameter and over the flattened parameter vector (in
``named_parameters`` order), and to its hook names. Circuits serialise to JSON.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_LAYER = re.compile(r"^L(\d+)(MLP|LN1|LN2|ATTN_OUT)$")
REST = "rest"


class CircuitError(ValueError):
    """A component name that does not exist in the model."""


class Head(NamedTuple):
    """One attention head; its name is ``L{layer}H{head}`` (parsed and formatted only here).

    Example:
        >>> Head.parse("L1H2")
        Head(layer=1, head=2)
        >>> str(Head(1, 2))
        'L1H2'
    """

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, name: str) -> Head:
        m = _HEAD.match(str(name).strip())
        if not m:
            raise CircuitError(
                f"{name!r} is not a head name; heads are written L<layer>H<head>, e.g. L1H2"
            )
        return cls(int(m.group(1)), int(m.group(2)))

    @staticmethod
    def is_head(name: str) -> bool:
        return bool(_HEAD.match(str(name)))

    def check(self, model) -> Head:
        """The head itself, or an error naming the model's layers and heads (``model``: a
        ``HookedTransformer`` or its config, anything with ``n_layers`` and ``n_heads``)."""
        cfg = getattr(model, "cfg", model)
        n_l, n_h = cfg.n_layers, cfg.n_heads
        if not (0 <= self.layer < n_l and 0 <= self.head < n_h):
            raise CircuitError(
                f"head {self} does not exist: the model has layers 0..{n_l - 1} and heads 0..{n_h - 1} per layer (L0H0 .. L{n_l - 1}H{n_h - 1})"
            )
        return self

    def hook(self, name: str) -> str:
        """This head's layer's hook point, e.g. ``Head(1, 2).hook("pattern")`` -> ``blocks.1.attn.hook_pattern``."""
        return get_act_name(name, self.layer)


def all_heads(model: HookedTransformer, min_layer: int = 0) -> list[Head]:
    return [
        Head(l, h) for l in range(min_layer, model.cfg.n_layers) for h in range(model.cfg.n_heads)
    ]


def parse_heads(text: str, model: HookedTransformer | None = None) -> list[Head]:
    """``"L1H2,L0H3"`` -> heads (checked against ``model`` when given)."""
    heads = [Head.parse(part) for part in str(text).replace(" ", ",").split(",") if part]
    return [h.check(model) for h in heads] if model is not None else heads


def valid_components(model: HookedTransformer) -> list[str]:
    """Every component name valid for this model (``rest`` aside)."""
    cfg = model.cfg
    names = [str(h) for h in all_heads(model)]
    for l in range(cfg.n_layers):
        names.append(f"L{l}ATTN_OUT")
        if not cfg.attn_only:
            names.append(f"L{l}MLP")
        if cfg.normalization_type is not None:
            names += [f"L{l}LN1"] + ([] if cfg.attn_only else [f"L{l}LN2"])
    if cfg.normalization_type is not None:
        names.append("LN_FINAL")
    return names + ["EMBED", "UNEMBED"]


def _params_of(model: HookedTransformer, name: str) -> dict[str, tuple]:
    """Trainable parameter name -> index into that parameter (``()`` = whole tensor)."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if Head.is_head(name):
        layer, head = Head.parse(name)
        out = {}
        for p in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            key = f"blocks.{layer}.attn.{p}"
            if key in params:
                out[key] = (head,)
        return out
    if m := _LAYER.match(name):
        layer, kind = int(m.group(1)), m.group(2)
        prefix = {"MLP": "mlp.", "LN1": "ln1.", "LN2": "ln2.", "ATTN_OUT": "attn.b_O"}[kind]
        if kind == "ATTN_OUT":
            return {f"blocks.{layer}.attn.b_O": ()}
        return {k: () for k in params if k.startswith(f"blocks.{layer}.{prefix}")}
    if name == "LN_FINAL":
        return {k: () for k in params if k.startswith("ln_final.")}
    if name == "EMBED":
        return {k: () for k in params if k.startswith(("embed.", "pos_embed."))}
    if name == "UNEMBED":
        return {k: () for k in params if k.startswith("unembed.")}
    raise CircuitError(name)


def _hooks_of(name: str) -> list[str]:
    if Head.is_head(name):
        layer = Head.parse(name).layer
        return [get_act_name(h, layer) for h in ("q", "k", "v", "pattern", "z")]
    if m := _LAYER.match(name):
        layer, kind = int(m.group(1)), m.group(2)
        return {
            "MLP": [get_act_name(h, layer) for h in ("pre", "post", "mlp_out")],
            "LN1": [get_act_name(h, layer, "ln1") for h in ("scale", "normalized")],
            "LN2": [get_act_name(h, layer, "ln2") for h in ("scale", "normalized")],
            "ATTN_OUT": [get_act_name("attn_out", layer)],
        }[kind]
    return {
        "LN_FINAL": [get_act_name("scale"), get_act_name("normalized")],
        "EMBED": [get_act_name("embed"), get_act_name("pos_embed")],
        "UNEMBED": [],
    }.get(name, [])


@dataclass
class Circuit:
    """A named set of components, e.g. ``Circuit("induction", ["L0H3", "L1H2"])``.

    Args:
        name: label used in reports and metric rows.
        components: component names (see module docstring).
        roles: optional role per component (``"induction"``, ``"prev_token"``, ...).
    """

    name: str
    components: list[str]
    roles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.components = list(dict.fromkeys(self.components))

    def validate(self, model: HookedTransformer) -> Circuit:
        valid = valid_components(model)
        bad = [c for c in self.components if c not in valid and c != REST]
        if bad:
            raise CircuitError(
                f"unknown component(s) {bad} for this model; valid components: {valid} (and '{REST}')"
            )
        return self

    def with_rest(self) -> Circuit:
        """The same circuit plus ``rest`` (every other parameter)."""
        return Circuit(
            self.name, [c for c in self.components if c != REST] + [REST], dict(self.roles)
        )

    # -- parameters
    def masks(self, model: HookedTransformer) -> dict[str, dict[str, torch.Tensor]]:
        """component -> {parameter name -> bool mask shaped like the parameter}.

        The components of a circuit must not overlap; ``rest`` gets everything
        the others leave out.
        """
        self.validate(model)
        params = {
            k: p for k, p in model.named_parameters() if p.requires_grad
        }  # frozen ones are no coordinates
        covered = {k: torch.zeros_like(p, dtype=torch.bool) for k, p in params.items()}
        out: dict[str, dict[str, torch.Tensor]] = {}
        for comp in self.components:
            if comp == REST:
                continue
            comp_masks = {}
            for pname, index in _params_of(model, comp).items():
                mask = torch.zeros_like(params[pname], dtype=torch.bool)
                mask[index] = True
                if (covered[pname] & mask).any():
                    raise CircuitError(
                        f"component {comp} overlaps another component of circuit {self.name!r} in {pname}"
                    )
                covered[pname] |= mask
                comp_masks[pname] = mask
            out[comp] = comp_masks
        if REST in self.components:
            out[REST] = {k: ~m for k, m in covered.items() if (~m).any()}
        return out

    def indices(self, model: HookedTransformer) -> dict[str, dict[str, tuple]]:
        """component -> {parameter name -> index into it} (a head's slice along the head
        dimension, ``()`` for a whole tensor): the views :meth:`masks` marks, for in-place work
        on them without a gather."""
        self.validate(model)
        return {c: _params_of(model, c) for c in self.components if c != REST}

    def flat_masks(self, model: HookedTransformer) -> dict[str, torch.Tensor]:
        """component -> bool mask over the flattened trainable parameters (named_parameters order)."""
        masks = self.masks(model)
        trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        return {
            comp: torch.cat(
                [
                    per_param.get(k, torch.zeros_like(p, dtype=torch.bool)).flatten()
                    for k, p in trainable
                ]
            )
            for comp, per_param in masks.items()
        }

    def n_params(self, model: HookedTransformer) -> dict[str, int]:
        return {c: int(sum(m.sum() for m in per.values())) for c, per in self.masks(model).items()}

    def hook_names(self, component: str) -> list[str]:
        return _hooks_of(component)

    # -- (de)serialisation
    def to_dict(self) -> dict:
        return {"name": self.name, "components": self.components, "roles": self.roles}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:  # a temporary file renamed into place: never half a file
            tmp = Path(path).with_name(f".{Path(path).name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        return text

    @classmethod
    def from_dict(cls, payload: dict) -> Circuit:
        return cls(payload["name"], list(payload["components"]), dict(payload.get("roles", {})))

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Circuit:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))


def random_heads(
    model: HookedTransformer,
    n: int,
    exclude: Iterable[str] = (),
    generator: torch.Generator | None = None,
    min_layer: int = 0,
) -> list[str]:
    """``n`` random head names (layers >= ``min_layer``), none of ``exclude``."""
    excluded = {str(e) for e in exclude}
    pool = [str(h) for h in all_heads(model, min_layer) if str(h) not in excluded]
    if n > len(pool):
        raise CircuitError(
            f"asked for {n} random heads but only {len(pool)} heads are available outside {list(exclude)}"
        )
    idx = torch.randperm(len(pool), generator=generator)[:n]
    return [pool[i] for i in idx.tolist()]
