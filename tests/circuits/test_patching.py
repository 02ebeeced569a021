import pytest

from circuits.patching import induction_task, patch_heads, patch_residual, path_patch
from tests.circuits.conftest import repeated_batch


@pytest.fixture(scope="module")
def task(hand_built):
    return induction_task(hand_built, repeated_batch(6), seed=0)


def test_metric_is_zero_corrupted_one_clean(hand_built, task):
    assert task.ld_clean > task.ld_corrupted + 1
    assert float(task.metric(hand_built(task.clean).detach())) == pytest.approx(1.0)
    assert float(task.metric(hand_built(task.corrupted).detach())) == pytest.approx(0.0, abs=1e-6)


def test_head_patching_matches_a_manual_hook(hand_built, task):
    actual = patch_heads(hand_built, task)
    for layer, head in [(0, 0), (1, 0), (1, 1)]:

        def hook(z, hook, head=head, layer=layer):
            z[:, :, head] = task.clean_cache["z", layer][:, :, head]
            return z

        logits = hand_built.run_with_hooks(
            task.corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)]
        )
        assert actual[layer, head].item() == pytest.approx(float(task.metric(logits)), abs=1e-5)
    # the induction head's output restores the clean run; the zero head changes nothing
    assert actual[1, 0] > 0.95 and abs(actual[1, 1]) < 1e-5


def test_residual_patching_shape_and_endpoints(hand_built, task):
    res = patch_residual(hand_built, task)
    assert res.shape == (2, task.clean.shape[1])
    # the first-copy positions carry what induction copies
    s = (task.clean.shape[1] - 1) // 2
    assert res[:, 0].abs().max() < 1e-5  # BOS is identical in both inputs
    assert float(res[0, 1 : s + 1].sum()) > 0.1


def test_path_patching_self_and_unconnected_do_nothing(hand_built, task):
    assert path_patch(hand_built, task, "L1H0", [("L1H0", "k")]) == pytest.approx(0.0, abs=1e-6)
    assert path_patch(hand_built, task, "L1H0", [("L0H0", "q")]) == pytest.approx(0.0, abs=1e-6)


def test_path_patching_along_every_path_equals_full_head_patch(hand_built, task):
    full = patch_heads(hand_built, task)
    receivers = [(f"L1H{h}", kind) for h in range(2) for kind in "qkv"] + [("resid_final", "")]
    assert path_patch(hand_built, task, "L0H0", receivers) == pytest.approx(
        float(full[0, 0]), abs=1e-5
    )
    # the prev-token head reaches the output only through the induction head's key:
    # L1H0's W_Q and W_V and the unembedding read the token slot, which L0H0 never writes
    k_only = path_patch(hand_built, task, "L0H0", [("L1H0", "k")])
    assert k_only == pytest.approx(float(full[0, 0]), abs=1e-5) and abs(k_only) > 0.02
    for kind in "qv":
        assert path_patch(hand_built, task, "L0H0", [("L1H0", kind)]) == pytest.approx(
            0.0, abs=1e-5
        )
