"""The bit-exact replay of real steps: it reproduces the saved checkpoint, and AdamW written
from a step's state is the real update."""

from __future__ import annotations

import pytest
import torch

from interp_ext.adamw import adamw_update, momentum_split
from interp_ext.training import train
from interp_ext.trajectory import Replay, walk
from tests.conftest import micro_config


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory, cache_dir):
    cfg = micro_config(steps=8, checkpoint_every=4)
    return train(
        cfg, tmp_path_factory.mktemp("replay") / "run", progress=False, cache_dir=cache_dir
    )


def test_replay_reproduces_the_saved_checkpoint_bit_for_bit(replay_run):
    replay = Replay(replay_run, 1, 0)
    steps: list = []
    walk(replay, 8, steps.append, verify=True)
    assert [s.step for s in steps] == list(range(8))
    last = steps[-1]
    # AdamW from the same state with the real gradient is the real update; the momentum split sums to it
    same = adamw_update(last, last.grad, replay_run.config.train)
    assert all(torch.equal(same[n], last.update[n]) for n in same)
    parts = momentum_split(last, replay_run.config.train)
    for n in last.update:
        total = parts["inherited"][n] + parts["fresh"][n] + parts["decay"][n]
        # the real update is a difference of float32 parameters: exact to a few ulp of theta
        ulp = torch.finfo(torch.float32).eps * (
            last.theta[n].abs() + (last.theta[n] + last.update[n]).abs()
        )
        assert ((total - last.update[n]).abs() <= 2 * ulp + 1e-12).all(), n


def test_adamw_update_reads_gradients_in_any_layout(replay_run):
    """torch's fused CPU AdamW misreads a gradient whose strides differ from its parameter's;
    gradients from torch.func come in transposed layouts and must give the same update."""
    last = Replay(replay_run, 1, 0).take()
    assert replay_run.config.train.fused_adamw
    transposed = {n: g.t().contiguous().t() if g.dim() == 2 else g for n, g in last.grad.items()}
    assert any(not g.is_contiguous() for g in transposed.values())
    same = adamw_update(last, transposed, replay_run.config.train)
    assert all(torch.equal(same[n], last.update[n]) for n in same)
