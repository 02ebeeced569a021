"""The run's fixed probe tokens in the shapes measurements take them."""

from __future__ import annotations

import torch


def repeated_probe(run) -> torch.Tensor:
    """The repeated-token probe ``[BOS] r r`` as one batch: [n_seq, 1 + 2S]."""
    rep = run.probe_set()["repeated"]
    return rep.reshape(-1, rep.shape[-1])


def heldout_probe(run) -> torch.Tensor:
    """The held-out probe sequences as one batch: [n_seq, pos]."""
    held = run.probe_set()["heldout"]
    return held.reshape(-1, held.shape[-1])


def probe_batches(run, family: str, n_batches: int | None) -> int:
    """The number of probe batches a measurement uses (``n_batches``, or all when None), refused
    with one line naming the setting when the run's probe set holds fewer."""
    from interp_ext.errors import MeasureError

    available = run.probe_set()["lm"].shape[0]
    wanted = n_batches or available
    if wanted > available:
        raise MeasureError(
            f"{family} setting n_batches={wanted} is invalid: the run's probe set holds {available} batches; use at most {available}"
        )
    return wanted
