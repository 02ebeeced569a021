"""Circuits found by cause: the receiver-attention metric and key-path discovery on hand-wired models."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens.utilities import get_act_name

from circuits.discovery import discover_induction_circuit
from circuits.patching import induction_task, path_patch, path_patch_attention
from tests.circuits.conftest import S, repeated_batch


def test_one_exact_previous_token_head_is_found_alone(hand_built):
    found = discover_induction_circuit(hand_built, repeated_batch(8))
    assert found.circuit.components == ["L1H0", "L0H0"]
    assert found.circuit.roles == {"L1H0": "induction", "L0H0": "prev_token"}
    assert found.method == {"L1H0": "induction_score", "L0H0": "key_path"} and not found.fallback
    share = found.shares.set_index("sender").share
    assert share["L0H0"] > 0.95 and abs(share["L0H1"]) < 0.01
    assert found.mean_set_restoration > 0.95


def test_a_split_previous_token_function_needs_both_heads(hand_built_split):
    found = discover_induction_circuit(hand_built_split, repeated_batch(8))
    assert set(found.circuit.components) == {"L1H0", "L0H0", "L0H1"} and not found.fallback
    share = found.shares.set_index("sender").share
    # each alone restores part of the target attention, not the 80% the set must reach
    assert (share > 0.1).all() and (share < 0.8).all(), share
    assert found.mean_set_restoration >= 0.8


def test_no_sufficient_set_falls_back_to_the_whole_earlier_layer(hand_built_split):
    found = discover_induction_circuit(hand_built_split, repeated_batch(8), together=1.5)
    assert found.fallback and found.method["L0H0"] == found.method["L0H1"] == "fallback_whole_layer"


def test_attention_metric_equals_a_manual_hook_computation(hand_built_split):
    model = hand_built_split
    task = induction_task(model, repeated_batch(6), seed=3)
    delta = (task.clean_cache["z", 0][:, :, 1] - task.corrupted_cache["z", 0][:, :, 1]) @ model.W_O[
        0, 1
    ]
    expected = _key_patch_by_hooks(model, task, delta)
    actual = path_patch_attention(model, task, "L0H1", "L1H0", "k")
    assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6) and 0.1 < actual < 0.9


def test_attention_metric_is_nan_for_a_receiver_that_is_no_induction_head(random_attn_only):
    task = induction_task(random_attn_only, repeated_batch(6), seed=3)
    assert math.isnan(path_patch_attention(random_attn_only, task, "L0H2", "L1H1", "k"))


def test_logit_metric_cannot_see_a_key_path_the_attention_metric_can(hand_built):
    task = induction_task(hand_built, repeated_batch(6), seed=0)
    logit = path_patch(hand_built, task, "L0H0", [("L1H0", "k")])
    attention = path_patch_attention(hand_built, task, "L0H0", "L1H0", "k")
    assert abs(logit) < 0.1  # the restored attention lands on corrupted tokens
    assert attention > 0.95


def test_a_model_without_an_induction_head_falls_back_to_its_best_head(random_attn_only):
    found = discover_induction_circuit(random_attn_only, repeated_batch(6))
    heads = [c for c, role in found.circuit.roles.items() if role == "induction"]
    assert len(heads) == 1 and found.method[heads[0]] == "best_score"


def test_an_mlp_between_head_and_key_is_found_as_the_sender_and_its_route(hand_built_mlp):
    found = discover_induction_circuit(hand_built_mlp, repeated_batch(8))
    assert found.circuit.components == ["L1H0", "L0MLP"] and not found.fallback
    assert found.circuit.roles["L0MLP"] == "key_mlp" and found.method["L0MLP"] == "key_path"
    share = found.shares.set_index("sender").share
    assert share["L0MLP"] > 0.95 and abs(share["L0H0"]) < 0.01  # the head's direct path: nothing
    route = found.routes.set_index("sender").share
    assert route["L0H0"] > 0.95 and abs(route["L0H1"]) < 0.01 and abs(route["EMBED"]) < 0.01
    assert route["all_heads"] > 0.95


def test_a_super_additive_pair_below_any_share_filter_is_found(hand_built_weak_pair):
    found = discover_induction_circuit(hand_built_weak_pair, repeated_batch(8))
    share = found.shares.set_index("sender").share
    assert (share < 0.1).all(), share  # each alone would not pass a 10% candidate filter
    assert set(found.circuit.components) == {"L1H0", "L0H0", "L0H1"} and not found.fallback
    assert found.mean_set_restoration > 0.95


def test_a_search_bounded_below_the_needed_size_falls_back(hand_built_weak_pair):
    found = discover_induction_circuit(hand_built_weak_pair, repeated_batch(8), max_size=1)
    assert found.fallback and found.subsets_tried == 2
    assert found.best_by_size[1] < 0.1  # neither head alone


def _target(pattern, r_head):
    q = torch.arange(S + 1, 2 * S + 1)
    return float(pattern[:, r_head, q, q - S + 1].mean())


def _key_patch_by_hooks(model, task, delta, r_layer=1, r_head=0):
    """The receiver-attention metric with ``delta`` added to the receiver's key input, by TransformerLens hooks."""

    def add_to_key(x, hook):
        x[:, :, r_head] = x[:, :, r_head] + delta
        return x

    model.set_use_split_qkv_input(True)
    try:
        with model.hooks(fwd_hooks=[(get_act_name("k_input", r_layer), add_to_key)]):
            _, cache = model.run_with_cache(task.corrupted)
    finally:
        model.set_use_split_qkv_input(False)
    clean = _target(task.clean_cache["pattern", r_layer], r_head)
    corrupted = _target(task.corrupted_cache["pattern", r_layer], r_head)
    return (_target(cache["pattern", r_layer], r_head) - corrupted) / (clean - corrupted)


