"""SAE tracking: recovery of a known dictionary, matching, sae-lens reload."""

from __future__ import annotations

import sys
import warnings

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
from interp_ext.sae_tracking.train import _fit, ce_recovered, save_sae


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


@pytest.fixture(scope="module")
def tiny_model_and_sae():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=12,
        d_head=8,
        n_heads=2,
        d_mlp=32,
        d_vocab=40,
        act_fn="relu",
        normalization_type="LN",
        initializer_range=0.5,  # peaked logits: clean CE far from the zero-ablated (uniform) one
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    tokens = torch.randint(
        0, cfg.d_vocab, (80, cfg.n_ctx), generator=torch.Generator().manual_seed(0)
    )
    hook = "blocks.0.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].reshape(-1, cfg.d_model)
    sae = train_sae(acts, SAESettings(width=32, k=4, lr=3e-3, epochs=3, batch_size=64), hook)
    return model, sae, tokens, hook, acts


def test_quality_matches_brute_force_on_a_tiny_transformer(tiny_model_and_sae):
    model, sae, tokens, hook, acts = tiny_model_and_sae
    with torch.no_grad():
        feats = sae.encode(acts)
        recon = sae.decode(feats).double()
    x = acts.double()
    resid = sum(float(((x[i] - recon[i]) ** 2).sum()) for i in range(x.shape[0]))
    mean = x.mean(0)
    total = sum(float(((x[i] - mean) ** 2).sum()) for i in range(x.shape[0]))
    active = [[j for j in range(feats.shape[1]) if feats[i, j] > 0] for i in range(feats.shape[0])]
    ever = {j for row in active for j in row}
    q = sae_quality(sae, acts)
    assert q["explained_variance"] == pytest.approx(1 - resid / total, rel=1e-5)
    assert q["l0"] == pytest.approx(sum(map(len, active)) / len(active), rel=1e-6)
    assert q["dead_fraction"] == pytest.approx(1 - len(ever) / feats.shape[1], abs=1e-9)

    def ce(fwd_hooks) -> float:
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=fwd_hooks)
        logp = torch.log_softmax(logits.double(), dim=-1)[:, :-1]
        return float(-logp.gather(-1, tokens[:, 1:, None]).mean())

    clean = ce([])
    with_sae = ce([(hook, lambda act, hook: sae.decode(sae.encode(act)))])
    zeroed = ce([(hook, lambda act, hook: torch.zeros_like(act))])
    assert abs(zeroed - clean) > 0.1  # a ratio of well-separated losses
    expected = (zeroed - with_sae) / (zeroed - clean)
    assert ce_recovered(model, sae, tokens, hook) == pytest.approx(expected, rel=1e-5)


def test_constant_activations_have_no_explained_variance(trained):
    sae, acts, _ = trained
    q = sae_quality(sae, acts[:1].repeat(10, 1))
    assert q["explained_variance"] != q["explained_variance"]  # NaN


def test_quiet_fit_hides_the_bar_but_keeps_warnings(capsys):
    class Trainer:
        def fit(self):
            print("Training SAE", file=sys.stderr)
            warnings.warn("raised during the fit", UserWarning, stacklevel=1)

    with pytest.warns(UserWarning, match="raised during the fit"):
        _fit(Trainer(), progress=False)
    assert capsys.readouterr().err == ""
    with pytest.warns(UserWarning, match="raised during the fit"):
        _fit(Trainer(), progress=True)
    assert "Training SAE" in capsys.readouterr().err


def test_train_sae_shows_sae_lens_bar_only_with_progress(capsys):
    acts, _ = synthetic(n=512)
    settings = SAESettings(width=16, k=2, epochs=1, batch_size=64, min_tokens_per_latent=1)
    train_sae(acts, settings)
    assert "Training SAE" not in capsys.readouterr().err
    train_sae(acts, settings, progress=True)
    assert "Training SAE" in capsys.readouterr().err
