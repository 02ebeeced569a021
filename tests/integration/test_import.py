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


def test_the_ledger_refuses_an_imported_run(imported):
    from interp_ext.families.ledger import LedgerSettings
    from interp_ext.measurement.runner import MeasureError

    with pytest.raises(MeasureError, match="batches of its real steps are unknown"):
        measure(imported, LedgerSettings(window="100:200", circuit="L1H0"), progress=False)


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
