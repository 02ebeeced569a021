"""The training mix's two parts (uniform random rows and corpus text) drawn apart: for the
data-refined LLC and Stream 2's fixed-composition batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch


@pytest.fixture()
def mixed_run(micro_run):
    """The micro run's corpus with a 3:1 mix of random and text rows and no copies, so that a text
    row is exactly a window of the training stream and a random row (almost surely) is not."""
    from interp_ext import open_run

    run = open_run(micro_run.path)  # its own object: the config changed in memory alone
    run.config = replace(
        run.config, data=replace(run.config.data, random_seq_prob=0.75, copy_prob=0.0)
    )
    return run


def is_text(row: torch.Tensor, stream: np.ndarray) -> bool:
    body = row[1:].numpy()
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(body))
    return bool((windows == body).all(1).any())


def test_rows_equal_the_training_batch_and_say_their_part(mixed_run):
    from interp_ext.data import training_rows

    cfg, stream = mixed_run.config, mixed_run.train_tokens()
    args = (cfg.train.batch_size, cfg.model.n_ctx, mixed_run.bos, cfg.data, mixed_run.d_vocab)
    for seed, step, draw in [(0, 0, None), (1, 5, None), (0, 0, 7), (3, 2, 11)]:
        seqs, random_rows = mixed_run.batch_rows(seed, step, draw)
        assert torch.equal(seqs, mixed_run.batch(seed, step, draw))
        assert torch.equal(
            seqs, torch.from_numpy(training_rows(stream, seed, step, *args, draw)[0])
        )
        assert [not is_text(r, stream) for r in seqs] == random_rows.tolist()


def test_fixed_composition_batches_hold_the_same_number_of_text_rows(mixed_run):
    from interp_ext.measurement.probes import fixed_composition_batches

    stream = mixed_run.train_tokens()
    out = fixed_composition_batches(mixed_run, 5, 8)
    assert out.shape == (5, 8, mixed_run.config.model.n_ctx)
    counts = [sum(is_text(r, stream) for r in batch) for batch in out]
    assert counts == [2] * 5  # round(8 x 0.25) in every batch
    assert torch.equal(out, fixed_composition_batches(mixed_run, 5, 8))  # one set, whoever asks
    assert len({tuple(r.tolist()) for r in out.flatten(0, 1)}) == 40  # no row used twice


@pytest.mark.parametrize("part", ["random", "text"])
def test_llc_data_keeps_one_part(mixed_run, part):
    from interp_ext.families.llc import LLCSettings, llc_data

    data = llc_data(mixed_run, 0, LLCSettings(data=part, n_sequences=20, batch_size=4))
    stream = mixed_run.train_tokens()
    rows = data[:]["input_ids"]
    assert rows.shape[0] == 20
    assert all(is_text(r, stream) == (part == "text") for r in rows)
