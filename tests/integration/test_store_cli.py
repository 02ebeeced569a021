from typer.testing import CliRunner

from interp_ext.cli import app
from interp_ext.run import open_run

runner = CliRunner()


def small_wikitext(root):
    """A WikiText-shaped folder without the train split."""
    data = root / "wt"
    data.mkdir()
    text = "".join(
        f" = Title {i} = \n The cat sat on the mat number {i} , and the dog ran . \n"
        for i in range(400)
    )
    (data / "wiki.valid.raw").write_text(text)
    (data / "wiki.test.raw").write_text(text[::-1])
    return data


def test_cli_train_and_info(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(cache_dir))
    out = tmp_path / "cli-run"
    data = small_wikitext(tmp_path)
    result = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--seeds",
            "2",
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--out",
            str(out),
            "--data-dir",
            str(data),
            "--record",
            "blocks.0.attn.hook_pattern",
            "--quiet",
        ],
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
