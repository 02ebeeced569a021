"""Stacked trainer: equivalence with plain training, bit-exact resume, recording, failures."""

from __future__ import annotations

import pytest
import torch

from interp_ext.config import ConfigError
from interp_ext.data import training_rows
from interp_ext.models import build_model
from interp_ext.run import CheckpointError, RunError, open_run
from interp_ext.training import NonFiniteLossError, StackedTrainer, train
from tests.conftest import micro_config


def test_run_layout(micro_run):
    run = micro_run
    assert run.seeds == [0, 1]
    assert run.steps == [0, 2, 4, 6]
    for s in run.seeds:
        for t in run.steps:
            assert run.checkpoint_path(s, t).exists()
            assert run.activation_path(s, t).exists()
    assert set(run.probe_set()) == {"lm", "heldout", "repeated"}
    assert run.probe_set()["lm"].shape == (4, 3, 16)
    assert (run.path / "config.json").exists() and (
        run.path / "tokenizer" / "tokenizer.json"
    ).exists()
    losses = run.metrics("train")
    assert len(losses) == 2 * 3 and losses["value"].notna().all()


def test_each_seed_equals_plain_hooked_transformer_with_adamw(micro_run):
    """Seed trajectories of the stacked ensemble == a plain HookedTransformer + torch.optim.AdamW.

    Bit for bit against AdamW(fused=True), the trainer's default: on a CPU each seed runs
    through its own module whose weights are views of the stacked tensors, so forward,
    backward and AdamW do exactly the plain model's arithmetic (the vmapped paths are
    compared with this one in the chunking test). To float tolerance against torch's
    default (per-op) AdamW, except elements whose every gradient was at rounding level
    (the key biases b_K, whose exact gradient is zero as the softmax ignores them; a rarely
    seen token's embedding row): AdamW's normalised step turns rounding noise, which differs
    between the two implementations and between CPUs, into steps of order lr, so there the
    two may differ by up to twice the largest step AdamW can take, summed over the steps."""
    run = micro_run
    cfg = run.config
    assert cfg.train.fused_adamw
    train_tokens = run.train_tokens()
    bos = run.tokenizer().convert_tokens_to_ids("<|endoftext|>")
    for seed in run.seeds:
        actual = run.state_dict(seed, cfg.train.steps)
        for fused in (True, None):
            model = build_model(cfg.model, run.d_vocab, seed=seed)
            expected0 = run.state_dict(seed, 0)
            for name, p in model.named_parameters():
                assert torch.equal(p.detach(), expected0[name]), (
                    f"init of {name} differs for seed {seed}"
                )
            opt = torch.optim.AdamW(
                model.parameters(),
                lr=cfg.train.lr,
                betas=cfg.train.betas,
                weight_decay=cfg.train.weight_decay,
                fused=fused,
            )
            gmax = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
            for step in range(cfg.train.steps):
                tokens = torch.from_numpy(
                    training_rows(
                        train_tokens,
                        seed,
                        step,
                        cfg.train.batch_size,
                        cfg.model.n_ctx,
                        bos,
                        cfg.data,
                        run.d_vocab,
                    )[0]
                )
                loss = model(tokens, return_type="loss")
                loss.backward()
                # each element's gradient relative to the largest of the model's at this step
                scale = max(float(p.grad.abs().max()) for p in model.parameters())
                for n, p in model.named_parameters():
                    gmax[n] = torch.maximum(gmax[n], p.grad.abs() / scale)
                opt.step()
                opt.zero_grad()
            for name, p in model.named_parameters():
                if fused:
                    assert torch.equal(actual[name], p.detach()), f"{name} seed {seed}"
                    continue
                noise = gmax[name] <= ROUNDING
                bound = 2 * adamw_step_bound(cfg.train.lr, cfg.train.betas, cfg.train.steps)
                diff = (actual[name] - p.detach()).abs()
                assert (diff[noise] <= bound).all(), f"{name} seed {seed}: beyond the AdamW bound"
                # per-op and fused AdamW round differently, and the steps compound it: on some
                # CPUs one W_E element ends 3.7e-5 apart (relative), where a wrong AdamW (bias
                # correction, decay) moves elements by about lr, 1e-2 of their size
                torch.testing.assert_close(
                    actual[name][~noise],
                    p.detach()[~noise],
                    rtol=1e-4,
                    atol=1e-6,
                    msg=f"{name} seed {seed}",
                )


# float32 sums of a few hundred terms round at about 1e-5 of the largest term; an element whose
# gradients stay below 1e-4 of the model's largest is rounding noise to AdamW's normalised step
ROUNDING = 1e-4


def adamw_step_bound(lr: float, betas: tuple[float, float], steps: int) -> float:
    """The largest total move of one element over ``steps`` AdamW steps, whatever its gradients:
    by Cauchy-Schwarz |m_t| <= (1 - b1) / sqrt(1 - b2) * sqrt(sum_j (b1^2 / b2)^j) * sqrt(v_t),
    and the bias corrections scale the ratio by sqrt(1 - b2^t) / (1 - b1^t)."""
    b1, b2 = betas
    total = 0.0
    for t in range(1, steps + 1):
        memory = sum((b1 * b1 / b2) ** j for j in range(t)) ** 0.5
        total += (1 - b1) / (1 - b2) ** 0.5 * memory * (1 - b2**t) ** 0.5 / (1 - b1**t)
    return lr * total


