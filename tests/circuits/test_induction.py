import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.head_detector import (
    compute_head_attention_similarity_score,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

from circuits import Circuit, CircuitError
from circuits.circuit import all_heads
from circuits.induction import (
    ablation_check,
    attention_scores,
    composition_baseline,
    copying_scores,
    detect_induction_heads,
    formation_step,
    head_scores,
    previous_token_partners,
)
from tests.circuits.conftest import S, repeated_batch


@pytest.mark.parametrize("fixture", ["hand_built", "random_attn_only"])
def test_attention_scores_agree_with_transformer_lens_head_detector(fixture, request):
    model = request.getfixturevalue(fixture)
    tokens = repeated_batch(4)
    actual = attention_scores(model, tokens)
    _, cache = model.run_with_cache(tokens)
    second_half = torch.zeros(tokens.shape[1], 1)
    second_half[S + 1 :] = 1  # SPEC: average over the S query positions of the second copy
    for name, builder in (
        ("induction_score", get_induction_head_detection_pattern),
        ("prev_token_score", get_previous_token_head_detection_pattern),
    ):
        expected = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
        for b in range(tokens.shape[0]):
            detection = builder(tokens[b : b + 1].cpu()) * second_half
            for layer in range(model.cfg.n_layers):
                for head in range(model.cfg.n_heads):
                    pattern = cache["pattern", layer][b, head]
                    score = compute_head_attention_similarity_score(
                        pattern,
                        detection,
                        exclude_bos=False,
                        exclude_current_token=False,
                        error_measure="mul",
                    )
                    # head_detector divides by all query rows; ours by the S second-copy rows
                    expected[layer, head] += score * tokens.shape[1] / S / tokens.shape[0]
        torch.testing.assert_close(actual[name], expected, rtol=1e-4, atol=1e-5)


def test_hand_built_circuit_is_detected(hand_built):
    tokens = repeated_batch(8)
    scores = head_scores(hand_built, tokens)

    def get(m, c):
        return float(scores[(scores.metric == m) & (scores.component == c)]["value"].iloc[0])

    assert get("induction_score", "L1H0") > 0.95
    assert get("prev_token_score", "L0H0") > 0.95
    assert detect_induction_heads(scores) == ["L1H0"]
    assert previous_token_partners(scores, ["L1H0"]) == ["L0H0"]
    right = get("k_composition", "L0H0->L1H0")
    baseline = composition_baseline(hand_built.cfg.d_model, hand_built.cfg.d_head)
    # rank-V identity maps score 1/sqrt(V) (the bound for that rank); random weights score less
    assert right == pytest.approx(1 / np.sqrt(20), rel=1e-4) and right > 1.5 * baseline
    assert not get("k_composition", "L0H1->L1H0") > 0  # zero head: 0 or undefined
    assert get("copying_score", "L1H0") == pytest.approx(1.0, abs=1e-4)  # W_OV = identity on tokens
    abl = ablation_check(hand_built, tokens, ["L1H0"], n_random=3)
    assert abl["detected"] > 1.0 and abl["random"] < 0.1 * abl["detected"]
    assert abl["random_size"] == 1


def test_ablation_control_shrinks_when_few_heads_are_left(hand_built):
    """A circuit covering most heads (a small model whose whole layer is detected) leaves fewer
    heads than it has: the control ablates those left, and is NaN when none are."""
    tokens = repeated_batch(4)
    heads = [str(h) for h in all_heads(hand_built)]
    abl = ablation_check(hand_built, tokens, heads[1:], n_random=2)
    assert abl["random_size"] == 1 and np.isfinite(abl["random"])
    abl = ablation_check(hand_built, tokens, heads, n_random=2)
    assert abl["random_size"] == 0 and np.isnan(abl["random"]) and abl["detected"] > 0


def test_random_model_has_no_induction_head(random_attn_only):
    scores = head_scores(random_attn_only, repeated_batch(8))
    assert detect_induction_heads(scores) == []
    assert scores[scores.metric == "induction_score"]["value"].max() < 0.3


def test_copying_score_matches_dense_eigenvalues(random_attn_only):
    model = random_attn_only
    tok = torch.arange(12)
    actual = copying_scores(model, tok)
    full = model.W_E[tok] @ model.W_V[1, 2] @ model.W_O[1, 2] @ model.W_U[:, tok]
    eig = np.linalg.eigvals(full.detach().double().numpy())
    assert actual[1, 2].item() == pytest.approx(eig.sum().real / np.abs(eig).sum(), rel=1e-4)


def test_formation_step_is_steepest_rise():
    steps = np.array([0, 100, 200, 300, 400])
    assert formation_step(steps, np.array([0.05, 0.06, 0.1, 0.6, 0.65])) == 250.0


def test_one_layer_model_gives_empty_result_with_message(caplog):
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, d_head=8, n_heads=2, d_vocab=20, n_ctx=21, attn_only=True
    )
    frame = head_scores(HookedTransformer(cfg), repeated_batch(2))
    assert frame.empty and list(frame.columns) == ["component", "metric", "value"]
    assert "two layers" in caplog.text


def test_circuit_masks_slices_and_json(hand_built, tmp_path):
    circuit = Circuit("ind", ["L1H0", "L0H0"], {"L1H0": "induction"}).with_rest()
    masks = circuit.flat_masks(hand_built)
    total = sum(p.numel() for p in hand_built.parameters())
    assert sum(int(m.sum()) for m in masks.values()) == total  # a partition
    per = circuit.masks(hand_built)
    assert (
        per["L1H0"]["blocks.1.attn.W_Q"][0].all() and not per["L1H0"]["blocks.1.attn.W_Q"][1].any()
    )
    assert (
        circuit.n_params(hand_built)["L0H0"]
        == 4 * hand_built.cfg.d_model * hand_built.cfg.d_head + 3 * hand_built.cfg.d_head
    )
    assert "blocks.1.attn.hook_z" in circuit.hook_names("L1H0")
    path = tmp_path / "c.json"
    circuit.to_json(path)
    assert Circuit.from_json(path) == circuit


def test_unknown_component_lists_valid_ones(hand_built):
    with pytest.raises(CircuitError, match="L1H1"):
        Circuit("bad", ["L7H0"]).masks(hand_built)
