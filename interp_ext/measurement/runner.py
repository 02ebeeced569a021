"""One runner for every measurement family.

A *family* is a frozen, validated settings dataclass plus pure functions of a
`HookedTransformer`, probe tokens and, where needed, optimizer state (see
``docs/adding_a_measurement.md``). The runner owns everything around them:

* seed and step selection (an unknown seed or step is an error listing the
  available ones),
* validation of the settings against the run before any work or any write,
* the settings record ``<run>/measurements/<id>.json`` and the ``settings``
  column of every row: the same settings again measure nothing; other settings
  write new rows beside the old ones, never over them,
* resume: each unit of work (a seed at a checkpoint, a seed's summary, one
  checkpoint across seeds, the run's summary) is one immutable part of the
  metrics store, written atomically when the unit finishes, so a killed
  measurement continues where it stopped,
* sharding under ``torchrun`` (each rank its seeds; cross-seed units shared out
  after a barrier; rank 0 the run's summary),
* the progress bar and row assembly.

Python use::

    from interp_ext.measurement.runner import measure
    from interp_ext.families.geometry import GeometrySettings
    rows = measure(run, GeometrySettings(k=3), seeds=[0, 1])
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

import pandas as pd
from tqdm.auto import tqdm

from interp_ext import diskio, distributed
from interp_ext.errors import MeasureError
from interp_ext.run import parts

log = logging.getLogger("interp_ext")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Base of every family's settings: frozen, validated on creation, keyed by a content hash.

    Subclasses set ``family`` and validate their fields in :meth:`check` with
    :meth:`require`. Field metadata ``help`` becomes the command-line help;
    fields with ``metadata={"key": False}`` (speed knobs that leave values
    unchanged) are left out of the id, and fields with ``key="if_set"`` (added
    after rows were made without them) only when they hold their default, so
    the rows made before keep their id.
    """

    family: ClassVar[str] = ""
    # Raised when a fix changes the values a family computes: the id changes with it, so rows
    # made by the code before the fix are never returned as the new code's
    revision: ClassVar[int] = 0
    # Fields a family no longer has: saved settings holding them still load (from_saved), and
    # keep the id their rows were keyed by
    retired: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self.check()

    def check(self) -> None:
        """Validate field values (override); raise through :meth:`require`."""

    def require(self, cond: bool, name: str, fix: str) -> None:
        if not cond:
            raise MeasureError(
                f"{self.family} setting {name}={getattr(self, name)!r} is invalid: {fix}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def keyed(self) -> dict[str, Any]:
        """The fields that decide the values (the id is their hash)."""
        skip = {
            f.name
            for f in fields(self)
            if not f.metadata.get("key", True)
            or (f.metadata.get("key") == "if_set" and getattr(self, f.name) == f.default)
        }
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    @property
    def id(self) -> str:
        if self.__dict__.get("_saved_id"):
            return self.__dict__["_saved_id"]
        head = {"family": self.family, **({"revision": self.revision} if self.revision else {})}
        text = json.dumps({**head, **self.keyed()}, sort_keys=True, default=str)
        return f"{self.family}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def resolved_id(self, run) -> str:
        """The id this settings' rows carry in ``run`` (:func:`settings_id`)."""
        return settings_id(run, self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise MeasureError(
                f"unknown {cls.family} setting(s) {unknown}; valid settings: {sorted(known)}"
            )
        return cls(**payload)

    @classmethod
    def from_saved(cls, payload: dict[str, Any], saved_id: str) -> Settings:
        """Settings as a run recorded them under ``saved_id``: fields retired since (``retired``)
        are dropped, and when that changes the id the saved one is kept, so the rows made with
        them are still the ones read (never rows of the settings without the retired field)."""
        kept = cls.from_dict({k: v for k, v in payload.items() if k not in cls.retired})
        if kept.id != saved_id and set(payload) & set(cls.retired):
            kept.__dict__["_saved_id"] = saved_id
        return kept


def setting(default: Any, help: str, key: bool | str = True, **kwargs: Any) -> Any:
    """A settings field with its command-line help (``key=False``: not part of the id;
    ``key="if_set"``: part of it only when it differs from its default)."""
    return field(default=default, metadata={"help": help, "key": key, **kwargs})


def resolved(help: str) -> Any:
    """A settings field the family fills in from the run (e.g. the settings id of the rows a
    circuit or the formation steps are read from): part of the id and of the measurement's
    record, not a command-line option."""
    return field(default="", metadata={"help": help, "key": True, "resolved": True})


def resolved_if_set(help: str) -> Any:
    """:func:`resolved`, keyed only when set (a field added after rows were made without it)."""
    return field(default="", metadata={"help": help, "key": "if_set", "resolved": True})


# --------------------------------------------------------------------------- families


@dataclass
class Checkpoint:
    """One seed at one checkpoint, as a family's :meth:`Family.checkpoint` sees it.

    ``replay`` is True when the runner only rebuilds the family's state from a
    checkpoint measured before (its rows are not written again).
    """

    run: Any
    seed: int
    step: int
    replay: bool = False
    progress: bool = False  # long units (a ledger window) may show their own inner progress bar

    @cached_property
    def model(self):
        """The seed's `HookedTransformer` at this checkpoint (loaded once)."""
        return self.run.model(self.seed, self.step)

    @property
    def probe(self) -> dict:
        return self.run.probe_set()


class Family:
    """A measurement family: subclasses set ``name``, ``settings`` and override the hooks they need.

    ``scope``: ``"checkpoint"`` (per seed and checkpoint, then optional per-seed and
    cross-seed summaries) or ``"cross_seed"`` (one unit per checkpoint over every
    selected seed, e.g. Stream 2). ``stateful`` families carry state from one
    checkpoint to the next (in step order) and say which earlier checkpoints a
    resumed measurement must replay to rebuild it. ``row_families`` lists every
    ``family`` value its rows may carry (default: its name); ``columns`` the extra
    string columns of its rows. ``requires`` declares the families whose rows or files it
    may read (by settings id, through the run: :meth:`inputs`, ``run.metrics``); it names no
    other family anywhere else.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    # what other families read of this one's rows, found by role rather than by name: the
    # ``--circuit`` spec whose per-seed circuit its rows hold, and whether its rows hold each
    # seed's formation step (``formation_step``, ``detected_induction_head``)
    circuit_spec: ClassVar[str] = ""
    gives_formation: ClassVar[bool] = False
    settings: ClassVar[type[Settings]] = Settings
    scope: ClassVar[str] = "checkpoint"
    stateful: ClassVar[bool] = False
    row_families: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[tuple[str, ...]] = ()
    summary_metrics: ClassVar[
        tuple[str, ...]
    ] = ()  # per-step t-intervals over seeds, drawn by the report
    min_seeds: ClassVar[int] = 1
    between_checkpoints: ClassVar[bool] = (
        False  # rows at steps between checkpoints (a replay of real steps)
    )
    report_order: ClassVar[int] = 200  # where the family's section stands in the report

    def families(self) -> tuple[str, ...]:
        return self.row_families or (self.name,)

    def default_steps(self, run, settings: Settings) -> list[int]:
        return list(run.steps)

    def prepare(self, run, settings: Settings) -> Settings:
        """Check the settings against the run and resolve run-dependent choices (before any work)."""
        return settings

    def seed_steps(self, run, settings: Settings, seed: int, steps: list[int]) -> list[int]:
        """The checkpoints measured for one seed (default: the selected steps)."""
        return steps

    def start_seed(self, run, settings: Settings, seed: int) -> Any:
        """Per-seed state before its first checkpoint (e.g. the circuit it follows)."""
        return None

    def replay_steps(
        self, settings: Settings, sequence: list[int], todo: list[int], state: Any
    ) -> set[int]:
        """Stateful families: earlier steps whose processing rebuilds the state ``todo[0]`` needs."""
        return set(sequence[: sequence.index(todo[0])]) if todo else set()

    def checkpoint(self, ctx: Checkpoint, settings: Settings, state: Any) -> pd.DataFrame | None:
        """Rows of one seed at one checkpoint (``metric``, ``component``, ``value`` and extras)."""
        return None

    def finish_seed(
        self, run, settings: Settings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame | None:
        """Rows summarising one seed over its checkpoints; ``rows`` are the seed's rows so far."""
        return None

    def cross_seed_step(
        self, run, settings: Settings, seeds: list[int], step: int
    ) -> pd.DataFrame | None:
        """Rows across seeds at one checkpoint (scope ``cross_seed``, or a per-step summary)."""
        return None

    def finish(self, run, settings: Settings, rows: pd.DataFrame) -> pd.DataFrame | None:
        """Rows summarising every seed (intervals over seeds); ``rows`` are the family's rows so far."""
        return None

    def describe(self, rows: pd.DataFrame) -> list[str]:
        """A few lines the command line prints after measuring (override)."""
        return []

    def inputs(self, run, settings: Settings) -> list[tuple[str, str]]:
        """(family, settings id) of the rows of other families that :meth:`finish` reads (a newer
        part there re-runs it); each family named must be in :attr:`requires`."""
        return []

    def resolve(self, run, settings: Settings, compute: bool = True) -> Settings | None:
        """Expensive run-dependent choices (a calibration sweep), made once per settings and saved.

        Called by :func:`measure` after :meth:`prepare`. With ``compute=False`` (when only an
        id is wanted) return the saved choice, or None when it was never made.
        """
        return settings

    def circuit_of(self, run, seed: int, settings: Settings, step: int | None = None):
        """Families whose rows hold each seed's circuit (``--circuit NAME`` elsewhere) return it."""
        raise MeasureError(f"the {self.name} family holds no circuits")

    def report(self, page) -> list[str]:
        """This family's section of ``report.md`` (figures written into ``page.out``).

        The default draws every :attr:`summary_metrics` per step: each seed's line and the
        seed mean with its 95% t-interval over seeds. Built-in families draw their own.
        """
        from interp_ext.report.draw import default_section

        return default_section(self, page)

    def context(self, rows) -> dict:
        """What every time-series figure of the report marks, from this family's rows:
        ``{"window": (start, end)}`` (shaded) and/or ``{"marks": {label: step}}`` (dashed lines)."""
        return {}

    def report_beside(self, runs: dict, out) -> list[str]:
        """Lines comparing this family's rows across runs (``interp-ext report --beside``)."""
        return []


ENTRY_POINTS = "interp_ext.families"
_REGISTRY: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator adding a family to the registry (families defined in a notebook or a test);
    a second, different family of the same name is an error. Installed packages declare theirs as
    entry points instead (group ``interp_ext.families``)."""
    _check_family_class(cls)
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(
            f"a measurement family named {cls.name!r} is already registered ({type(_REGISTRY[cls.name]).__name__})"
        )
    _REGISTRY[cls.name] = cls()
    return cls


def _check_family_class(cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise TypeError(f"{cls!r} is not a Family subclass")
    if not cls.name or cls.settings.family != cls.name:
        raise TypeError(
            f"{cls.__name__}: set name and a Settings subclass whose family is the same name"
        )


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def family_names() -> list[str]:
    """Every family: those installed (entry points ``interp_ext.families``) and those registered here."""
    return sorted(set(_entry_points()) | set(_REGISTRY))


def _loadable() -> list[Family]:
    """Every family that loads (one that cannot, e.g. a plugin missing a dependency, is left
    out here: it fails by name when it is itself measured)."""
    out = []
    for name in family_names():
        try:
            out.append(get_family(name))
        except Exception as err:  # noqa: BLE001 - any import error of a third-party plugin
            log.warning("family %s does not load (%s): left out", name, err)
    return out


def circuit_sources() -> dict[str, str]:
    """``--circuit`` spec -> the family whose rows hold each seed's circuit under it."""
    return {f.circuit_spec: f.name for f in _loadable() if f.circuit_spec}


def formation_family() -> Family:
    """The family whose rows hold each seed's formation step."""
    found = [f for f in _loadable() if f.gives_formation]
    if not found:
        raise MeasureError("no installed family gives formation steps (the induction family does)")
    return found[0]


def get_family(name: str) -> Family:
    """The family ``name`` (its entry point loaded on first use); an unknown name lists the valid
    ones, closest first."""
    if name not in _REGISTRY:
        ep = _entry_points().get(name)
        if ep is not None:
            cls = ep.load()
            _check_family_class(cls)
            if cls.name != name:
                raise MeasureError(
                    f"entry point {name!r} of group {ENTRY_POINTS} loads family {cls.name!r}; declare it under its own name"
                )
            _REGISTRY.setdefault(name, cls())
    if name not in _REGISTRY:
        raise MeasureError(
            f"unknown measurement family {name!r}; valid families: {closest_first(name, family_names())}"
        )
    return _REGISTRY[name]


def families_in(run) -> list[Family]:
    """The families that have rows in the run, in the order of :attr:`Family.report_order`."""
    from interp_ext.run import parts

    present = set(parts.families(run.metrics_dir))
    found = []
    for name in family_names():
        fam = get_family(name)
        if present & set(fam.families()):
            found.append(fam)
    return sorted(found, key=lambda f: (f.report_order, f.name))


def closest_first(name: str, valid: Sequence[str]) -> list[str]:
    near = difflib.get_close_matches(name, valid, n=len(valid), cutoff=0.0)
    return near + [v for v in valid if v not in near]


# --------------------------------------------------------------------------- selection


def select_seeds(run, seeds: Iterable[int] | None) -> list[int]:
    available = run.seeds
    if not available:
        raise MeasureError(
            f"{run.path} has no checkpoints yet; train it first (interp-ext train --out {run.path})"
        )
    if seeds is None:
        return available
    seeds = sorted(set(int(s) for s in seeds))
    bad = [s for s in seeds if s not in available]
    if bad:
        raise MeasureError(
            f"seed(s) {bad} have no checkpoints in {run.path}; available seeds: {available}"
        )
    return seeds


def select_steps(
    run, seeds: list[int], steps: Iterable[int] | None, default: list[int]
) -> list[int]:
    available = sorted(set.intersection(*(set(run.steps_for(s)) for s in seeds)))
    if steps is None:
        return [s for s in default if s in available]
    steps = sorted(set(int(s) for s in steps))
    bad = [s for s in steps if s not in available]
    if bad:
        raise MeasureError(
            f"no checkpoint at step(s) {bad} for seeds {seeds}; available steps: {available}"
        )
    return steps


# --------------------------------------------------------------------------- the runner


def settings_id(run, settings: Settings) -> str:
    """The id rows of ``settings`` carry in this run (after the family resolves run-dependent
    choices, e.g. which induction rows a circuit comes from); "" if they cannot be resolved."""
    try:
        fam = get_family(settings.family)
        resolved = fam.resolve(run, fam.prepare(run, settings), compute=False)
    except MeasureError:
        return ""
    return resolved.id if resolved is not None else ""


def record_settings(run, settings: Settings) -> None:
    """``<run>/measurements/<id>.json``: the settings, when first and last used."""
    path = run.layout.measurement(settings.id)
    now = time.time()
    first = diskio.read_json(path).get("created", now) if path.exists() else now
    diskio.write_json(
        path,
        {
            "id": settings.id,
            "family": settings.family,
            "settings": settings.to_dict(),
            "created": first,
            "used": now,
        },
    )


def measure(
    run,
    settings: Settings,
    seeds: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure ``settings.family`` on the run's checkpoints and return its rows for these settings.

    Args:
        run: an opened run (:func:`interp_ext.open_run`).
        settings: the family's settings object (e.g. ``GeometrySettings(k=3)``).
        seeds: seeds to measure (default: every seed of the run).
        steps: checkpoint steps (default: the family's choice, usually every checkpoint).

    Returns:
        The family's rows made with these settings at the selected seeds and steps,
        plus their summaries across seeds; ``.attrs["measured"]`` counts the units
        measured by this call (0 when everything was already there).
    """
    fam = get_family(settings.family)
    if not isinstance(settings, fam.settings):
        raise MeasureError(
            f"settings of type {type(settings).__name__} given to family {fam.name!r}, which takes {fam.settings.__name__}"
        )
    seeds = select_seeds(run, seeds)
    steps = select_steps(run, seeds, steps, fam.default_steps(run, settings))
    if len(seeds) < fam.min_seeds:
        raise MeasureError(
            f"{fam.name} compares seeds and needs at least {fam.min_seeds}; selected {seeds}"
        )
    settings = fam.prepare(run, settings)
    distributed.init(run.device)
    with distributed.rank_zero_first():  # one rank makes an expensive choice, the others read it
        settings = fam.resolve(run, settings)
    distributed.barrier()
    record_settings(run, settings)
    job = _Job(run, fam, settings, seeds, steps, progress and distributed.world()[0] == 0)
    job.execute()
    return job.result()


@dataclass
class _Job:
    """One call of :func:`measure`: the loop over units of work."""

    run: Any
    fam: Family
    settings: Settings
    seeds: list[int]
    steps: list[int]
    progress: bool
    measured: dict[str, int] = field(
        default_factory=lambda: {
            "checkpoints": 0,
            "seeds": 0,
            "cross_seed_steps": 0,
            "summaries": 0,
        }
    )

    @property
    def root(self):
        return self.run.metrics_dir

    @property
    def primary(self) -> str:
        return self.fam.families()[0]

    def execute(self) -> None:
        if self.fam.scope == "checkpoint":
            mine = distributed.shard(self.seeds, self.run.device)
            bar = tqdm(
                total=len(mine) * len(self.steps),
                desc=self.fam.name,
                disable=not self.progress,
                dynamic_ncols=True,
            )
            for seed in mine:
                self._seed(seed, bar)
            bar.close()
        distributed.barrier()
        self._cross_seed_steps()
        distributed.barrier()
        if distributed.world()[0] == 0:
            self._finish()
        distributed.barrier()

    # -- units
    def _write(
        self,
        unit: str,
        frame: pd.DataFrame | None,
        seed: int | None = None,
        step: int | None = None,
        seeds: list[int] | None = None,
    ) -> None:
        """Write one unit's rows, split by row family; the primary family's part (maybe empty) last, as the commit."""
        frame = pd.DataFrame() if frame is None else frame
        if len(frame):
            defaults = {
                "seed": -1 if seed is None else seed,
                "step": -1 if step is None else step,
                "family": self.primary,
            }
            frame = frame.assign(
                **{c: frame[c].fillna(v) if c in frame else v for c, v in defaults.items()}
            )
        rows = parts.normalise(
            frame, self.run.name, self.fam.name, self.settings.id, self.fam.columns
        )
        groups = dict(tuple(rows.groupby("family"))) if len(rows) else {}
        unknown = set(groups) - set(self.fam.families())
        if unknown:
            raise RuntimeError(
                f"family {self.fam.name} wrote rows of undeclared families {sorted(unknown)}"
            )
        for fam in self.fam.families()[1:]:
            if fam in groups:
                parts.write_part(self.root, fam, self.settings.id, unit, groups[fam], seeds)
        parts.write_part(
            self.root,
            self.primary,
            self.settings.id,
            unit,
            groups.get(self.primary, rows.iloc[:0]),
            seeds,
        )

    def _done(self, unit: str) -> bool:
        return parts.has_part(self.root, self.primary, self.settings.id, unit)

    def _part_mtime(self, unit: str) -> float:
        path = parts.part_path(self.root, self.primary, self.settings.id, unit)
        return path.stat().st_mtime if path.exists() else -1.0

    def _seed(self, seed: int, bar) -> None:
        done = {t for t in self.run.steps_for(seed) if self._done(parts.unit_name(seed, t))}
        todo, sequence = self._todo(
            done, self.fam.seed_steps(self.run, self.settings, seed, self.steps)
        )
        wrote, shown = False, 0
        if todo:
            state = self.fam.start_seed(self.run, self.settings, seed)
            replay = (
                self.fam.replay_steps(self.settings, sequence, todo, state)
                if self.fam.stateful
                else set()
            )
            for step in sorted(set(todo) | replay):
                ctx = Checkpoint(
                    self.run, seed, step, replay=step not in todo, progress=self.progress
                )
                rows = self.fam.checkpoint(ctx, self.settings, state)
                if not ctx.replay:
                    self._write(parts.unit_name(seed, step), rows, seed, step)
                    self.measured["checkpoints"] += 1
                    wrote = True
                if step in self.steps:
                    shown += 1
                    bar.update(1)
        bar.update(len(self.steps) - shown)
        final = parts.unit_name(seed, None)
        if type(self.fam).finish_seed is not Family.finish_seed and (
            wrote or not self._done(final)
        ):
            rows = self.run.metrics(self.primary, settings=self.settings.id, seeds=[seed])
            self._write(
                final, self.fam.finish_seed(self.run, self.settings, seed, rows), seed, None
            )
            self.measured["seeds"] += 1

    def _todo(self, done: set[int], steps: list[int]) -> tuple[list[int], list[int]]:
        """Checkpoints to measure, and the step sequence of a stateful family.

        A stateful family's rows depend on the checkpoints before them (e.g. the overlap
        with the previous one), so a checkpoint inserted before measured ones makes those
        stale: they are measured again.
        """
        if not self.fam.stateful:
            return [t for t in steps if t not in done], steps
        sequence = sorted(done | set(steps))
        new = [t for t in steps if t not in done]
        if not new:
            return [], sequence
        return [t for t in sequence if t >= new[0]], sequence

    def _cross_seed_steps(self) -> None:
        if type(self.fam).cross_seed_step is Family.cross_seed_step:
            return
        steps = distributed.share(self.steps)
        bar = tqdm(
            steps,
            desc=f"{self.fam.name} across seeds",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for step in bar:
            unit = parts.unit_name(None, step)
            inputs = (
                [self._part_mtime(parts.unit_name(s, step)) for s in self.seeds]
                if self.fam.scope == "checkpoint"
                else []
            )
            if (
                self._done(unit)
                and self._covers(unit)
                and all(m <= self._part_mtime(unit) for m in inputs)
            ):
                continue
            self._write(
                unit,
                self.fam.cross_seed_step(self.run, self.settings, self.seeds, step),
                None,
                step,
                seeds=self.seeds,
            )
            self.measured["cross_seed_steps"] += 1

    def _covers(self, unit: str) -> bool:
        return (
            parts.part_seeds(parts.part_path(self.root, self.primary, self.settings.id, unit))
            == self.seeds
        )

    def _finish(self) -> None:
        has_summaries = type(self.fam).finish is not Family.finish or self.fam.summary_metrics
        if not has_summaries:
            return
        unit = parts.unit_name(None, None)
        own = [
            p for f in self.fam.families() for p in parts.part_files(self.root, f, self.settings.id)
        ]
        files = [p for p in own if p.stem != unit]
        files += [
            p
            for family, settings_id in self.fam.inputs(self.run, self.settings)
            for d in parts.settings_folders(self.root, family, settings_id)
            for p in d.glob("*.parquet")
        ]
        newest = max((p.stat().st_mtime for p in files), default=-1.0)
        if self._done(unit) and newest <= self._part_mtime(unit):
            return
        rows = self.run.metrics(None, settings=self.settings.id, families=self.fam.families())
        frames = [self.fam.finish(self.run, self.settings, rows)]
        if self.fam.summary_metrics:
            from interp_ext.stats import over_seeds

            sel = rows[
                rows.metric.isin(self.fam.summary_metrics) & (rows.seed >= 0) & (rows.step >= 0)
            ]
            frames.append(
                over_seeds(sel, ["family", "step", "metric", "component", *self.fam.columns])
            )
        frames = [f for f in frames if f is not None and len(f)]
        self._write(unit, pd.concat(frames, ignore_index=True) if frames else None)
        self.measured["summaries"] += 1

    def result(self) -> pd.DataFrame:
        rows = self.run.metrics(None, settings=self.settings.id, families=self.fam.families())
        steps = rows.step.isin(self.steps) | (rows.step < 0)
        if self.fam.between_checkpoints:
            steps |= (rows.step >= min(self.steps)) & (rows.step <= max(self.steps))
        keep = (rows.seed.isin(self.seeds) | (rows.seed < 0)) & steps
        out = rows[keep].reset_index(drop=True)
        out.attrs["measured"] = dict(self.measured)
        out.attrs["settings"] = self.settings.id
        return out
