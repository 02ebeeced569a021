"""Saved settings with a field the family no longer has still load, under the id their rows carry."""

from __future__ import annotations

import pytest

from interp_ext.families.circuit import CircuitSettings
from interp_ext.measurement.runner import MeasureError

# what the circuit rows of runs made before the exhaustive search were saved with
SAVED = {"threshold": 0.4, "min_share": 0.1, "together": 0.8, "corruption_seed": 0}


def test_a_retired_field_is_dropped_and_the_saved_id_kept():
    settings = CircuitSettings.from_saved(SAVED, "circuit-dd1d40c760")
    assert settings.id == "circuit-dd1d40c760"
    assert settings.together == 0.8 and not hasattr(settings, "min_share")
    # settings without a retired field are recomputed as usual
    fresh = CircuitSettings.from_saved(settings.to_dict(), "circuit-0000000000")
    assert fresh.id == CircuitSettings().id != "circuit-dd1d40c760"


def test_a_retired_field_is_still_refused_as_input():
    with pytest.raises(MeasureError, match="min_share"):
        CircuitSettings.from_dict(SAVED)
