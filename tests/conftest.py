"""Shared fixtures: tiny configs built in code, seeded, no downloads."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from interp_ext.config import DataConfig, ModelConfig, RecordConfig, RunConfig, TrainConfig  # noqa: E402


def micro_config(**train_overrides) -> RunConfig:
    """A model of a few thousand parameters on a small synthetic corpus."""
    train = dict(steps=6, batch_size=4, lr=3e-3, n_seeds=2, checkpoint_every=2, bf16=False)
    train.update(train_overrides)
    return RunConfig(
        preset="micro",
        model=ModelConfig(n_layers=2, n_heads=2, d_model=16, d_mlp=32, n_ctx=16),
        data=DataConfig(
            corpus="synthetic",
            synthetic_tokens=20_000,
            vocab_size=320,
            copy_prob=0.5,
            copy_min_len=2,
            copy_max_len=5,
            probe_batches=4,
            heldout_batches=2,
            probe_batch_size=3,
            repeated_batches=1,
        ),
        train=TrainConfig(**train),
        record=RecordConfig(hooks=[], n_batches=2),
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, cache_dir):
    """A finished 2-seed micro run with two recorded hooks (one backward)."""
    from interp_ext.training import train

    cfg = micro_config()
    cfg.record.hooks = [
        "blocks.0.attn.hook_pattern",
        "blocks.1.hook_resid_post",
        "blocks.0.hook_resid_mid_grad",
    ]
    out = tmp_path_factory.mktemp("runs") / "micro"
    return train(cfg, out, progress=False, cache_dir=cache_dir)
