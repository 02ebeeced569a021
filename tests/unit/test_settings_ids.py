"""Settings ids never change under a refactor: the rows a run holds are keyed by them, so an id
that moved would hide every row made before. The ids below were made by the code that wrote the
study's rows; each family's defaults (and settings the study and the tests use) must keep them."""

from __future__ import annotations

import importlib

import pytest

CLASSES = {
    "autocatalysis": "AutocatalysisSettings",
    "beta": "BetaSettings",
    "circuit": "CircuitSettings",
    "geometry": "GeometrySettings",
    "induction": "InductionSettings",
    "llc": "LLCSettings",
    "members": "MembersSettings",
    "noise": "NoiseSettings",
    "patching": "PatchingSettings",
    "sae": "SAETrackingSettings",
    "sharpness": "SharpnessSettings",
    "stages": "StagesSettings",
    "stream2": "Stream2Settings",
    "work": "WorkSettings",
}
# beyond the defaults (the sae family has none: it needs a hook)
EXTRA = {
    "work": [
        dict(scale=2, until="rise"),
        dict(arm="c0/own"),
        dict(source="circuit-abc", formation="induction-def"),
    ],
    "members": [
        dict(window="auto", window_every=50, formation="induction-x"),
        dict(weights="polyak200"),
    ],
    "sharpness": [dict(circuit="induction", source="circuit-x")],
    "noise": [dict(source="circuit-x", formation="induction-y")],
    "sae": [dict(hook="blocks.1.hook_resid_post", width=512)],
    "autocatalysis": [dict(source="x")],
    "llc": [dict(source="x")],
}
IDS = {
    "autocatalysis": ["autocatalysis-c688fddd64", "autocatalysis-cfa771c271"],
    "beta": ["beta-6d46089164"],
    "circuit": ["circuit-76bc98cefd"],
    "geometry": ["geometry-9b1c5f034a"],
    "induction": ["induction-1ccca5f8e3"],
    "llc": ["llc-e78b6fc8da", "llc-9a0c5a9c90"],
    "members": ["members-0d2d34dad8", "members-117534b0f8", "members-f5e1156899"],
    "noise": ["noise-63c5421bbd", "noise-2e367deb12"],
    "patching": ["patching-79499d082d"],
    "sae": ["sae-4204df4f14"],
    "sharpness": ["sharpness-c3ef978895", "sharpness-eb20cc33fc"],
    "stages": ["stages-004232b3cf"],
    "stream2": ["stream2-89312e50a2"],
    "work": ["work-e1f8401d8c", "work-83022ef669", "work-032307fbed", "work-2b178ef48a"],
}


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_settings_ids_are_the_ones_rows_were_made_with(family):
    cls = getattr(importlib.import_module(f"interp_ext.families.{family}"), CLASSES[family])
    made = ([] if family == "sae" else [cls().id]) + [cls(**kw).id for kw in EXTRA.get(family, [])]
    assert made == IDS[family]
