"""Basis-free Stream 2 (linear CKA of per-batch gradient Grams) and the split-half noise floors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from interp_ext.families.stream2 import grams_of
from interp_ext.geometry import spectral
from interp_ext.geometry.streams import (
    cka_alignment,
    cross_seed_alignment,
    head_patterns,
    match_heads,
    shuffled_null,
)
from tests.geometry.test_geometry import small_model


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def symmetric_twin(model, seed: int = 0):
    """A function-identical twin: per head, random rotations of the QK and OV d_head bases; the heads
    of each layer permuted; the MLP neurons permuted."""
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in twin.blocks:
            a = block.attn
            for h in range(model.cfg.n_heads):
                r_qk, r_ov = (
                    random_orthogonal(model.cfg.d_head, gen),
                    random_orthogonal(model.cfg.d_head, gen),
                )
                for w in (a.W_Q, a.W_K):
                    w[h] = w[h] @ r_qk
                for b in (a.b_Q, a.b_K):
                    b[h] = b[h] @ r_qk
                a.W_V[h] = a.W_V[h] @ r_ov
                a.b_V[h] = a.b_V[h] @ r_ov
                a.W_O[h] = r_ov.T @ a.W_O[h]
            perm = torch.randperm(model.cfg.n_heads, generator=gen)
            for w in (a.W_Q, a.W_K, a.W_V, a.W_O, a.b_Q, a.b_K, a.b_V):
                w.copy_(w[perm])
            neurons = torch.randperm(model.cfg.d_mlp, generator=gen)
            block.mlp.W_in.copy_(block.mlp.W_in[:, neurons])
            block.mlp.b_in.copy_(block.mlp.b_in[neurons])
            block.mlp.W_out.copy_(block.mlp.W_out[neurons])
    return twin


@pytest.fixture(scope="module")
def twin_setup():
    torch.manual_seed(0)
    model = small_model(seed=3)
    twin = symmetric_twin(model)
    batches = torch.randint(0, 11, (10, 3, 6))
    return model, twin, batches


def test_twin_computes_the_same_function(twin_setup):
    model, twin, batches = twin_setup
    torch.testing.assert_close(twin(batches[0]), model(batches[0]), rtol=0, atol=1e-10)


def test_cka_of_a_symmetric_twin_is_one_where_raw_cosines_are_not(twin_setup):
    model, twin, batches = twin_setup
    grams = [grams_of(m, batches, "all") for m in (model, twin)]
    tokens = batches[:2].flatten(0, 1)
    perms = {(0, 1): match_heads(head_patterns(model, tokens), head_patterns(twin, tokens))}
    cka = cka_alignment(grams, perms)
    assert {"cka", "cka_head", "cka_heads"} <= set(cka.metric)
    assert len(cka[cka.metric == "cka_head"]) == model.cfg.n_layers * model.cfg.n_heads
    np.testing.assert_allclose(cka.value, 1.0, atol=1e-6)
    raw = cross_seed_alignment([model, twin], batches)
    attn = raw[
        (raw.metric == "cross_seed_alignment")
        & raw.component.isin(["attn_qkv", "attn_out", "mlp_in", "mlp_out"])
    ]
    assert (attn.value < 0.9).all(), attn


def test_cka_is_one_for_gradients_equal_up_to_rotation():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(12, 30, generator=gen, dtype=torch.float64)
    rotated = g @ random_orthogonal(30, gen)
    assert spectral.linear_cka(g @ g.T, rotated @ rotated.T) == pytest.approx(1.0, abs=1e-12)
    other = torch.randn(12, 30, generator=gen, dtype=torch.float64)
    assert spectral.linear_cka(g @ g.T, other @ other.T) < 0.9


def test_unbiased_hsic_is_the_u_statistic_over_distinct_quadruples():
    """Song et al. 2012: HSIC_u is the mean over ordered distinct (i, j, q, r) of
    K_ij L_ij + K_ij L_qr - 2 K_ij L_iq, computed here by brute force."""
    import itertools

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y += 0.5 * torch.randn(7, 4, generator=gen, dtype=torch.float64)
    k, lk = (x @ x.T).numpy(), (y @ y.T).numpy()
    terms = [
        k[i, j] * lk[i, j] + k[i, j] * lk[q, r] - 2 * k[i, j] * lk[i, q]
        for i, j, q, r in itertools.permutations(range(7), 4)
    ]
    got = spectral.unbiased_hsic(torch.from_numpy(k), torch.from_numpy(lk))
    assert got == pytest.approx(float(np.mean(terms)), rel=1e-12)
    with pytest.raises(ValueError):
        spectral.unbiased_hsic(torch.eye(3), torch.eye(3))


def test_unbiased_cka_has_no_floor_from_the_diagonal():
    """Nearly orthogonal per-batch gradients of similar norm: the biased CKA of two unrelated
    sets reads high (the diagonal dominates both centred Grams), the unbiased one near 0; both
    read 1 for gradients equal up to a rotation."""
    gen = torch.Generator().manual_seed(5)
    biased, unbiased = [], []
    for _ in range(20):
        a = torch.randn(16, 4000, generator=gen, dtype=torch.float64)
        b = torch.randn(16, 4000, generator=gen, dtype=torch.float64)
        biased.append(spectral.linear_cka(a @ a.T, b @ b.T))
        unbiased.append(spectral.linear_cka_unbiased(a @ a.T, b @ b.T))
    assert np.mean(biased) > 0.9
    assert abs(np.mean(unbiased)) < 0.05
    g = torch.randn(12, 30, generator=gen, dtype=torch.float64)
    rotated = g @ random_orthogonal(30, gen)
    assert spectral.linear_cka_unbiased(g @ g.T, rotated @ rotated.T) == pytest.approx(
        1.0, abs=1e-12
    )


def test_untrained_models_score_at_the_untrained_null():
    batches = torch.randint(0, 11, (10, 3, 6), generator=torch.Generator().manual_seed(2))
    models = [small_model(seed=s) for s in range(6)]
    grams = [grams_of(m, batches, "all") for m in models]
    values = {}
    for i, j in [(0, 1), (2, 3), (4, 5), (1, 2), (3, 4)]:
        pair = cka_alignment([grams[i], grams[j]])
        for r in pair.itertuples():
            values.setdefault(r.component, []).append(r.value)
    for block, v in values.items():
        null = np.array(v[1:])  # other independent pairs
        assert abs(v[0] - null.mean()) <= 4 * null.std(ddof=1) + 0.05, (block, v)


def test_split_half_floor_uses_disjoint_halves():
    gen = torch.Generator().manual_seed(3)
    n, k = 50, 2
    basis = torch.linalg.qr(torch.randn(n, 4, generator=gen, dtype=torch.float64))[0]
    first = (
        torch.randn(8, 2, generator=gen, dtype=torch.float64) @ basis[:, :2].T
    )  # spans directions 0, 1
    second = (
        torch.randn(8, 2, generator=gen, dtype=torch.float64) @ basis[:, 2:].T
    )  # spans directions 2, 3
    assert spectral.split_half_floor(torch.cat([first, second]), k)[
        "overlap_floor"
    ] == pytest.approx(0.0, abs=1e-10)
    assert spectral.split_half_floor(torch.cat([first, first * 2]), k)[
        "overlap_floor"
    ] == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("centered", [False, True])
def test_split_half_floor_from_the_full_gram_equals_the_halves_own(centered):
    """The floor read from the diagonal blocks of the full Gram matrix (what geometry passes) equals
    the one that forms each half's Gram itself."""
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(12, 300, generator=gen, dtype=torch.float64) + 0.3
    direct = spectral.split_half_floor(g, 3, centered)
    reused = spectral.split_half_floor(g, 3, centered, spectral.gram(g))
    assert reused == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_overlaps_of_pure_noise_gradients_sit_at_their_floor():
    """Per-batch gradients that are i.i.d. noise: U_t and U_s from two checkpoints overlap no more
    than two halves of one checkpoint do."""
    gen = torch.Generator().manual_seed(4)
    b, n, k = 32, 4000, 4
    now, before = (torch.randn(b, n, generator=gen, dtype=torch.float64) for _ in range(2))
    u = spectral.top_eigenvectors(now, *spectral.gram_eigen(now), k)
    v = spectral.top_eigenvectors(before, *spectral.gram_eigen(before), k)
    overlap = spectral.subspace_overlap(u, v)
    floor = spectral.split_half_floor(now, k)["overlap_floor"]
    assert overlap == pytest.approx(k / n, abs=3e-3) and floor == pytest.approx(k / n, abs=3e-3)
    assert abs(overlap - floor) < 3e-3


