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


def float64_micro(n_batches: int = 3):
    """A float64 attention-only HookedTransformer of 2 layers x 2 heads (d_model 6, 7 tokens) with
    ``n_batches`` token batches [n, 2, 6]: (model, names, theta, batches, loss), the reference for
    exact checks against autograd."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from interp_ext.geometry.gradients import current_params, loss_function

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        n_heads=2,
        d_model=6,
        d_head=3,
        n_ctx=6,
        d_vocab=7,
        attn_only=True,
        normalization_type=None,
        dtype=torch.float64,
        seed=0,
    )
    model = HookedTransformer(cfg)
    names = [n for n, _ in model.named_parameters()]
    theta = current_params(model, names)
    batches = torch.randint(0, 7, (n_batches, 2, 6), generator=torch.Generator().manual_seed(1))
    return model, names, theta, batches, loss_function(model, names)


def dense_hessian(model, names, theta, batches, loss):
    """The dense autograd Hessian of the mean loss over ``batches`` at ``theta`` (numpy)."""
    import torch

    from interp_ext.geometry.gradients import flatten, unflatten

    def mean_loss(flat):
        out = unflatten(flat, model, names)
        return torch.stack([loss(out, b) for b in batches]).mean()

    return torch.autograd.functional.hessian(mean_loss, flatten(theta, names)).numpy()
