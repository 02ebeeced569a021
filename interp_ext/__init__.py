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

from interp_ext.config import ConfigError, RunConfig, get_preset, override
from interp_ext.run import CheckpointError, Run, RunError, open_run

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Run",
    "RunConfig",
    "RunError",
    "get_preset",
    "measure",
    "open_run",
    "override",
    "train",
]


def measure(run, settings, seeds=None, steps=None, progress=True):
    """Measure a family on a run's checkpoints; see :func:`interp_ext.measurement.runner.measure`."""
    from interp_ext.measurement.runner import measure as _measure

    return _measure(run, settings, seeds=seeds, steps=steps, progress=progress)


def train(cfg, out, resume=False, progress=True):
    """Train a run; see :func:`interp_ext.training.train`."""
    from interp_ext.training import train as _train

    return _train(cfg, out, resume=resume, progress=progress)