def test_gradient_snr_from_the_gram_matrix():
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(16, 40, generator=gen, dtype=torch.float64) + 3.0
    mean = g.mean(0)
    expected = float(mean @ mean) / float(((g - mean) ** 2).sum(1).mean())
    assert spectral.gradient_snr(g) == pytest.approx(expected, rel=1e-12)


def test_seed_level_rows_give_each_pair_and_each_seed(twin_setup):
    """Three seeds, the third a function-identical twin of the first: the pair (first, twin) reads 1,
    the other pairs less; the mean over pairs and each seed's mean over its pairs follow from the
    pair rows."""
    model, twin, batches = twin_setup
    other = small_model(seed=8)
    models, seeds = [model, other, twin], [5, 7, 9]
    grams = [grams_of(m, batches, "all") for m in models]
    tokens = batches[:2].flatten(0, 1)
    patterns = [head_patterns(m, tokens) for m in models]
    perms = {(i, j): match_heads(patterns[i], patterns[j]) for i, j in [(0, 1), (0, 2), (1, 2)]}
    rows = cka_alignment(grams, perms, seeds)
    pair = rows[rows.metric == "cka_pair"]
    assert set(zip(pair.seed, pair.partner)) == {(5, "7"), (5, "9"), (7, "9")}
    twins = pair[(pair.seed == 5) & (pair.partner == "9")]
    np.testing.assert_allclose(twins.value, 1.0, atol=1e-6)
    assert (pair[pair.seed == 7].value < 0.99).any()
    for block, by_block in pair.groupby("component"):
        mean = rows[(rows.metric == "cka") & (rows.component == block)].value.item()
        assert mean == pytest.approx(by_block.value.mean(), abs=1e-12)
        direct = spectral.linear_cka(grams[1][block], grams[2][block])
        assert by_block[by_block.seed == 7].value.item() == pytest.approx(direct, abs=1e-12)
        seed_rows = rows[(rows.metric == "cka_seed") & (rows.component == block)]
        for s in seeds:
            theirs = by_block[(by_block.seed == s) | (by_block.partner == str(s))].value
            assert seed_rows[seed_rows.seed == s].value.item() == pytest.approx(theirs.mean())
    heads = rows[rows.metric == "cka_heads_pair"]
    assert len(heads) == 3 * model.cfg.n_layers
    np.testing.assert_allclose(
        heads[(heads.seed == 5) & (heads.partner == "9")].value, 1.0, atol=1e-6
    )
    null = shuffled_null(grams, 2, seeds=seeds)
    assert set(null.metric) == {
        "cka_null_shuffled",
        "cka_null_shuffled_pair",
        "cka_null_shuffled_seed",
    }


