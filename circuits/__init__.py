"""circuits: components of a `HookedTransformer` as named circuits, induction-head
scores and detection, ablation, and activation/path patching.

Stands on TransformerLens alone: every function takes a `HookedTransformer` and
token tensors. Run-level drivers that write metrics live in ``interp_ext``.
"""

from circuits.circuit import (
    REST,
    Circuit,
    CircuitError,
    Head,
    all_heads,
    parse_heads,
    random_heads,
    valid_components,
)
from circuits.induction import attention_scores, circuit_from_scores, head_scores

__all__ = [
    "Circuit",
    "CircuitError",
    "Head",
    "REST",
    "all_heads",
    "attention_scores",
    "circuit_from_scores",
    "head_scores",
    "parse_heads",
    "random_heads",
    "valid_components",
]
