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


def rows_by_part(
    run, seed: int, first_draw: int, n_random: int, n_text: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """At least ``n_random`` uniform-random rows and ``n_text`` corpus-text rows of the training
    distribution (both carry the copied span), in draw order from ``run.batch_rows(seed, 0,
    draw=first_draw)`` on: (random rows, text rows), each exactly as long as asked."""

    text, rand, draw = [], [], first_draw
    while len(text) < n_text or len(rand) < n_random:
        seqs, random_rows = run.batch_rows(seed, 0, draw=draw)
        text += list(seqs[~random_rows])
        rand += list(seqs[random_rows])
        draw += 1
    return rand[:n_random], text[:n_text]


_FIXED: dict[tuple, torch.Tensor] = {}


def fixed_composition_batches(run, n_batches: int, batch_size: int) -> torch.Tensor:
    """Training-distribution batches in which every batch holds the same number of corpus-text rows,
    ``round(batch_size * (1 - random_seq_prob))``, the rest uniform random rows (both parts carry the
    copied span): [n_batches, batch_size, n_ctx], one set shared by every seed (drawn once per run
    and shape, then reused). Probe batches drawn as training batches hold a binomial number of text
    rows, and batch-to-batch differences in that count shape every seed's per-batch gradients alike."""
    p = run.config.data.random_seq_prob
    path = getattr(run, "path", None)  # a run on disk; anything else is drawn every time
    key = (str(path), n_batches, batch_size, p)
    if path is None or key not in _FIXED:
        n_text = round(batch_size * (1 - p))
        n_random = batch_size - n_text
        rand, text = rows_by_part(
            run, FIXED_COMPOSITION_KEY, 0, n_batches * n_random, n_batches * n_text
        )
        _FIXED[key] = torch.stack(
            [
                torch.stack(
                    rand[i * n_random : (i + 1) * n_random] + text[i * n_text : (i + 1) * n_text]
                )
                for i in range(n_batches)
            ]
        )
    return _FIXED[key].clone()
