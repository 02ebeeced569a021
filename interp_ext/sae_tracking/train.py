"""Train, save and evaluate one SAE with sae-lens (its trainer, SAE classes and evals, reused).

Quality, and where each number comes from:

* ``ce_recovered``: ``sae_lens.evals.get_recons_loss`` runs the model clean, with the SAE spliced
  in at the hook and with the hook zero-ablated (per-token CE each; their mean is the model's own
  ``return_type="loss"`` when TransformerLens builds no attention mask, as with the run's
  right-padding tokenizer), and CE recovered is (CE_zero - CE_sae) / (CE_zero - CE_clean) from
  those three.
* ``explained_variance``: ``sae_lens.evals.ExplainedVarianceCalculator``, the calculator behind the
  ``explained_variance`` of ``get_sparsity_and_variance_metrics``. Its definition,
  1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), is ours, 1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2
  over the tokens (the token count cancels). It is fed float64 so that its E||x||^2 - ||E x||^2
  does not cancel catastrophically when the activations have a large mean. Its
  zero-variance answer (1.0 or 0.0) is not used: identical activation vectors give NaN, as before.
* ``l0`` and ``dead_fraction`` stay computed here. ``get_sparsity_and_variance_metrics`` (and
  ``run_evals`` around it) takes an ``ActivationsStore`` and the model and draws token batches
  from the store to run the model itself, while ``sae_quality`` is given activation vectors
  (recorded in the run, or generated without the BOS position) and no model; the library has no
  function taking activations for L0, and none that gives the dead fraction (its
  ``feature_density`` comes from the same store-driven function).

Progress bar: ``SAETrainer.fit`` opens ``tqdm.auto.tqdm`` with no ``disable`` argument, and no
field of ``SAETrainerConfig`` or ``LoggingConfig`` reaches it (``LoggingConfig`` only controls
wandb). tqdm's own ``TQDM_DISABLE`` is read once, when tqdm is imported. So without ``progress``
the training runs with ``sys.stderr`` pointed at ``os.devnull`` (``contextlib.redirect_stderr``;
tqdm writes to ``sys.stderr`` as it is when the bar is made); warnings raised meanwhile are
recorded and issued again afterwards, so they are not lost. The redirect is process-wide while it
lasts, and a notebook's widget bar (not written to stderr) still shows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from sae_lens import SAE, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler

from interp_ext import diskio

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
    progress: bool = False,
) -> TopKTrainingSAE:
    """Train a TopK SAE on activations with sae-lens' ``SAETrainer``.

    ``start_from``: a saved SAE (sae-lens' format) whose weights the training starts from instead of a
    fresh initialisation (warm start: each checkpoint's SAE continues the previous one's, so its
    features keep their identities where the activations allow). ``progress``: show sae-lens'
    progress bar (off by default: one SAE of many).
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
        _fit(trainer, progress)
    return sae


def _fit(trainer: SAETrainer, progress: bool) -> None:
    """``trainer.fit()``; without ``progress`` its bar is written to ``os.devnull`` (module docstring).

    Warnings raised during the fit are recorded and issued again once stderr is restored.
    """
    if progress:
        trainer.fit()
        return
    with warnings.catch_warnings(record=True) as caught:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            trainer.fit()
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def save_sae(sae: TopKTrainingSAE, path: Path) -> None:
    """sae-lens' own inference format: cfg.json + sae_weights.safetensors (the folder written whole)."""
    diskio.atomic_dir(Path(path), lambda tmp: sae.save_inference_model(tmp))


def load_sae(path: str | Path) -> SAE:
    """Load with sae-lens' own loader."""
    return SAE.load_from_disk(str(path))


@torch.no_grad()
def encode(sae, acts: torch.Tensor) -> torch.Tensor:
    return sae.encode(acts.float())


@torch.no_grad()
def sae_quality(sae, acts: Float[torch.Tensor, "n d_in"]) -> dict[str, float]:
    """``l0`` (active latents per vector), ``explained_variance``, ``dead_fraction`` on ``acts``.

    Explained variance by sae-lens' ``ExplainedVarianceCalculator`` (in float64); NaN when every
    vector is the same (no variance to explain).
    """
    acts = acts.float()
    feats = sae.encode(acts)
    recon = sae.decode(feats)
    ev = ExplainedVarianceCalculator()
    ev.add_batch(sae_output=recon.double(), hidden_acts=acts.double())
    constant = acts.shape[0] < 2 or bool((acts == acts[0]).all())
    return {
        "l0": float((feats > 0).float().sum(1).mean()),
        "explained_variance": math.nan if constant else ev.compute(),
        "dead_fraction": float(((feats > 0).sum(0) == 0).float().mean()),
    }


@torch.no_grad()
def ce_recovered(model, sae, tokens: torch.Tensor, hook: str) -> float:
    """(CE_zero - CE_sae) / (CE_zero - CE_clean) with the SAE spliced in at ``hook``.

    The three CE losses from sae-lens' ``get_recons_loss`` (per token, averaged here over every
    predicted token); the SAE sees the activations unscaled. NaN when zero-ablating the hook leaves
    the loss unchanged.
    """
    losses = get_recons_loss(
        sae,
        model,
        ActivationScaler(),
        tokens,
        compute_kl=False,
        compute_ce_loss=True,
        hook_name=hook,
    )
    clean, with_sae, zeroed = (
        float(losses[k].mean())
        for k in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation")
    )
    return (zeroed - with_sae) / (zeroed - clean) if zeroed != clean else math.nan
