"""SAE feature tracking across checkpoints with sae-lens (SPEC section 9).

One TopK SAE (sae-lens ``TopKTrainingSAE`` trained by ``SAETrainer``) per (seed,
checkpoint, hook), same width, k, learning rate and seed everywhere; features
matched between consecutive checkpoints (decoder cosine and activation
correlation, Hungarian matching) into a lineage, across seeds by activation
correlation only, and related to the induction circuit.
"""

from interp_ext.sae_tracking.matching import LineageEvents, match_features, similarity_matrix

__all__ = [
    "LineageEvents",
    "SAESettings",
    "load_sae",
    "match_features",
    "sae_quality",
    "similarity_matrix",
    "train_sae",
]


def __getattr__(name: str):
    """sae-lens loads on first use of its parts (the command line starts without it)."""
    if name in ("SAESettings", "load_sae", "sae_quality", "train_sae"):
        from interp_ext.sae_tracking import train

        return getattr(train, name)
    raise AttributeError(name)
