"""Measurement families, one per package: a settings dataclass and the pure functions it runs,
registered as an ``interp_ext.families`` entry point and driven by
:func:`interp_ext.measurement.runner.measure`.

Importing this package loads no family: ``from interp_ext.families import GeometrySettings``
loads the geometry family alone. See ``docs/adding_a_measurement.md`` for how a new family
plugs in.
"""

from __future__ import annotations

import importlib

# name -> the family package that defines it
_HOMES = {
    "AutocatalysisSettings": "autocatalysis",
    "BetaSettings": "beta",
    "CircuitSettings": "circuit",
    "cause_circuit": "circuit",
    "GeometrySettings": "geometry",
    "InductionSettings": "induction",
    "induction_circuit": "induction",
    "LLCSettings": "llc",
    "MembersSettings": "members",
    "NoiseSettings": "noise",
    "PatchingSettings": "patching",
    "SAETrackingSettings": "sae",
    "SharpnessSettings": "sharpness",
    "StagesSettings": "stages",
    "Stream2Settings": "stream2",
    "WorkSettings": "work",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return __all__
