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
    sender, (r_layer, r_head) = (0, 1), (1, 0)
    q = torch.arange(S + 1, 2 * S + 1)

    def target(pattern):
        return float(pattern[:, r_head, q, q - S + 1].mean())

    delta = (
        task.clean_cache["z", 0][:, :, sender[1]] - task.corrupted_cache["z", 0][:, :, sender[1]]
    ) @ model.W_O[0, sender[1]]

    def add_to_key(x, hook):
        x[:, :, r_head] = x[:, :, r_head] + delta
        return x

    model.set_use_split_qkv_input(True)
    try:
        with model.hooks(fwd_hooks=[(get_act_name("k_input", r_layer), add_to_key)]):
            _, cache = model.run_with_cache(task.corrupted)
    finally:
        model.set_use_split_qkv_input(False)
    clean, corrupted = (
        target(task.clean_cache["pattern", 1]),
        target(task.corrupted_cache["pattern", 1]),
    )
    expected = (target(cache["pattern", 1]) - corrupted) / (clean - corrupted)
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
