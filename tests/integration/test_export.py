"""Exporting a checkpoint as a Hugging Face GPT2LMHeadModel folder: the same logits, the same
weights when imported back, and architectures or input that do not map named in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from interp_ext.cli import app
from interp_ext.errors import ExportError
from interp_ext.exporting import export_checkpoint, export_model
from interp_ext.importing import import_checkpoints
from interp_ext.run.checkpoints import load_checkpoint, save_checkpoint

TOLERANCE = 1e-4


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def hf_model(folder):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float32).eval()


def logits(model, tokens) -> torch.Tensor:
    """A HookedTransformer's or a transformers model's logits."""
    with torch.no_grad():
        if hasattr(model, "run_with_cache"):
            return model(tokens, return_type="logits")
        return model(input_ids=tokens).logits


def logit_difference(model, other, batches) -> float:
    return max(float((logits(model, b) - logits(other, b)).abs().max()) for b in batches)


@pytest.fixture(scope="module")
def probe_text(tmp_path_factory):
    from interp_ext.data import synthetic_corpus

    path = tmp_path_factory.mktemp("probe") / "probe.txt"
    path.write_text(synthetic_corpus(30_000, seed=1).train_text)
    return path


@pytest.fixture(scope="module")
def zero_bias_run(micro_run, tmp_path_factory):
    """A copy of the micro run whose step-6 checkpoint of seed 1 has its unembedding bias set
    to zero (every other weight trained): the exact mapping, without the fold."""
    path = tmp_path_factory.mktemp("zb") / "run"
    shutil.copytree(micro_run.path, path)
    file = path / "checkpoints" / "seed=1" / "step=6.safetensors"
    ckpt = load_checkpoint(file)
    ckpt["params"]["unembed.b_U"] = torch.zeros_like(ckpt["params"]["unembed.b_U"])
    save_checkpoint(
        file, ckpt["params"], 1, 6, ckpt["exp_avg"], ckpt["exp_avg_sq"], ckpt["adam_step"]
    )
    from interp_ext.run import open_run

    return open_run(path)


def imported_parameters_match(original, imported) -> None:
    """Every parameter of the original equals the imported one; what GPT-2 has beyond it (the
    zero MLPs of an attention-only model, LayerNorms of weight 1 and bias 0 for LNPre, the
    frozen unembedding bias) is exactly that."""
    ours = dict(original.named_parameters())
    for name, value in imported.named_parameters():
        if name in ours:
            assert torch.equal(value, ours[name]), name
        elif name.endswith(".w") and "ln" in name.split(".")[-2]:
            assert torch.equal(value, torch.ones_like(value)), name
        else:
            assert not value.any(), name
    assert set(ours) <= set(dict(imported.named_parameters()))


def test_a_trained_checkpoint_exports_with_the_same_logits_and_imports_back(
    zero_bias_run, probe_text, tmp_path
):
    run = zero_bias_run
    out = export_checkpoint(run, 1, 6, tmp_path / "hf")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    model, hf = run.model(1, 6, device="cpu"), hf_model(out)
    diff = logit_difference(model, hf, run.probe_set()["lm"][:2])
    print(f"max |logit difference|, trained micro checkpoint (b_U zero): {diff:.3g}")
    assert diff < TOLERANCE
    # untied: GPT-2 would tie lm_head to wte, the export says not to and transformers honours it
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    assert torch.equal(hf.lm_head.weight, model.unembed.W_U.detach().T)
    assert torch.equal(hf.transformer.wte.weight, model.embed.W_E.detach())

    back = import_checkpoints(out, tmp_path / "back", probe_text=probe_text, probe_batches=4)
    assert back.steps == [0] and back.frozen_parameters() == ["unembed.b_U"]
    imported_parameters_match(model, back.model(0, 0, device="cpu"))


def test_a_non_zero_unembedding_bias_is_folded_with_the_same_logits(
    micro_run, probe_text, tmp_path
):
    line = one_line_error(
        invoke("export", micro_run.path, "--seed", 0, "--step", 6, "--out", tmp_path / "no"),
        "unembed.b_U is not zero",
        "--fold-unembed-bias",
        "seed 0 step 6",
    )
    assert "GPT-2's lm_head has no bias" in line and not (tmp_path / "no").exists()
    out = tmp_path / "hf"
    done = invoke(
        "export", micro_run.path, "--seed", 0, "--step", 6, "--out", out, "--fold-unembed-bias"
    )
    assert done.exit_code == 0, done.output
    model, hf = micro_run.model(0, 6, device="cpu"), hf_model(out)
    assert model.unembed.b_U.detach().abs().max() > 0
    diff = logit_difference(model, hf, micro_run.probe_set()["lm"][:2])
    print(f"max |logit difference|, trained micro checkpoint (b_U folded): {diff:.3g}")
    assert diff < TOLERANCE
    back = import_checkpoints(out, tmp_path / "back", probe_text=probe_text, probe_batches=4)
    again = back.model(0, 0, device="cpu")
    assert logit_difference(model, again, micro_run.probe_set()["lm"][:2]) < TOLERANCE
    ours = dict(model.named_parameters())
    for name, value in again.named_parameters():  # the fold changes W_U and b_U alone
        if name not in ("unembed.W_U", "unembed.b_U", "ln_final.b"):
            assert torch.equal(value, ours[name]), name


def random_model(tokenizer, **settings):
    """A HookedTransformer of the micro run's vocabulary with every weight random (biases and
    LayerNorms included) and a zero unembedding bias."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=2, n_heads=2, d_model=16, d_head=8, n_ctx=16, d_vocab=len(tokenizer))
    cfg.update(settings)
    model = HookedTransformer(HookedTransformerConfig(**cfg, device="cpu"), tokenizer=tokenizer)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shift = 1.0 if name.endswith(".w") else 0.0  # LayerNorm weights around 1
            p.copy_(shift + 0.3 * torch.randn(p.shape, generator=gen))
        model.unembed.b_U.zero_()
    return model.eval()


