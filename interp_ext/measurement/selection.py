"""The circuit a measurement follows, as given on the command line (``--circuit``).

A spec is one of:

* ``cause``: each seed's circuit found by cause (the ``circuit`` family's rows);
* ``induction``: each seed's induction heads and their previous-token partners (the
  ``induction`` family's rows);
* a head list like ``L1H2,L0H3``, a Circuit JSON file, or JSON text.

The first two name a *source family*; its rows are read through the family's own
:meth:`~interp_ext.measurement.runner.Family.circuit_of`, found in the registry, so
no family imports another. :func:`resolve_circuit` turns a spec into what the
settings id is made of: the source family's settings id (rows made with other
settings are never read), or the circuit itself as JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import torch

from circuits.circuit import Circuit, CircuitError, Head, parse_heads
from circuits.induction import head_scores, layer_matched_controls, quiet_heads
from interp_ext.errors import MeasureError
from interp_ext.measurement.probes import repeated_probe

log = logging.getLogger("interp_ext")


def circuit_from_spec(spec: str, model) -> Circuit:
    """A circuit from a head list (``L1H2,L0H3``), a JSON file or JSON text, checked against ``model``."""
    try:
        if all(Head.is_head(p) for p in spec.replace(" ", ",").split(",") if p):
            heads = parse_heads(spec, model)
            return Circuit("custom", [str(h) for h in heads])
        if spec.lstrip().startswith("{") or Path(spec).is_file():
            return Circuit.from_json(spec).validate(model)
    except CircuitError as err:
        raise MeasureError(f"--circuit {spec!r}: {err}") from err
    raise MeasureError(
        f"--circuit {spec!r} is not 'cause', 'induction', a head list like L1H2,L0H3, or a Circuit JSON file (no such file)"
    )


def _source_family(spec: str):
    from interp_ext.measurement.runner import circuit_sources, get_family

    return get_family(circuit_sources()[spec])


def resolve_circuit(run, circuit: str, source: str = "") -> dict[str, str]:
    """``{"circuit": ..., "source": ...}`` as the settings id keys them: for a source family, the
    settings id of its rows (given, else the latest measured, else its defaults'); otherwise the
    circuit as JSON, checked against the run's model."""
    if circuit in _specs():
        if source:
            return {"circuit": circuit, "source": source}
        fam = _source_family(circuit)
        rows = run.metrics(fam.name)
        latest = str(rows.settings.iloc[0]) if len(rows) else fam.settings().id
        return {"circuit": circuit, "source": latest}
    model = run.model(run.seeds[0], run.steps_for(run.seeds[0])[0])
    as_json = json.dumps(circuit_from_spec(circuit, model).to_dict(), sort_keys=True)
    return {"circuit": as_json, "source": source}


def seed_circuit(run, seed: int, circuit: str, source: str) -> Circuit:
    """The circuit one seed is followed with (fixed over its checkpoints), from a resolved spec."""
    if circuit not in _specs():
        return Circuit.from_json(circuit)
    fam = _source_family(circuit)
    recorded = run.measurements()
    match = recorded[recorded.id == source]
    settings = (
        fam.settings.from_saved(match.settings.iloc[0], source) if len(match) else fam.settings()
    )
    return fam.circuit_of(run, seed, settings)


def source_inputs(circuit: str, source: str) -> list[tuple[str, str]]:
    """(family, settings id) of the rows a resolved circuit spec reads (a newer part there
    makes summaries stale); none for heads or a file."""
    return [(_source_family(circuit).name, source)] if circuit in _specs() and source else []


def _specs() -> set[str]:
    from interp_ext.measurement.runner import circuit_sources

    return set(circuit_sources())


def circuit_from_rows(rows: pd.DataFrame, name: str) -> Circuit:
    """A circuit from ``member`` rows (component = member, ``role`` column = its role)."""
    members = rows[rows.metric == "member"]
    return Circuit(name, members.component.tolist(), dict(zip(members.component, members.role)))


def layer_matched(run, seed: int, circuit: Circuit, n_random: int) -> dict[str, Circuit]:
    """``n_random`` control circuits of layer-matched random heads outside ``circuit`` and below
    both induction detection thresholds (the induction family's defaults) at the seed's last
    checkpoint; a shortfall is logged."""
    thresholds = _source_family("induction").settings()
    scores = head_scores(run.model(seed, run.steps_for(seed)[-1]), repeated_probe(run))
    out, note = layer_matched_controls(
        circuit, scores, n_random, seed, thresholds.threshold, thresholds.prev_threshold
    )
    if note:
        log.warning("seed %d: %s", seed, note)
    return out


def member_controls(run, seed: int, circuit: Circuit) -> dict[str, str]:
    """member head -> a random head of its layer outside the circuit, each used once, heads below
    both induction detection thresholds (at the seed's last checkpoint) drawn first; a member
    whose layer has no head left gets none (logged)."""
    model = run.model(seed, run.steps_for(seed)[-1])
    quiet = set(quiet_heads(head_scores(model, repeated_probe(run))))
    members = [Head.parse(c) for c in circuit.components if Head.is_head(c)]
    gen = torch.Generator().manual_seed(seed)
    used: set[str] = set()
    out = {}
    for m in members:
        pool = [
            str(Head(m.layer, h))
            for h in range(model.cfg.n_heads)
            if str(Head(m.layer, h)) not in circuit.components and str(Head(m.layer, h)) not in used
        ]
        if not pool:
            log.warning("seed %d: no head left in layer %d for a control of %s", seed, m.layer, m)
            continue
        order = torch.randperm(len(pool), generator=gen).tolist()
        ranked = sorted((pool[i] for i in order), key=lambda h: h not in quiet)
        out[str(m)] = ranked[0]
        used.add(ranked[0])
    return out
