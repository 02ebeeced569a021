"""Train, save and evaluate one SAE with sae-lens (its trainer and SAE classes, reused)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from sae_lens import SAE, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig, SAETrainerConfig

from interp_ext.run import io

log = logging.getLogger("interp_ext")


@dataclass
class SAESettings:
    """The same SAE everywhere: TopK (no L1 coefficient to tune across checkpoints).

    TopK fixes the L0 at ``k`` by construction, so lineages compare features of
    dictionaries with equal sparsity; ``width`` latents, Adam ``lr``, ``epochs``
    passes over the activations, fixed ``seed``.
    """

    width: int = 256
    k: int = 8
    lr: float = 1e-3
    epochs: int = 8
    batch_size: int = 256
    seed: int = 0
    min_tokens_per_latent: int = 8


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts.shape[0], generator=gen)
        for i in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[i : i + batch_size]]


def train_sae(
    acts: Float[torch.Tensor, "n d_in"],
    settings: SAESettings,
    hook_name: str = "",
    start_from: str | Path | None = None,
) -> TopKTrainingSAE:
    """Train a TopK SAE on activations with sae-lens' ``SAETrainer``.

    ``start_from``: a saved SAE (sae-lens' format) whose weights the training starts from instead of a
    fresh initialisation (warm start: each checkpoint's SAE continues the previous one's, so its
    features keep their identities where the activations allow).
    """
    n, d_in = acts.shape
    if n < settings.min_tokens_per_latent * settings.width:
        warnings.warn(
            f"only {n} activation vectors for an SAE of width {settings.width}: fewer than "
            f"{settings.min_tokens_per_latent} per latent ({settings.min_tokens_per_latent * settings.width}); "
            "features will be poorly determined: record more probe batches, generate activations, or lower the width",
            RuntimeWarning,
            stacklevel=2,
        )
    batch = min(settings.batch_size, n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        cfg = TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=settings.width,
            k=min(settings.k, settings.width),
            dtype="float32",
            device="cpu",
        )
        cfg.metadata.hook_name = hook_name
        sae = TopKTrainingSAE(cfg)
        if start_from is not None:
            sae.load_state_dict(load_sae(start_from).state_dict())
        total = max(1, settings.epochs * (n // batch)) * batch
        trainer_cfg = SAETrainerConfig(
            total_training_samples=total,
            train_batch_size_samples=batch,
            lr=settings.lr,
            lr_end=settings.lr,
            device="cpu",
            dead_feature_window=10**9,
            feature_sampling_window=10**9,
            logger=LoggingConfig(log_to_wandb=False),
        )
        trainer = SAETrainer(trainer_cfg, sae, _batches(acts.float(), batch, settings.seed))
        import tqdm as _tqdm

        with _quiet_tqdm(_tqdm):
            trainer.fit()
    return sae


class _quiet_tqdm:
    """Silence sae-lens' inner progress bar (one SAE of many)."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        import sae_lens.training.sae_trainer as st

        self._orig = st.tqdm
        st.tqdm = lambda *a, **k: self.module.tqdm(*a, **{**k, "disable": True})

    def __exit__(self, *exc):
        import sae_lens.training.sae_trainer as st

        st.tqdm = self._orig


def save_sae(sae: TopKTrainingSAE, path: Path) -> None:
    """sae-lens' own inference format: cfg.json + sae_weights.safetensors (the folder written whole)."""
    io.atomic_dir(Path(path), lambda tmp: sae.save_inference_model(tmp))


def load_sae(path: str | Path) -> SAE:
    """Load with sae-lens' own loader."""
    return SAE.load_from_disk(str(path))


@torch.no_grad()
def encode(sae, acts: torch.Tensor) -> torch.Tensor:
    return sae.encode(acts.float())


@torch.no_grad()
def sae_quality(sae, acts: Float[torch.Tensor, "n d_in"]) -> dict[str, float]:
    """``l0`` (active latents per vector), ``explained_variance``, ``dead_fraction`` on ``acts``."""
    feats = sae.encode(acts.float())
    recon = sae.decode(feats)
    resid = (acts - recon).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum()
    return {
        "l0": float((feats > 0).float().sum(1).mean()),
        "explained_variance": float(1 - resid / total) if total > 0 else math.nan,
        "dead_fraction": float(((feats > 0).sum(0) == 0).float().mean()),
    }


@torch.no_grad()
def ce_recovered(model, sae, tokens: torch.Tensor, hook: str) -> float:
    """(CE_zero - CE_sae) / (CE_zero - CE_clean) with the SAE spliced in at ``hook``."""
    clean = float(model(tokens, return_type="loss"))

    def splice(act, hook):
        return sae.decode(sae.encode(act.float().cpu())).to(act.device, act.dtype)

    def zero(act, hook):
        return torch.zeros_like(act)

    with_sae = float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook, splice)]))
    zeroed = float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook, zero)]))
    return (zeroed - with_sae) / (zeroed - clean) if zeroed != clean else math.nan
