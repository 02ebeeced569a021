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