def test_stream2_family_writes_the_seed_level_rows(micro_run):
    """Through the runner: every pair of the run's seeds at every checkpoint, keyed apart from rows
    of the revision that lacked them."""
    from interp_ext.families.stream2 import Stream2Settings
    from interp_ext.measurement.runner import measure

    settings = Stream2Settings(n_batches=4, null_models=0, shuffles=1)
    assert settings.revision == 2
    measure(micro_run, settings, progress=False)
    rows = micro_run.metrics("stream2")
    pair = rows[rows.metric == "cka_pair"]
    seeds = micro_run.seeds
    assert set(pair.step) == set(micro_run.steps)
    assert set(zip(pair.seed, pair.partner)) == {(seeds[0], str(seeds[1]))}
    both = rows[rows.metric == "cka"].merge(pair, on=["step", "component"])
    np.testing.assert_allclose(both.value_x, both.value_y)
    per_seed = rows[rows.metric == "cka_seed"]
    assert set(per_seed.seed) == set(seeds) and (rows[rows.metric == "cka"].seed == -1).all()
    # the unbiased estimator's rows stand beside the biased ones, block for block
    unbiased = rows[rows.metric == "cka_unbiased_pair"]
    assert set(zip(unbiased.step, unbiased.component)) == set(zip(pair.step, pair.component))
    assert {"cka_null_shuffled_unbiased", "cka_heads_unbiased"} <= set(rows.metric)
    from interp_ext.families.stream2.report import seed_level_cka

    lines = seed_level_cka(rows, ["attn_qkv"])
    last = [line for line in lines if line.startswith(f"| {max(micro_run.steps)} |")]
    excess = per_seed[(per_seed.component == "attn_qkv") & (per_seed.step == max(micro_run.steps))]
    null = rows[(rows.metric == "cka_null_shuffled_seed") & (rows.component == "attn_qkv")]
    null = null[null.step == max(micro_run.steps)].set_index("seed").value
    above = sum(r.value > null[r.seed] for r in excess.itertuples())
    assert len(last) == 1 and f"{above}/{len(seeds)}" in last[0]


def test_fixed_composition_batches_key_their_own_rows(micro_run, monkeypatch):
    """With ``composition=fixed`` Stream 2 compares seeds on fixed-composition batches (formed here,
    not read from the geometry family's Grams of the probe batches), under an id of its own, while
    the default keeps the id rows were made under before the setting existed."""
    from interp_ext.families import stream2 as fam
    from interp_ext.measurement.runner import measure

    plain = fam.Stream2Settings(n_batches=4, null_models=0, shuffles=1)
    fixed = fam.Stream2Settings(n_batches=4, null_models=0, shuffles=1, composition="fixed")
    assert "composition" not in plain.keyed() and fixed.id != plain.id
    assert fam.Stream2().prepare(micro_run, fixed).geometry == "none"
    asked = []
    real = fam.fixed_composition_batches

    def spy(run, n, b):
        asked.append((n, b))
        return real(run, n, b)

    monkeypatch.setattr(fam, "fixed_composition_batches", spy)
    measure(micro_run, fixed, progress=False)
    rows = micro_run.metrics("stream2")
    mine = rows[rows.settings == fam.Stream2().prepare(micro_run, fixed).id]
    assert set(mine.step) == set(micro_run.steps) and "cka_unbiased" in set(mine.metric)
    assert asked and set(asked) == {(4, micro_run.config.data.probe_batch_size)}
