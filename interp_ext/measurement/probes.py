"""The run's fixed probe tokens in the shapes measurements take them."""

from __future__ import annotations

import torch

FIXED_COMPOSITION_KEY = (
    0xF1CED  # the draw key of fixed-composition batches (one set for every seed)
)


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


def fixed_composition_batches(run, n_batches: int, batch_size: int) -> torch.Tensor:
    """Training-distribution batches in which every batch holds the same number of corpus-text rows,
    ``round(batch_size * (1 - random_seq_prob))``, the rest uniform random rows (both parts carry the
    copied span): [n_batches, batch_size, n_ctx], one set shared by every seed. Probe batches drawn
    as training batches hold a binomial number of text rows, and batch-to-batch differences in that
    count shape every seed's per-batch gradients alike."""
    from interp_ext.optim_step import step_rows

    p = run.config.data.random_seq_prob
    n_text = round(batch_size * (1 - p))
    n_random = batch_size - n_text
    text, rand, draw = [], [], 0
    while len(text) < n_batches * n_text or len(rand) < n_batches * n_random:
        seqs, random_rows = step_rows(run, FIXED_COMPOSITION_KEY, 0, draw=draw)
        text += list(seqs[~random_rows])
        rand += list(seqs[random_rows])
        draw += 1
    out = [
        torch.stack(rand[i * n_random : (i + 1) * n_random] + text[i * n_text : (i + 1) * n_text])
        for i in range(n_batches)
    ]
    return torch.stack(out)
