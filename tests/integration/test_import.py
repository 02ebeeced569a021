"""Importing checkpoints made elsewhere: a real Hugging Face Trainer run, a GPT-NeoX model, bad sources."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from interp_ext import measure, open_run
from interp_ext.importing import CheckpointImportError, converters, import_checkpoints

VOCAB, SEQ = 512, 32


def copy_task(n: int, seed: int = 0) -> torch.Tensor:
    """Random-token sequences whose second half repeats a span of the first (induction pays)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, VOCAB, (n, SEQ), generator=gen)
    seqs[:, SEQ // 2 :] = seqs[:, 1 : SEQ // 2 + 1]
    seqs[:, 0] = 0
    return seqs


def tokenizer(cache_dir):
    from interp_ext.data import (
        build_compact_tokenizer,
        encode_text,
        gpt2_tokenizer,
        synthetic_corpus,
    )

    base = gpt2_tokenizer(cache_dir)
    text = synthetic_corpus(20_000).train_text
    return build_compact_tokenizer(base, encode_text(base, text), VOCAB, cache_dir / "compact512")


@pytest.fixture(scope="module")
def trainer_folder(tmp_path_factory, cache_dir):
    """A tiny GPT-2 trained 200 steps by the Hugging Face Trainer, checkpoints at 100, 101 and 200 with AdamW state."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    out = tmp_path_factory.mktemp("hf") / "trainer"
    data = copy_task(2000)

    class Copies(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return {"input_ids": data[i], "labels": data[i]}

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (100, 101, 200):
                control.should_save = True

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_positions=SEQ,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=200,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    tok = tokenizer(cache_dir)
    model.config.bos_token_id = model.config.eos_token_id = tok.eos_token_id
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Copies(),
        processing_class=tok,
        data_collator=default_data_collator,
        callbacks=[SaveAt()],
    )
    trainer.train()
    return out


@pytest.fixture(scope="module")
def imported(trainer_folder, tmp_path_factory):
    text = tmp_path_factory.mktemp("probe") / "probe.txt"
    from interp_ext.data import synthetic_corpus

    text.write_text(synthetic_corpus(30_000, seed=1).train_text)
    return import_checkpoints(
        trainer_folder,
        tmp_path_factory.mktemp("imp") / "run",
        probe_text=text,
        probe_batches=6,
        probe_batch_size=4,
    )


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def test_layout_and_references(imported, trainer_folder):
    assert imported.imported and imported.seeds == [0] and imported.steps == [100, 101, 200]
    index = json.loads((imported.path / "import.json").read_text())
    entry = index["checkpoints"]["0"]["100"]
    assert entry["folder"].endswith("checkpoint-100") and {
        "model.safetensors",
        "optimizer.pt",
    } <= set(entry["files"])
    assert not (imported.path / "checkpoints").exists()  # referenced, not copied
    assert index["frozen"] == ["unembed.b_U"]  # GPT-2 has no unembedding bias


@pytest.mark.parametrize("step", [100, 200])
def test_logits_and_gradients_equal_the_hugging_face_model(imported, trainer_folder, step):
    hf = hf_model(trainer_folder / f"checkpoint-{step}")
    tl = imported.model(0, step)
    tokens = copy_task(4, seed=5)
    torch.testing.assert_close(tl(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)
    # per-batch gradients, mapped back through the same converter
    hf(tokens, labels=tokens).loss.backward()
    grads_model = hf_model(trainer_folder / f"checkpoint-{step}")
    hf_grads = dict(hf.named_parameters())
    with torch.no_grad():
        for name, p in grads_model.named_parameters():
            p.copy_(hf_grads[name].grad)
    from interp_ext.models import hooked_config

    expected = converters()["GPT2LMHeadModel"](
        grads_model, hooked_config(imported.config.model, imported.d_vocab)
    )
    loss = tl(tokens, return_type="loss")
    names = [n for n, p in tl.named_parameters() if p.requires_grad]
    actual = dict(
        zip(names, torch.autograd.grad(loss, [dict(tl.named_parameters())[n] for n in names]))
    )
    assert "unembed.b_U" not in actual  # frozen: not a coordinate
    for name, g in actual.items():
        if name in ("embed.W_E", "unembed.W_U"):
            continue
        torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # GPT-2 ties its embedding and unembedding: the two TransformerLens blocks sum to the tied gradient
    torch.testing.assert_close(
        actual["embed.W_E"] + actual["unembed.W_U"].T, expected["embed.W_E"], rtol=1e-4, atol=1e-6
    )


def test_adamw_update_from_the_imported_moments(imported):
    before, after = imported.checkpoint(0, 100), imported.checkpoint(0, 101)
    t = after["adam_step"]
    for name, theta in before["params"].items():
        group = after["groups"][int(after["group"][name].flatten()[0])]
        (b1, b2), lr, wd, eps = group["betas"], group["lr"], group["weight_decay"], group["eps"]
        mhat = after["exp_avg"][name] / (1 - b1**t)
        vhat = after["exp_avg_sq"][name] / (1 - b2**t)
        expected = -lr * wd * theta - lr * mhat / (vhat.sqrt() + eps)
        actual = after["params"][name] - theta
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=2e-7, msg=name)


def test_every_measurement_runs_on_the_imported_run(imported):
    from interp_ext.families import (
        AutocatalysisSettings,
        GeometrySettings,
        InductionSettings,
        PatchingSettings,
        SAETrackingSettings,
    )

    induction = measure(imported, InductionSettings(), progress=False)
    assert {"induction_score", "formation_step", "ablation_loss_increase"} <= set(induction.metric)
    assert len(measure(imported, PatchingSettings(), progress=False))
    geo = measure(imported, GeometrySettings(k=2, lag=1), progress=False)
    assert geo[(geo.metric == "effective_rank") & (geo.seed == 0)].step.tolist() == [100, 101, 200]
    sae = measure(
        imported,
        SAETrackingSettings(hook="blocks.0.hook_resid_post", width=16, k=2, n_tokens=1024),
        steps=[100, 200],
        progress=False,
    )
    assert {"l0", "explained_variance"} <= set(sae.metric)
    auto = measure(
        imported,
        AutocatalysisSettings(circuit="L1H0,L0H1", rows=2, controls=0),
        steps=[100],
        progress=False,
    )
    assert {"sgd", "optimizer"} <= set(auto.direction)
    with pytest.raises(Exception, match="step 201"):
        measure(
            imported,
            AutocatalysisSettings(
                circuit="L1H0,L0H1", rows=2, controls=0, directions=("optimizer",)
            ),
            steps=[200],
            progress=False,
        )


def test_the_exact_ledger_refuses_an_imported_run(imported):
    from interp_ext.families.work import WorkSettings
    from interp_ext.measurement.runner import MeasureError

    with pytest.raises(MeasureError, match="batches of its real steps are unknown"):
        measure(imported, WorkSettings(window="100:200", circuit="L1H0"), progress=False)


def test_a_gpt_neox_model_imports_and_measures(tmp_path, cache_dir):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from interp_ext.families import GeometrySettings, InductionSettings

    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        rotary_pct=0.25,
    )
    tok = tokenizer(cache_dir)
    for step in (0, 10):
        torch.manual_seed(step)
        model = GPTNeoXForCausalLM(cfg)
        model.save_pretrained(tmp_path / "neox" / f"checkpoint-{step}")
        tok.save_pretrained(tmp_path / "neox" / f"checkpoint-{step}")
    text = tmp_path / "probe.txt"
    from interp_ext.data import synthetic_corpus

    text.write_text(synthetic_corpus(30_000, seed=1).train_text)
    run = import_checkpoints(
        tmp_path / "neox", tmp_path / "run", probe_text=text, probe_batches=4, probe_batch_size=4
    )
    hf = GPTNeoXForCausalLM.from_pretrained(str(tmp_path / "neox" / "checkpoint-10")).eval()
    tokens = copy_task(2, seed=3)
    torch.testing.assert_close(run.model(0, 10)(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)
    assert len(measure(run, InductionSettings(), progress=False))
    geo = measure(run, GeometrySettings(k=2, lag=1), progress=False)
    assert np.isfinite(geo[geo.metric == "effective_rank"].value).all()


def test_bad_sources_are_named_and_nothing_is_half_written(tmp_path, trainer_folder, imported):
    text = tmp_path / "p.txt"
    text.write_text("some text " * 500)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointImportError, match="holds no checkpoints"):
        import_checkpoints(tmp_path / "empty", tmp_path / "r1", probe_text=text)
    odd = tmp_path / "odd" / "checkpoint-5"
    shutil.copytree(trainer_folder / "checkpoint-100", odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["FooForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointImportError, match="FooForCausalLM.*supported"):
        import_checkpoints(tmp_path / "odd", tmp_path / "r2", probe_text=text)
    mixed = tmp_path / "mixed"
    shutil.copytree(trainer_folder / "checkpoint-100", mixed / "checkpoint-100")
    shutil.copytree(trainer_folder / "checkpoint-200", mixed / "checkpoint-200")
    config = json.loads((mixed / "checkpoint-200" / "config.json").read_text())
    config["layer_norm_epsilon"] = 1e-3
    (mixed / "checkpoint-200" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointImportError, match=r"checkpoint-200/config.json does not match"):
        import_checkpoints(mixed, tmp_path / "r3", probe_text=text)
    for name in ("r1", "r2", "r3"):
        assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r")]  # no staging left behind
    moved = tmp_path / "moved"
    shutil.copytree(trainer_folder, moved)
    run = import_checkpoints(
        moved, tmp_path / "r4", probe_text=text, probe_batches=4, probe_batch_size=4
    )
    (moved / "checkpoint-200" / "model.safetensors").unlink()
    with pytest.raises(CheckpointImportError, match=r"checkpoint-200/model.safetensors is missing"):
        open_run(run.path).model(0, 200)


def rewrite_optimizer(folder, reorder):
    """Save ``folder``'s Trainer optimizer state as another loop would have: ``reorder(model, state)``
    returns (state by new index, param_groups)."""
    from interp_ext.run.sources import hf_model

    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    state, groups = reorder(hf_model(str(folder)), saved)
    torch.save({"state": state, "param_groups": groups}, folder / "optimizer.pt")


def trainer_order(model):
    from interp_ext.run.sources import decay_parameter_names

    decay = set(decay_parameter_names(model))
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    return [n for n in named if n in decay] + [n for n in named if n not in decay], named


def plain_loop(model, saved):
    """``torch.optim.AdamW(model.parameters())``: one group, the model's parameter order."""
    trainer, named = trainer_order(model)
    state = {j: saved["state"][trainer.index(n)] for j, n in enumerate(named)}
    group = {**saved["param_groups"][0], "params": list(range(len(named)))}
    return state, [group]


def scrambled(model, saved):
    """Moments in an order no training loop uses: no shape-consistent mapping exists."""
    trainer, _ = trainer_order(model)
    n = len(trainer)
    state = {j: saved["state"][(j * 7 + 3) % n] for j in range(n)}
    return state, [{**saved["param_groups"][0], "params": list(range(n))}]


def test_moments_of_a_plain_adamw_loop_map_by_shape(tmp_path, trainer_folder, imported, caplog):
    text = tmp_path / "p.txt"
    text.write_text("some text " * 500)
    plain = tmp_path / "plain"
    shutil.copytree(trainer_folder / "checkpoint-100", plain / "checkpoint-100")
    rewrite_optimizer(plain / "checkpoint-100", plain_loop)
    run = import_checkpoints(plain, tmp_path / "r", probe_text=text, probe_batches=4)
    expected = imported.checkpoint(0, 100)
    actual = run.checkpoint(0, 100)
    assert set(actual["exp_avg"]) == set(expected["exp_avg"])
    for name in expected["exp_avg"]:
        assert torch.equal(actual["exp_avg"][name], expected["exp_avg"][name]), name
        assert torch.equal(actual["exp_avg_sq"][name], expected["exp_avg_sq"][name]), name
    run.model(0, 100)  # loads

    odd = tmp_path / "odd"
    shutil.copytree(trainer_folder / "checkpoint-100", odd / "checkpoint-100")
    rewrite_optimizer(odd / "checkpoint-100", scrambled)
    run = import_checkpoints(odd, tmp_path / "r2", probe_text=text, probe_batches=4)
    with caplog.at_level("WARNING", logger="interp_ext"):
        ckpt = run.checkpoint(0, 100)
        model = run.model(0, 100)  # the weights load all the same
    assert ckpt["exp_avg"] == {} and "moments not imported" in ckpt["moments_absent"]
    assert caplog.text.count("moments not imported") == 1
    assert sum(p.numel() for p in model.parameters()) > 0


def test_import_errors_through_the_command_line(tmp_path, trainer_folder):
    from typer.testing import CliRunner

    from interp_ext.cli import app

    text = tmp_path / "p.txt"
    text.write_text("some text " * 500)
    cli = CliRunner()

    def error_line(*args):
        result = cli.invoke(app, ["import", *map(str, args)])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        (line,) = [x for x in result.output.splitlines() if x.strip()]
        return line

    line = error_line(
        trainer_folder, "--out", tmp_path / "r", "--probe-text", text, "--checkpoint-index", "0,9"
    )
    assert "--checkpoint-index 9 is out of range" in line and "holds 3 checkpoints" in line
    broken = tmp_path / "broken"
    shutil.copytree(trainer_folder / "checkpoint-100", broken / "checkpoint-100")
    weights = broken / "checkpoint-100" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    line = error_line(broken, "--out", tmp_path / "r", "--probe-text", text)
    assert "model.safetensors cannot be loaded" in line
    assert not (tmp_path / "r").exists()
    picked = cli.invoke(
        app,
        [
            "import",
            str(trainer_folder),
            "--out",
            str(tmp_path / "r"),
            "--probe-text",
            str(text),
            "--checkpoint-index",
            "0,-1",
            "--probe-batches",
            "4",
            "--probe-batch-size",
            "2",
        ],
    )
    assert picked.exit_code == 0, picked.output
    assert open_run(tmp_path / "r").steps == [100, 200]
    assert open_run(tmp_path / "r").probe_set()["lm"].shape[:2] == (4, 2)
