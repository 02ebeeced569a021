"""circuits: components of a HookedTransformer as named circuits, induction heads
over training, ablation and activation/path patching (TransformerLens)."""

from circuits.circuit import REST, Circuit, CircuitError, random_heads, valid_components
from circuits.induction import attention_scores, head_scores, induction_circuit, measure_run

__all__ = ["Circuit", "CircuitError", "REST", "attention_scores", "head_scores", "induction_circuit", "measure_run", "random_heads", "valid_components"]
