"""Settings pieces several families share, composed into their settings classes (a family's
settings class derives from the pieces it has): one definition of each field, its help and its
place in the id. The fields stay flat (``settings.n_batches``), so ids, saved records and
command-line options are what they were before the pieces existed."""

from __future__ import annotations

from dataclasses import dataclass

from interp_ext.measurement.runner import Settings, resolved, setting


@dataclass(frozen=True)
class ProbeBatches(Settings):
    """How many of the run's probe batches a measurement reads."""

    n_batches: int | None = setting(
        None, "Probe batches (default: all of the probe set).", cli="--batches"
    )


@dataclass(frozen=True)
class CircuitSource(Settings):
    """The rows a ``cause`` or ``induction`` circuit is read from, filled in from the run."""

    source: str = resolved("Settings id of the rows the circuit is read from (resolved).")


@dataclass(frozen=True)
class FormationSource(Settings):
    """The rows each seed's formation step is read from, filled in from the run."""

    formation: str = resolved(
        "Settings id of the induction rows giving each seed's formation step (resolved)."
    )
