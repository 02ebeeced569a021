"""The run directory (SPEC section 2), one owner for all of it.

* :mod:`~interp_ext.run.layout`: where every file lives (the README's tree);
* :mod:`~interp_ext.run.checkpoints` and :mod:`~interp_ext.run.sources`: native
  checkpoints, and imported ones read from where they were made;
* :mod:`~interp_ext.run.parts`: the append-only metrics store;
* :mod:`~interp_ext.run.reader`: :class:`Run`, behind :func:`open_run`.

Nothing here knows a measurement: families write rows through :meth:`Run.write_rows`
and the runner, and files through the paths :class:`Layout` gives.
"""

from interp_ext.errors import CheckpointError, RunError
from interp_ext.run.layout import Layout
from interp_ext.run.reader import Run, open_run

__all__ = ["CheckpointError", "Layout", "Run", "RunError", "open_run"]