@pytest.fixture
def perturbed_mlp(hand_built_mlp):
    """The MLP model with every weight jittered, so that no share sits at exactly 0 or 1."""
    import copy

    model = copy.deepcopy(hand_built_mlp)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen) * (p.abs().max() + 0.1))
    return model


def test_mlp_sender_and_route_equal_a_manual_transformerlens_hook_computation(perturbed_mlp):
    model = perturbed_mlp
    task = induction_task(model, repeated_batch(6), seed=3)
    mlp_delta = task.clean_cache["mlp_out", 0] - task.corrupted_cache["mlp_out", 0]
    expected = _key_patch_by_hooks(model, task, mlp_delta)
    assert path_patch_attention(model, task, "L0MLP", "L1H0", "k") == pytest.approx(
        expected, rel=1e-5, abs=1e-6
    )
    # the route: the head's clean-minus-corrupted output added at hook_mlp_in only
    head_delta = (
        task.clean_cache["z", 0][:, :, 1] - task.corrupted_cache["z", 0][:, :, 1]
    ) @ model.W_O[0, 1]
    model.set_use_hook_mlp_in(True)
    try:
        with model.hooks(fwd_hooks=[(get_act_name("mlp_in", 0), lambda x, hook: x + head_delta)]):
            _, cache = model.run_with_cache(
                task.corrupted, names_filter=[get_act_name("mlp_out", 0)]
            )
    finally:
        model.set_use_hook_mlp_in(False)
    route_delta = cache["mlp_out", 0] - task.corrupted_cache["mlp_out", 0]
    expected = _key_patch_by_hooks(model, task, route_delta)
    actual = path_patch_attention(model, task, "L0H1>L0MLP", "L1H0", "k")
    assert actual == pytest.approx(expected, rel=1e-4, abs=1e-5) and abs(actual) > 1e-3


def test_a_route_must_end_in_an_mlp_at_or_after_its_sender(hand_built_mlp):
    task = induction_task(hand_built_mlp, repeated_batch(4), seed=0)
    with pytest.raises(ValueError, match="route"):
        path_patch_attention(hand_built_mlp, task, "L1H0>L0MLP", "L1H0", "k")