def assert_adamw_close(
    actual: dict, expected: dict, train_cfg, rtol: float, atol: float, what: str
):
    """Two checkpoints of AdamW runs whose arithmetic differs only in rounding: close to tolerance,
    except elements whose gradients were all at rounding level (read from the second moment:
    sqrt(v) at most ROUNDING of the model's largest), where the parameters may differ by twice
    AdamW's largest total move and the moments by their rounding-level size."""
    bound = 2 * adamw_step_bound(train_cfg.lr, train_cfg.betas, train_cfg.steps)
    top = max(float(v.sqrt().max()) for v in expected["exp_avg_sq"].values())
    for name, v in expected["exp_avg_sq"].items():
        rms = v.sqrt()
        noise = rms <= ROUNDING * top
        limits = {
            "params": bound,
            "exp_avg": 2 * ROUNDING * top,
            "exp_avg_sq": 2 * (ROUNDING * top) ** 2,
        }
        for kind, limit in limits.items():
            a, b = actual[kind][name], expected[kind][name]
            assert ((a - b).abs()[noise] <= limit).all(), f"{kind} {name} {what}: beyond the bound"
            torch.testing.assert_close(
                a[~noise], b[~noise], rtol=rtol, atol=atol, msg=f"{kind} {name} {what}"
            )


def test_the_adamw_step_bound_holds_for_any_gradients():
    """The bound against torch's AdamW on adversarial gradients (constant, alternating, one spike)."""
    lr, betas, steps = 1e-2, (0.9, 0.999), 12
    sequences = [
        [1.0] * steps,
        [(-1.0) ** t for t in range(steps)],
        [1e-8] * 3 + [1.0] + [1e-8] * 8,
    ]
    for grads in sequences:
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.AdamW([p], lr=lr, betas=betas, weight_decay=0.0)
        moved = 0.0
        for g in grads:
            before = p.detach().clone()
            p.grad = torch.tensor([g])
            opt.step()
            moved += float((p.detach() - before).abs())
        assert moved <= adamw_step_bound(lr, betas, steps) + 1e-9
    assert adamw_step_bound(lr, betas, 1) == pytest.approx(lr)  # Adam's first step is lr * sign(g)


def test_per_op_adamw_is_bit_exact_with_plain_default_adamw(tmp_path, cache_dir):
    """With train.fused_adamw off the trainer steps torch's default AdamW: equal bit for bit."""
    cfg = micro_config(n_seeds=1, steps=4, fused_adamw=False)
    run = train(cfg, tmp_path / "r", progress=False, cache_dir=cache_dir)
    bos = run.tokenizer().convert_tokens_to_ids("<|endoftext|>")
    model = build_model(cfg.model, run.d_vocab, seed=0)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.train.lr,
        betas=cfg.train.betas,
        weight_decay=cfg.train.weight_decay,
    )
    for step in range(4):
        loss = model(
            torch.from_numpy(
                training_rows(
                    run.train_tokens(),
                    0,
                    step,
                    cfg.train.batch_size,
                    cfg.model.n_ctx,
                    bos,
                    cfg.data,
                    run.d_vocab,
                )[0]
            ),
            return_type="loss",
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
    actual = run.state_dict(0, 4)
    for name, p in model.named_parameters():
        assert torch.equal(actual[name], p.detach()), name


@pytest.mark.parametrize("chunk", [2, 3])
def test_seed_chunking_does_not_change_trajectories(tmp_path, cache_dir, micro_run, chunk):
    """One vmap over all seeds (chunk 3), a vmap over a part (2 + 1) and the CPU default (one seed at a
    time, no vmap) step the same stacked AdamW state to the same weights."""
    cfg = micro_config(n_seeds=3, seed_chunk=chunk)
    ref = train(micro_config(n_seeds=3), tmp_path / "default", progress=False, cache_dir=cache_dir)
    run = train(cfg, tmp_path / f"chunk{chunk}", progress=False, cache_dir=cache_dir)
    for seed in run.seeds:
        a, b = run.checkpoint(seed, cfg.train.steps), ref.checkpoint(seed, cfg.train.steps)
        assert_adamw_close(a, b, cfg.train, rtol=1e-5, atol=1e-7, what=f"seed {seed}")


def test_resume_after_crash_is_bit_exact(tmp_path, cache_dir, monkeypatch, micro_run):
    cfg = micro_config()
    original = StackedTrainer.train_step

    def crash_at_5(self):
        if self.step == 5:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(StackedTrainer, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "r", progress=False, cache_dir=cache_dir)
    monkeypatch.setattr(StackedTrainer, "train_step", original)
    partial = open_run(tmp_path / "r")
    assert partial.steps == [0, 2, 4]  # the crash lost nothing before the last checkpoint
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "r", progress=False, cache_dir=cache_dir)
    resumed = train(
        micro_config(), tmp_path / "r", resume=True, progress=False, cache_dir=cache_dir
    )
    assert resumed.steps == [0, 2, 4, 6]
    for seed in resumed.seeds:
        a = resumed.checkpoint(seed, 6)
        b = micro_run.checkpoint(seed, 6)  # same config trained without interruption
        for kind in ("params", "exp_avg", "exp_avg_sq"):
            for name in b[kind]:
                assert torch.equal(a[kind][name], b[kind][name]), f"{kind} {name} seed {seed}"
        # nothing else is stored: no generator state that a resume could leave different
        from safetensors.torch import load_file

        stored = load_file(str(resumed.checkpoint_path(seed, 6)))
        expected = load_file(str(micro_run.checkpoint_path(seed, 6)))
        assert stored.keys() == expected.keys()
        assert not [k for k in stored if k.startswith("rng/")]
        assert all(torch.equal(stored[k], expected[k]) for k in stored)


