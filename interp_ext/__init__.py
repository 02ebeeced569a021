"""interp-ext: watch circuits form during training, in TransformerLens.

Train several seeds of a `HookedTransformer` side by side with hook-based
activation recording, then measure the gradient geometry of "Internalization of
gradients" (its dashboard and three experimental streams), induction circuits,
activation patching and SAE features on the checkpoints.

Typical notebook use::

    from interp_ext import open_run
    run = open_run("runs/tiny")
    model = run.model(seed=0, step=run.steps[-1])   # a plain HookedTransformer
    logits, cache = model.run_with_cache(run.probe_set()["repeated"][0])

    from interp_ext import measure
    from interp_ext.families import GeometrySettings
    rows = measure(run, GeometrySettings(k=4))      # keyed by its settings; re-running measures nothing
"""

import warnings

# In a notebook without ipywidgets, tqdm.auto falls back to text bars, which serve as well.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

from interp_ext.config import ConfigError, RunConfig, get_preset, override  # noqa: E402
from interp_ext.errors import InterpExtError  # noqa: E402
from interp_ext.run import CheckpointError, Run, RunError, open_run  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InterpExtError",
    "Run",
    "RunConfig",
    "RunError",
    "get_preset",
    "import_checkpoints",
    "measure",
    "open_run",
    "override",
    "train",
    "write_report",
]


def measure(run, settings, seeds=None, steps=None, progress=True):
    """Measure a family on a run's checkpoints; see :func:`interp_ext.measurement.runner.measure`."""
    from interp_ext.measurement.runner import measure as _measure

    return _measure(run, settings, seeds=seeds, steps=steps, progress=progress)


def train(cfg, out, resume=False, progress=True):
    """Train a run; see :func:`interp_ext.training.train`."""
    from interp_ext.training import train as _train

    return _train(cfg, out, resume=resume, progress=progress)


def write_report(run, out=None, beside=()):
    """Write ``report.md`` and its figures for a run; see :func:`interp_ext.report.compose.write_report`."""
    from interp_ext.report.compose import write_report as _write_report

    return _write_report(run, out, beside)


def import_checkpoints(source, out, **kwargs):
    """Make a run from checkpoints trained elsewhere; see :func:`interp_ext.importing.import_checkpoints`."""
    from interp_ext.importing import import_checkpoints as _import

    return _import(source, out, **kwargs)
