import time

import numpy as np
import pytest
import torch

from interp_ext.config import DataConfig
from interp_ext.data import (
    DataError,
    build_compact_tokenizer,
    encode_text,
    gpt2_tokenizer,
    insert_copies,
    load_corpus,
    repeated_tokens,
    synthetic_corpus,
    training_rows,
    wikitext_from_dir,
)


@pytest.fixture(scope="module")
def gpt2(cache_dir):
    return gpt2_tokenizer(cache_dir)


def test_offline_gpt2_tokenizer_gives_gpt2_ids(gpt2):
    # reference ids of GPT-2's tokenizer
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert gpt2(" The cat sat on the mat.")["input_ids"] == [383, 3797, 3332, 319, 262, 2603, 13]
    assert len(gpt2) == 50257 and gpt2.convert_tokens_to_ids("<|endoftext|>") == 50256


def test_compact_tokenizer_keeps_frequent_words_and_decodes_exactly(gpt2, tmp_path):
    corpus = synthetic_corpus(20_000, seed=1)
    ids = encode_text(gpt2, corpus.train_text)
    tok = build_compact_tokenizer(gpt2, ids, 400, tmp_path / "tok")
    assert len(tok) <= 400
    text = corpus.heldout_text[:2000] + " Zebra-crossing 1987!"
    assert tok.decode(tok(text)["input_ids"]) == text
    most_common = np.bincount(ids).argmax()
    word = gpt2.convert_ids_to_tokens(int(most_common))
    assert word in tok.get_vocab()
    assert max(tok(text)["input_ids"]) < len(tok)


def test_wikitext_dir_without_train_uses_validation_and_says_so(tmp_path, caplog):
    (tmp_path / "wiki.valid.raw").write_text(" = A = \n valid text \n")
    (tmp_path / "wiki.test.raw").write_text(" = B = \n test text \n")
    corpus = wikitext_from_dir(tmp_path)
    assert "valid text" in corpus.train_text and "test text" in corpus.heldout_text
    assert "absent" in caplog.text


def test_bad_data_dir_names_the_path(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        wikitext_from_dir(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="wiki.valid.raw"):
        wikitext_from_dir(tmp_path)


def test_offline_hub_falls_back_to_synthetic_within_seconds(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    corpus = load_corpus(DataConfig(corpus="auto", synthetic_tokens=5000))
    assert time.perf_counter() - start < 10
    assert corpus.name == "synthetic" and "SYNTHETIC" in caplog.text
    with pytest.raises(DataError, match="data-dir"):
        load_corpus(DataConfig(corpus="wikitext"))


def test_synthetic_corpus_is_deterministic():
    assert synthetic_corpus(3000, 0).train_text == synthetic_corpus(3000, 0).train_text
    assert synthetic_corpus(3000, 0).train_text != synthetic_corpus(3000, 1).train_text


def test_batches_are_a_function_of_seed_and_step():
    stream = np.arange(5000, dtype=np.int32) % 97
    cfg = DataConfig(copy_prob=1.0, copy_min_len=3, copy_max_len=6)
    a = torch.from_numpy(
        training_rows(stream, seed=0, step=7, batch_size=4, n_ctx=32, bos=99, data_cfg=cfg)[0]
    )
    b = torch.from_numpy(
        training_rows(stream, seed=0, step=7, batch_size=4, n_ctx=32, bos=99, data_cfg=cfg)[0]
    )
    c = torch.from_numpy(
        training_rows(stream, seed=1, step=7, batch_size=4, n_ctx=32, bos=99, data_cfg=cfg)[0]
    )
    assert a.equal(b) and not a.equal(c)
    assert (a[:, 0] == 99).all()


def test_insert_copies_places_one_later_copy():
    rng = np.random.default_rng(0)
    seqs = np.tile(np.arange(64), (50, 1))  # all-distinct rows: a copy is visible as a repeat
    insert_copies(seqs, rng, prob=1.0, min_len=6, max_len=24)
    for row in seqs:
        assert row[0] == 0
        changed = np.flatnonzero(row != np.arange(64))
        assert 1 <= len(changed) <= 24
        dst = changed[0]
        # the overwritten block equals an earlier block of the original row
        src = row[dst]
        assert src < dst


def test_repeated_tokens_layout():
    toks = repeated_tokens(5, n_ctx=64, d_vocab=50, bos=49, rng=np.random.default_rng(0))
    s = 31
    assert toks.shape == (5, 1 + 2 * s)
    assert (toks[:, 0] == 49).all() and (toks[:, 1:] != 49).all()
    assert (toks[:, 1 : 1 + s] == toks[:, 1 + s :]).all()