@pytest.mark.parametrize(
    "settings",
    [
        dict(act_fn="gelu_new"),
        dict(act_fn="relu", normalization_type="LNPre"),
        dict(attn_only=True),
        dict(act_fn="gelu", use_attn_scale=False, scale_attn_by_inverse_layer_idx=True),
    ],
    ids=["gelu_new", "relu-LNPre", "attn_only", "no-attn-scale"],
)
def test_architectures_that_map(micro_run, probe_text, tmp_path, settings):
    model = random_model(micro_run.tokenizer(), **settings)
    out = export_model(model, tmp_path / "hf")
    batches = micro_run.probe_set()["lm"][:2]
    assert logit_difference(model, hf_model(out), batches) < TOLERANCE
    back = import_checkpoints(out, tmp_path / "back", probe_text=probe_text, probe_batches=4)
    again = back.model(0, 0, device="cpu")
    imported_parameters_match(model, again)
    assert logit_difference(model, again, batches) < TOLERANCE


def test_a_tied_unembedding_stays_tied(micro_run, tmp_path):
    model = random_model(micro_run.tokenizer())
    with torch.no_grad():
        model.unembed.W_U.copy_(model.embed.W_E.T)
    out = export_model(model, tmp_path / "hf")
    hf = hf_model(out)
    assert hf.config.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert logit_difference(model, hf, micro_run.probe_set()["lm"][:1]) < TOLERANCE


@pytest.mark.parametrize(
    "settings, named",
    [
        (dict(normalization_type="RMS"), "normalization_type='RMS'"),
        (dict(positional_embedding_type="rotary"), "positional_embedding_type='rotary'"),
        (dict(act_fn="silu"), "act_fn='silu'"),
        (dict(d_head=4), "d_head=4 x n_heads=2 != d_model=16"),
        (dict(attn_scale=2.0), "attn_scale=2.0"),
        (dict(parallel_attn_mlp=True), "parallel_attn_mlp=True"),
    ],
)
def test_architectures_that_do_not_map_are_named(micro_run, tmp_path, settings, named):
    model = random_model(micro_run.tokenizer(), **settings)
    with pytest.raises(ExportError, match="does not map onto GPT-2") as err:
        export_model(model, tmp_path / "hf")
    assert named in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_bad_input_through_the_command_line(micro_run, tmp_path):
    run = micro_run.path
    one_line_error(
        invoke("export", run, "--seed", 7, "--step", 0, "--out", tmp_path / "a"),
        "seed 7 has no checkpoints",
        "available seeds: [0, 1]",
    )
    one_line_error(
        invoke("export", run, "--seed", 0, "--step", 3, "--out", tmp_path / "a"),
        "no checkpoint for seed 0 at step 3",
        "available steps: [0, 2, 4, 6]",
    )
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    one_line_error(
        invoke("export", run, "--seed", 0, "--step", 0, "--out", taken),
        f"--out {taken} already exists and is not empty",
    )
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    one_line_error(
        invoke("export", run, "--to", "onnx", "--out", tmp_path / "a"), "--to 'onnx'", "--to hf"
    )
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine; step 0 (untrained) has a zero b_U: no fold needed
    done = invoke("export", run, "--seed", 0, "--step", 0, "--out", empty)
    assert done.exit_code == 0 and "seed 0 step 0" in done.output, done.output
    assert (empty / "model.safetensors").exists()
