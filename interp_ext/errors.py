"""Every error interp-ext raises on bad input, under one base class.

Each error's message names the bad value or file and what would fix it, in its
first line. The command line prints that line alone and exits with code 2 (no
traceback; ``interp-ext --debug ...`` or ``INTERP_EXT_DEBUG=1`` shows it). Each
class also derives from the built-in exception it used to be, so ``except
FileNotFoundError`` and the like keep working in notebooks.

The ``circuits`` package stands on TransformerLens alone, so its
:class:`circuits.circuit.CircuitError` is not a subclass; :func:`user_errors`
names both, and is what the command line catches.
"""

from __future__ import annotations


class InterpExtError(Exception):
    """Base of every interp-ext error; ``str(err)``'s first line names the value and the fix."""


class ConfigError(InterpExtError, ValueError):
    """A config field has an invalid value, or a config file cannot be read."""


class DataError(InterpExtError, RuntimeError):
    """The corpus or tokenizer cannot be loaded or prepared."""


class RunError(InterpExtError, FileNotFoundError):
    """A path is not a run directory, or asks for something the run does not hold."""


class RunExistsError(InterpExtError, FileExistsError):
    """A run directory already holds what a command would create (use --resume, or another --out)."""


class CheckpointError(InterpExtError, RuntimeError):
    """A checkpoint, activation or metrics file is missing, corrupt or truncated."""


class CheckpointImportError(InterpExtError, ValueError):
    """Checkpoints made elsewhere cannot be imported; names the file and the fix."""


class MeasureError(InterpExtError, ValueError):
    """Bad settings or selections for a measurement; names the value and the fix."""


class ExportError(InterpExtError, ValueError):
    """A checkpoint cannot be exported: its architecture or weights do not map, or the folder is taken."""


class NonFiniteLossError(InterpExtError, FloatingPointError):
    """Training produced a non-finite loss (the checkpoints before it stay intact)."""


class ReplayError(MeasureError, RuntimeError):
    """A replay of real training steps cannot start, or does not reproduce the saved
    checkpoint: the measurement that replays them is refused."""


def user_errors() -> tuple[type[Exception], ...]:
    """The errors bad input raises: every :class:`InterpExtError` and the circuits package's own."""
    from circuits.circuit import CircuitError

    return (InterpExtError, CircuitError)


def one_line(err: BaseException) -> str:
    """The first line of an error's message (the part that names the value and the fix)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


__all__ = [
    "CheckpointError",
    "CheckpointImportError",
    "ConfigError",
    "DataError",
    "ExportError",
    "InterpExtError",
    "MeasureError",
    "NonFiniteLossError",
    "ReplayError",
    "RunError",
    "RunExistsError",
    "one_line",
    "user_errors",
]
