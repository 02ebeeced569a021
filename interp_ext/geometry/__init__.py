"""Gradient geometry of "Internalization of gradients": the dashboard (SPEC section 4),
Stream 1 (subspace drift), Stream 2 (cross-seed alignment), the beta fit and
transition detection (SPEC section 5).

Notebook use on any `HookedTransformer`::

    from interp_ext.geometry import measure_checkpoint
    metrics = measure_checkpoint(model, batches, k=4, heldout=held, params="all")
"""

from interp_ext.geometry.dashboard import (
    DASHBOARD,
    checkpoint_geometry,
    function_space_alignment,
    measure_checkpoint,
)
from interp_ext.geometry.gradients import GROUPS, param_group, per_batch_gradients, select_params
from interp_ext.geometry.streams import (
    beta_fit,
    cross_seed_alignment,
    detect_transition,
    fit_saturating,
    match_units,
    permute_params,
)

__all__ = [
    "DASHBOARD",
    "GROUPS",
    "beta_fit",
    "checkpoint_geometry",
    "cross_seed_alignment",
    "detect_transition",
    "fit_saturating",
    "function_space_alignment",
    "match_units",
    "measure_checkpoint",
    "param_group",
    "per_batch_gradients",
    "permute_params",
    "select_params",
]
