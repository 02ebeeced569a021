"""Measurement families, one per file: a settings dataclass and the pure functions it runs,
registered with :func:`interp_ext.measurement.runner.register` and driven by :func:`interp_ext.measurement.runner.measure`.

See ``docs/adding_a_measurement.md`` for how a new family plugs in.
"""

from interp_ext.families.autocatalysis import AutocatalysisSettings
from interp_ext.families.beta import BetaSettings
from interp_ext.families.circuit import CircuitSettings, cause_circuit
from interp_ext.families.counterfactual import CounterfactualSettings
from interp_ext.families.geometry import GeometrySettings
from interp_ext.families.induction import InductionSettings, induction_circuit
from interp_ext.families.ledger import LedgerSettings
from interp_ext.families.llc import LLCSettings
from interp_ext.families.members import MembersSettings
from interp_ext.families.noise import NoiseSettings
from interp_ext.families.patching import PatchingSettings
from interp_ext.families.sae import SAETrackingSettings
from interp_ext.families.sharpness import SharpnessSettings
from interp_ext.families.stages import StagesSettings
from interp_ext.families.stream2 import Stream2Settings
from interp_ext.families.work import WorkSettings

__all__ = [
    "AutocatalysisSettings",
    "BetaSettings",
    "CircuitSettings",
    "CounterfactualSettings",
    "GeometrySettings",
    "InductionSettings",
    "LLCSettings",
    "LedgerSettings",
    "MembersSettings",
    "NoiseSettings",
    "PatchingSettings",
    "SAETrackingSettings",
    "SharpnessSettings",
    "StagesSettings",
    "Stream2Settings",
    "WorkSettings",
    "cause_circuit",
    "induction_circuit",
]
