import json

import pytest

from interp_ext.config import ConfigError, ModelConfig, RunConfig, TrainConfig, get_preset, override
from interp_ext.diskio import write_json


def test_paper_preset_matches_spec_section_1():
    cfg = get_preset("paper")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.n_layers, m.n_heads, m.d_model, m.d_head, m.d_mlp, m.n_ctx) == (
        4,
        4,
        128,
        32,
        512,
        64,
    )
    assert (m.act_fn, m.normalization_type, m.attn_only) == ("gelu", "LN", False)
    assert d.vocab_size is None and d.probe_batches == 64 and d.probe_batch_size == 8
    assert (t.lr, t.weight_decay, t.betas, t.batch_size) == (3e-4, 0.01, (0.9, 0.999), 8)
    assert (t.n_seeds, t.checkpoint_every, t.steps, t.bf16) == (16, 1000, 100_000, True)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: override(get_preset("tiny"), train__steps=-5), "train.steps"),
        (lambda: ModelConfig(d_model=64, n_heads=5), "model.n_heads"),
        (lambda: get_preset("huge"), "preset"),
        (lambda: TrainConfig(steps=100, checkpoint_every=500), "train.checkpoint_every"),
        (lambda: override(get_preset("tiny"), data__vocab_size=10), "data.vocab_size"),
        (lambda: override(get_preset("tiny"), record__every=-1), "record.every"),
    ],
)
def test_invalid_values_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


def test_config_round_trips_through_json(tmp_path):
    cfg = override(
        get_preset("tiny"), train__steps=1234, record__hooks=["blocks.0.hook_resid_post"]
    )
    write_json(tmp_path / "config.json", cfg.payload({"git_sha": None}))
    loaded = RunConfig.load(tmp_path / "config.json")
    assert loaded == cfg
    assert json.loads((tmp_path / "config.json").read_text())["provenance"] == {"git_sha": None}


def test_unknown_field_is_rejected():
    payload = get_preset("tiny").to_dict()
    payload["train"]["stepz"] = 3
    with pytest.raises(ConfigError, match="train.stepz"):
        RunConfig.from_dict(payload)
