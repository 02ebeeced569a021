"""SAE tracking: recovery of a known dictionary, matching, sae-lens reload."""

from __future__ import annotations

import pytest
import torch

from interp_ext.sae_tracking import (
    SAESettings,
    load_sae,
    match_features,
    sae_quality,
    similarity_matrix,
    train_sae,
)
from interp_ext.sae_tracking.train import save_sae


def synthetic(n: int = 12_000, d: int = 16, m: int = 24, active: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(m, d, generator=gen)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, m)
    idx = torch.stack([torch.randperm(m, generator=gen)[:active] for _ in range(n)])
    codes.scatter_(1, idx, torch.rand(n, active, generator=gen) * 2 + 0.5)
    return codes @ dictionary, dictionary


@pytest.fixture(scope="module")
def trained():
    acts, dictionary = synthetic()
    sae = train_sae(acts, SAESettings(width=32, k=2, lr=3e-3, epochs=15, batch_size=128))
    return sae, acts, dictionary


def test_sae_recovers_ground_truth_dictionary(trained):
    sae, acts, dictionary = trained
    w = sae.W_dec.detach()
    cos = (
        torch.nn.functional.normalize(dictionary, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
    )
    assert float(cos.max(1).values.mean()) > 0.9
    q = sae_quality(sae, acts)
    assert q["l0"] == pytest.approx(2.0, abs=1e-6)  # TopK fixes L0 at k
    assert q["explained_variance"] > 0.8
    assert 0 <= q["dead_fraction"] < 0.5


def test_metrics_are_right_on_a_known_case(trained):
    sae, acts, _ = trained
    with torch.no_grad():
        feats = sae.encode(acts)
        recon = sae.decode(feats)
    expected_ev = 1 - ((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    q = sae_quality(sae, acts)
    assert q["explained_variance"] == pytest.approx(float(expected_ev), rel=1e-5)
    assert q["dead_fraction"] == pytest.approx(float(((feats > 0).sum(0) == 0).float().mean()))


def test_saved_sae_reloads_with_sae_lens(trained, tmp_path):
    import copy

    from sae_lens import SAE

    sae, acts, _ = trained
    sae = copy.deepcopy(sae)  # saving folds the decoder norm into the weights
    with torch.no_grad():
        expected_feats = sae.encode(acts[:100])
        expected = sae.decode(expected_feats)
    save_sae(sae, tmp_path / "sae")
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    assert isinstance(loaded, SAE)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.decode(loaded.encode(acts[:100])), expected, rtol=1e-4, atol=1e-5
        )
        assert torch.equal(loaded.encode(acts[:100]) > 0, expected_feats > 0)
        torch.testing.assert_close(load_sae(tmp_path / "sae").W_dec, loaded.W_dec)


def test_permuted_perturbed_dictionary_matches_back_exactly():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(40, 16, generator=gen)
    perm = torch.randperm(40, generator=gen)
    w2 = w[perm] + 0.05 * torch.randn(40, 16, generator=gen)
    events = match_features(similarity_matrix(w, w2, method="decoder"), threshold=0.7)
    persisted = events.pairs[events.pairs.event == "persisted"]
    assert events.counts == {
        "n_persisted": 40,
        "n_born": 0,
        "n_died": 0,
        "n_split": 0,
        "n_merged": 0,
    }
    # feature perm[j] of w is feature j of w2
    assert all(perm[j] == i for i, j in zip(persisted.feature_from, persisted.feature_to))


def test_split_and_merge_are_reported():
    gen = torch.Generator().manual_seed(1)
    w = torch.nn.functional.normalize(torch.randn(10, 32, generator=gen), dim=1)
    nudge = torch.nn.functional.normalize(torch.randn(2, 32, generator=gen), dim=1)
    split = torch.cat(
        [w[1:], w[:1] + 0.4 * nudge[:1], w[:1] - 0.4 * nudge[:1]]
    )  # feature 0 -> two nearby directions
    events = match_features(similarity_matrix(w, split, method="decoder"), threshold=0.7)
    assert (
        events.counts["n_split"] == 1
        and events.counts["n_persisted"] == 10
        and events.counts["n_born"] == 0
    )
    merged = match_features(similarity_matrix(split, w, method="decoder"), threshold=0.7)
    assert merged.counts["n_merged"] == 1 and merged.counts["n_died"] == 0


def test_too_few_tokens_warns_with_numbers():
    acts, _ = synthetic(n=200)
    with pytest.warns(RuntimeWarning, match="only 200 activation vectors for an SAE of width 64"):
        train_sae(acts, SAESettings(width=64, k=2, epochs=1, batch_size=50))