def test_recorded_activations_equal_run_with_cache(micro_run):
    run = micro_run
    probe = run.probe_set()["lm"][: run.config.record.n_batches]
    tokens = probe.reshape(-1, probe.shape[-1])
    for seed in run.seeds:
        for step in (0, 6):
            model = run.model(seed, step)
            recorded = run.activations(seed, step)
            _, cache = model.run_with_cache(tokens, incl_bwd=True, return_type="loss")
            for name in run.config.record.hooks:
                torch.testing.assert_close(
                    recorded[name], cache[name], rtol=1e-5, atol=1e-7, msg=name
                )
    assert recorded["blocks.0.attn.hook_pattern"].shape == (6, 2, 16, 16)


def test_unknown_hook_fails_before_training_with_valid_names(tmp_path, cache_dir):
    cfg = micro_config()
    cfg.record.hooks = ["blocks.0.attn.hook_patern"]
    with pytest.raises(ConfigError, match="blocks.0.attn.hook_pattern"):
        train(cfg, tmp_path / "bad", progress=False, cache_dir=cache_dir)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_recording_bound_is_enforced(tmp_path, cache_dir):
    cfg = micro_config()
    cfg.record.hooks = ["blocks.0.attn.hook_pattern"]
    cfg.record.max_bytes = 100
    with pytest.raises(ConfigError, match="record.max_bytes"):
        train(cfg, tmp_path / "big", progress=False, cache_dir=cache_dir)


def test_record_every_n_steps(tmp_path, cache_dir):
    cfg = micro_config(steps=4, checkpoint_every=4)
    cfg.record.hooks = ["blocks.1.hook_resid_post"]
    cfg.record.every = 1
    run = train(cfg, tmp_path / "every", progress=False, cache_dir=cache_dir)
    assert run.steps == [0, 4]
    assert sorted(
        int(p.stem[5:]) for p in (run.path / "activations" / "seed=0").glob("*.safetensors")
    ) == [0, 1, 2, 3, 4]


def test_non_finite_loss_names_seed_and_step_and_keeps_checkpoint(tmp_path, cache_dir, monkeypatch):
    cfg = micro_config()
    original = StackedTrainer.train_step

    def poison(self):
        if self.step == 3:
            with torch.no_grad():
                self.params["unembed.W_U"][1].fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(StackedTrainer, "train_step", poison)
    with pytest.raises(NonFiniteLossError, match=r"step 3 for seed\(s\) \[1\]"):
        train(cfg, tmp_path / "nan", progress=False, cache_dir=cache_dir)
    run = open_run(tmp_path / "nan")
    assert run.steps == [0, 2]
    assert torch.isfinite(run.model(1, 2)(run.probe_set()["lm"][0], return_type="loss"))


def test_corrupt_checkpoint_names_the_file(micro_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(micro_run.path, copy)
    target = copy / "checkpoints" / "seed=1" / "step=4.safetensors"
    target.write_bytes(target.read_bytes()[:100])
    run = open_run(copy)
    with pytest.raises(CheckpointError, match="step=4.safetensors"):
        run.model(1, 4)
    with pytest.raises(RunError, match=r"available steps: \[0, 2, 4, 6\]"):
        run.model(1, 5)


def test_model_has_tokenizer_that_decodes(micro_run):
    model = micro_run.model(0)
    tokens = model.to_tokens("Hello there.")
    assert tokens[0, 0].item() == micro_run.tokenizer().bos_token_id
    assert model.to_string(tokens[0, 1:]) == "Hello there."
    assert tokens.max().item() < model.cfg.d_vocab


def test_single_seed_run_follows_the_same_trajectory(tmp_path, cache_dir, micro_run):
    """A 1-seed run (its gradient is the seed's own, no stacked buffer) == seed 0 of the 2-seed run."""
    cfg = micro_config(n_seeds=1)
    cfg.record.hooks = list(micro_run.config.record.hooks)
    run = train(cfg, tmp_path / "one", progress=False, cache_dir=cache_dir)
    a, b = run.checkpoint(0, cfg.train.steps), micro_run.checkpoint(0, cfg.train.steps)
    assert_adamw_close(a, b, cfg.train, rtol=1e-6, atol=1e-8, what="seed 0")
