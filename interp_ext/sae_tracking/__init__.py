"""SAE feature tracking across checkpoints with sae-lens (SPEC section 9).

One TopK SAE (sae-lens ``TopKTrainingSAE`` trained by ``SAETrainer``) per (seed,
checkpoint, hook), same width, k, learning rate and seed everywhere; features
matched between consecutive checkpoints (decoder cosine and activation
correlation, Hungarian matching) into a lineage, across seeds by activation
correlation only, and related to the induction circuit.
"""

from interp_ext.sae_tracking.matching import LineageEvents, match_features, similarity_matrix
from interp_ext.sae_tracking.train import SAESettings, load_sae, sae_quality, train_sae
from interp_ext.sae_tracking.tracking import track_run

__all__ = ["LineageEvents", "SAESettings", "load_sae", "match_features", "sae_quality", "similarity_matrix", "track_run", "train_sae"]
