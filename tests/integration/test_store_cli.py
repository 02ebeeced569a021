import pandas as pd
from typer.testing import CliRunner

from interp_ext.cli import app
from interp_ext.store import append_metrics, open_run

runner = CliRunner()


def test_metrics_append_replaces_rows_with_the_same_key(tmp_path):
    path = tmp_path / "metrics.parquet"
    rows = [{"seed": 0, "step": 10, "family": "geometry", "metric": "effective_rank", "component": "", "value": 3.0}]
    append_metrics(path, rows, run_name="r")
    append_metrics(path, rows, run_name="r")
    rows[0]["value"] = 4.0
    df = append_metrics(path, rows + [{"seed": 1, "step": 10, "family": "geometry", "metric": "effective_rank", "value": 5.0}], run_name="r")
    assert len(df) == 2 and sorted(df["value"]) == [4.0, 5.0]
    assert list(pd.read_parquet(path).columns[:7]) == ["run", "seed", "step", "family", "metric", "component", "value"]
    df = append_metrics(path, [{"seed": 0, "step": 10, "family": "autocatalysis", "metric": "K", "component": "A|B", "direction": "sgd", "value": 1.0}], run_name="r")
    assert set(df["direction"]) == {"", "sgd"} and len(df) == 3


def small_wikitext(root):
    """A WikiText-shaped folder without the train split."""
    data = root / "wt"
    data.mkdir()
    text = "".join(f" = Title {i} = \n The cat sat on the mat number {i} , and the dog ran . \n" for i in range(400))
    (data / "wiki.valid.raw").write_text(text)
    (data / "wiki.test.raw").write_text(text[::-1])
    return data


def test_cli_train_and_info(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(cache_dir))
    out = tmp_path / "cli-run"
    data = small_wikitext(tmp_path)
    result = runner.invoke(
        app,
        ["train", "--preset", "tiny", "--seeds", "2", "--steps", "4", "--checkpoint-every", "2", "--out", str(out),
         "--data-dir", str(data), "--record", "blocks.0.attn.hook_pattern", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "run written to" in result.output
    run = open_run(out)
    assert run.seeds == [0, 1] and run.steps == [0, 2, 4]
    assert run.activations(0, 2)["blocks.0.attn.hook_pattern"].shape[1:] == (4, 64, 64)
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "seeds     [0, 1]" in info.output and "train" in info.output
    bad = runner.invoke(app, ["train", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "preset='nope'" in bad.output
    again = runner.invoke(app, ["train", "--out", str(out), "--steps", "6", "--resume", "--quiet"])
    assert again.exit_code == 0, again.output
    assert open_run(out).steps == [0, 2, 4, 6]


def test_help_on_every_command():
    for args in (["--help"], ["train", "--help"], ["info", "--help"], ["measure", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, args
