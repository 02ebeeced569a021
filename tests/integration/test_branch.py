"""Branches: a run's seeds continued from a checkpoint, equal to the run bit for bit without an
intervention; a learning-rate multiplier that changes only what it names (against a hand-written
AdamW with the mask); an ablation hook; bad input through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from circuits.circuit import Circuit
from interp_ext import measure, open_run
from interp_ext.adamw import adamw, set_adamw_state
from interp_ext.branch import BranchError, Interventions, branch
from interp_ext.families import InductionSettings
from interp_ext.run.checkpoints import load_checkpoint
from interp_ext.training import train
from tests.conftest import micro_config


@pytest.fixture(scope="module")
def parent(tmp_path_factory, cache_dir):
    cfg = micro_config(steps=8, checkpoint_every=4, n_seeds=3)
    return train(
        cfg, tmp_path_factory.mktemp("parent") / "run", progress=False, cache_dir=cache_dir
    )


def test_a_branch_without_intervention_equals_the_run_bit_for_bit(parent, tmp_path):
    made = branch(parent, [0, 2], 4, 4, tmp_path / "b", progress=False)
    assert made.seeds == [0, 2] and made.steps_for(2) == [4, 8]
    for seed in (0, 2):
        mine = load_checkpoint(made.layout.checkpoint(seed, 8))
        theirs = load_checkpoint(parent.layout.checkpoint(seed, 8))
        for part in ("params", "exp_avg", "exp_avg_sq"):
            for name, t in theirs[part].items():
                assert torch.equal(mine[part][name], t), (seed, part, name)
        assert mine["adam_step"] == theirs["adam_step"]
    record = json.loads(made.layout.branch.read_text())
    assert record["from"] == 4 and record["seeds"] == [0, 2]
    assert record["parent"] == str(parent.path.resolve())
    # every family reads it as a run
    rows = measure(made, InductionSettings(), progress=False)
    assert set(rows.seed) >= {0, 2}


def hand_written(parent, seed, start, stop, frozen_masks, moments):
    """The seed's plain model and the run's AdamW from the checkpoint, with each step's update
    undone on the masked coordinates (and, for ``freeze``, their moments held)."""
    model = parent.model(seed, start)
    model.train()
    ckpt = parent.checkpoint(seed, start)
    params = dict(model.named_parameters())
    opt = adamw(params.values(), parent.config.train)
    set_adamw_state(
        opt, [(ckpt["adam_step"], ckpt["exp_avg"][n], ckpt["exp_avg_sq"][n]) for n in params]
    )
    for step in range(start, stop):
        loss = model(parent.batch(seed, step), return_type="loss")
        loss.backward()
        old = {n: params[n].detach()[m].clone() for n, m in frozen_masks.items()}
        st = {n: opt.state[params[n]] for n in frozen_masks}
        held = {
            n: (st[n]["exp_avg"][m].clone(), st[n]["exp_avg_sq"][m].clone())
            for n, m in frozen_masks.items()
        }
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, m in frozen_masks.items():
                params[n][m] = old[n]
                if moments == "freeze":
                    st[n]["exp_avg"][m], st[n]["exp_avg_sq"][m] = held[n]
    return model, opt


@pytest.mark.parametrize("moments", ["run", "freeze"])
def test_a_frozen_head_does_not_move_and_the_rest_follow_adamw_with_the_mask(
    parent, tmp_path, moments
):
    iv = Interventions(lr_scale={"L0H1": 0.0}, moments=moments)
    made = branch(parent, [1], 4, 4, tmp_path / moments, iv, progress=False)
    model = parent.model(1, 4)
    masks = Circuit("f", ["L0H1"]).masks(model)["L0H1"]
    got = load_checkpoint(made.layout.checkpoint(1, 8))
    start = parent.checkpoint(1, 4)
    for name, m in masks.items():
        assert torch.equal(got["params"][name][m], start["params"][name][m]), name
    plain, opt = hand_written(parent, 1, 4, 8, masks, moments)
    for name, p in plain.named_parameters():
        assert torch.equal(got["params"][name], p.detach()), name
        st = opt.state[p]
        assert torch.equal(got["exp_avg"][name], st["exp_avg"]), name
        assert torch.equal(got["exp_avg_sq"][name], st["exp_avg_sq"]), name
    moved = load_checkpoint(parent.layout.checkpoint(1, 8))["params"]
    other = [n for n in moved if n not in masks]
    assert any(not torch.equal(got["params"][n], moved[n]) for n in other)  # the rest felt it


def test_a_scaled_update_and_an_ablation_change_the_run(parent, tmp_path):
    iv = Interventions(lr_scale={"L1H0,L1H1": 0.25}, ablate={"L0H0": "mean"})
    made = branch(parent, [0], 4, 4, tmp_path / "scaled", iv, progress=False)
    mine = made.state_dict(0, 8)
    theirs = parent.state_dict(0, 8)
    assert any(not torch.equal(mine[n], theirs[n]) for n in theirs)
    start = parent.state_dict(0, 4)
    w = "blocks.1.attn.W_Q"
    # a quarter of the steps: the scaled heads moved less than in the run (same sign, roughly)
    assert (mine[w] - start[w]).norm() < (theirs[w] - start[w]).norm()
    # ablation alone: one step with the head's output zeroed is another step than without it
    ablated = branch(
        parent,
        [0],
        4,
        1,
        tmp_path / "ablate",
        Interventions(ablate={"L0H0": "zero"}),
        progress=False,
    )
    plain = branch(parent, [0], 4, 1, tmp_path / "plain", progress=False)
    a, b = ablated.state_dict(0, 5), plain.state_dict(0, 5)
    assert not torch.equal(a["blocks.1.attn.W_Q"], b["blocks.1.attn.W_Q"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seeds", "7", "--from", "4", "--steps", "2"], "seed(s) [7]"),
        (["--seeds", "0", "--from", "3", "--steps", "2"], "no checkpoint at step 3"),
        (["--seeds", "0", "--from", "4", "--steps", "2", "--lr-scale", "L0H9=0"], "L0H9"),
        (
            ["--seeds", "0", "--from", "4", "--steps", "2", "--lr-scale", "L0H1=half"],
            "must be a number",
        ),
        (
            ["--seeds", "0", "--from", "4", "--steps", "2", "--ablate", "L0H1=shuffle"],
            "choose mean or zero",
        ),
        (["--seeds", "0", "--from", "4", "--steps", "2", "--ablate", "EMBED=zero"], "only a head"),
        (
            ["--seeds", "0", "--from", "4", "--steps", "2", "--project-out", "L0H1"],
            "is not BLOCK=MEMBERS",
        ),
        (["--seeds", "0", "--from", "4", "--steps", "2", "--project-out", "L0H9=L1H0"], "L0H9"),
        (
            ["--seeds", "0", "--from", "4", "--steps", "2", "--project-out", "L0H1=L1H0"]
            + ["--project-control", "sideways"],
            "choose signal or random",
        ),
    ],
)
def test_bad_branches_are_one_line(parent, tmp_path, args, words):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "interp_ext.cli",
            "branch",
            str(parent.path),
            "--out",
            str(tmp_path / "x"),
            *args,
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_branch_into_an_existing_folder_is_refused(parent, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(BranchError, match="exists and is not empty"):
        branch(parent, [0], 4, 2, tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_a_branch_is_resumed_with_its_interventions(parent, tmp_path):
    """A branch killed after its first checkpoint continues with its interventions on resume:
    the same checkpoints as one uninterrupted."""
    iv = Interventions(lr_scale={"L0H1": 0.0})
    whole = branch(parent, [1], 4, 4, tmp_path / "whole", iv, progress=False)
    part = branch(parent, [1], 4, 4, tmp_path / "part", iv, progress=False)
    path = part.layout.checkpoint(1, 8)
    path.unlink()  # as if it stopped at step 4
    resumed = train(open_run(part.path).config, part.path, resume=True, progress=False)
    for name, t in whole.state_dict(1, 8).items():
        assert torch.equal(resumed.state_dict(1, 8)[name], t), name


def test_finer_checkpoints_in_a_branch_change_no_step(parent, tmp_path):
    """``checkpoint_every`` only adds checkpoints: the branch's last one equals the run's."""
    made = branch(parent, [1], 4, 4, tmp_path / "fine", progress=False, checkpoint_every=1)
    assert made.steps_for(1) == [4, 5, 6, 7, 8]
    mine = load_checkpoint(made.layout.checkpoint(1, 8))
    theirs = load_checkpoint(parent.layout.checkpoint(1, 8))
    for name, t in theirs["params"].items():
        assert torch.equal(mine["params"][name], t), name
    with pytest.raises(BranchError, match="--checkpoint-every 0"):
        branch(parent, [1], 4, 4, tmp_path / "zero", progress=False, checkpoint_every=0)


def signal_direction(model, tokens, a, b):
    """grad_B (g1_A . g2_A) / its norm by torch.func (g_k the gradient of the batch's k-th half),
    written apart from the Projection code."""
    from torch.func import functional_call, grad

    params = {n: p.detach() for n, p in model.named_parameters()}
    half = tokens.shape[0] // 2

    def loss(p, t):
        return functional_call(model, p, (t,), kwargs={"return_type": "loss"})

    def energy(p):
        g1, g2 = grad(loss)(p, tokens[:half]), grad(loss)(p, tokens[half:])
        return sum((g1[n][i] * g2[n][i]).sum() for n, i in a)

    d = grad(energy)(params)
    parts = [d[n][i] for n, i in b]
    norm = torch.sqrt(sum((x**2).sum() for x in parts))
    return [x / norm for x in parts]


def slices(spec, model):
    return [
        (n, i)
        for per in Circuit("s", spec.split(",")).indices(model).values()
        for n, i in per.items()
    ]


@pytest.mark.parametrize(
    "block, members, raises",
    [("L1H0,L1H1", "L0H0,L0H1", True), ("L0H0,L0H1", "L1H0", False)],
)
def test_project_out_removes_the_update_along_the_signal_gradient_and_its_control_as_much(
    parent, tmp_path, block, members, raises
):
    """One step from a checkpoint: the block's update loses max(0, Delta . d^) along d^ =
    grad_B S_A (checked against torch.func), every other coordinate equals the plain branch;
    the random control removes the same amount along another direction; both log it. Where the
    step lowers S_A (the second pair, at this step) nothing is removed."""
    import pandas as pd

    plain = branch(parent, [0], 4, 1, tmp_path / "plain", progress=False)
    made = {
        c: branch(
            parent,
            [0],
            4,
            1,
            tmp_path / c,
            Interventions(project_out={block: members}, project_control=c),
            progress=False,
        )
        for c in ("signal", "random")
    }
    model = parent.model(0, 4)
    b = slices(block, model)
    d = signal_direction(model, parent.batch(0, 4), slices(members, model), b)
    before, after = parent.state_dict(0, 4), plain.state_dict(0, 5)
    delta = [after[n][i] - before[n][i] for n, i in b]
    along = float(sum((x * y).sum() for x, y in zip(delta, d)))
    assert (along > 0) == raises
    removed = max(0.0, along)
    for control, run in made.items():
        mine = run.state_dict(0, 5)
        moved = [mine[n][i] - after[n][i] for n, i in b]
        size = float(torch.sqrt(sum((m**2).sum() for m in moved)))
        assert size == pytest.approx(removed, rel=1e-4, abs=1e-9)
        if raises:
            cos = -float(sum((m * x).sum() for m, x in zip(moved, d))) / removed
            assert cos == pytest.approx(1.0, abs=1e-4) if control == "signal" else abs(cos) < 0.5
        for n, t in after.items():  # outside the block, the plain step bit for bit
            keep = torch.ones_like(t, dtype=torch.bool)
            for name, i in b:
                if name == n:
                    keep[i] = False
            assert torch.equal(mine[n][keep], t[keep]), (control, n)
        log = pd.read_csv(run.path / "projection.csv")
        assert list(log.step) == [4]
        assert log.along.iloc[0] == pytest.approx(along, rel=1e-4)
        assert log.removed.iloc[0] == pytest.approx(removed, rel=1e-4, abs=1e-12)


@pytest.mark.parametrize(
    "iv",
    [
        Interventions(lr_scale={"L0H1": 0.0}, moments="freeze"),
        Interventions(lr_scale={"L1H0,L1H1": 0.25}, ablate={"L0H0": "mean"}),
        Interventions(project_out={"L1H0,L1H1": "L0H0,L0H1"}),
    ],
    ids=["frozen", "scaled-and-ablated", "projected"],
)
def test_a_branch_replays_bit_for_bit_with_its_interventions(parent, tmp_path, iv):
    """A branch is a trajectory like any run: its steps replay with its interventions applied as
    its training applied them, and reproduce its checkpoint; the same replay without them
    (the parent's dynamics from the branch's state) does not, and is refused."""
    from interp_ext.errors import ReplayError
    from interp_ext.trajectory import Replay, walk

    made = branch(parent, [1], 4, 4, tmp_path / "b", iv, progress=False)
    replay = Replay(made, 1, 4)
    walk(replay, 8, verify=True)
    # the ablations act in the step's own passes only: the replayed weights are measured bare
    assert not any(h.fwd_hooks for h in replay.model.hook_dict.values())
    bare = Replay(made, 1, 4)
    bare.scaled, bare.projection, bare.ablations = [], None, []
    with pytest.raises(ReplayError, match="does not reproduce its checkpoint at step 8"):
        walk(bare, 8, verify=True)


def test_a_branch_with_a_mean_ablation_replays_at_a_batch_size_not_a_power_of_two(
    tmp_path, cache_dir
):
    """The mean over a batch of 3 rounds, so the ablation must be applied once per pass, in
    training (the first seed's module is also the trainer's template: its hooks are not added
    twice) as in the replay."""
    from interp_ext.training import StackedTrainer, prepare_run
    from interp_ext.trajectory import Replay, walk

    cfg = micro_config(steps=4, checkpoint_every=2, n_seeds=2, batch_size=3)
    iv = Interventions(ablate={"L0H0": "mean", "L1MLP": "mean"})
    trainer = StackedTrainer(cfg, None, *prepare_run(cfg, tmp_path / "t", cache_dir), None, iv)
    for model in {id(m): m for m in [*trainer.models, trainer.template]}.values():
        assert len(model.hook_dict["blocks.0.attn.hook_z"].fwd_hooks) == 1
    run = train(cfg, tmp_path / "run", progress=False, cache_dir=cache_dir)
    made = branch(run, [0, 1], 2, 2, tmp_path / "b", iv, progress=False)
    for seed in (0, 1):
        walk(Replay(made, seed, 2), 4, verify=True)


def test_a_branchs_own_step_and_its_arms(parent, tmp_path):
    """The optimizer direction at a branch's checkpoint is its intervened step (a frozen head
    does not move); the noise arms, which do not apply interventions, refuse a branch."""
    from interp_ext.errors import ReplayError
    from interp_ext.trajectory import Arm, ArmState, Replay, real_step

    made = branch(parent, [1], 4, 4, tmp_path / "f", Interventions(lr_scale={"L0H1": 0.0}))
    _, update, _ = real_step(made, 1, 4)
    assert update["blocks.0.attn.W_Q"][1].abs().max() == 0
    assert update["blocks.0.attn.W_Q"][0].abs().max() > 0
    with pytest.raises(ReplayError, match="noise arms do not apply"):
        ArmState(made, 1, 4, Arm.parse("c0/own"))
    with pytest.raises(ReplayError, match="scale 1"):  # its interventions are per real step
        Replay(made, 1, 4, scale=2)
