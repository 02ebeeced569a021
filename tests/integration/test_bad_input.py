"""Bad input a new user would give, through the command line: one line naming the value or file
and the fix, exit code 2, no traceback; nothing counted as done that is not there."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from interp_ext.cli import app
from interp_ext.errors import InterpExtError
from interp_ext.run import open_run, parts

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    """The command failed with exit code 2 and one line (no traceback) holding every fragment."""
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, InterpExtError)  # handled, not raised
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run_copy(micro_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(micro_run.path, path)
    shutil.rmtree(path / "metrics", ignore_errors=True)
    shutil.rmtree(path / "measurements", ignore_errors=True)
    return path


def test_a_truncated_checkpoint_is_named(run_copy):
    ckpt = run_copy / "checkpoints" / "seed=1" / "step=4.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    line = one_line_error(invoke("measure", "induction", run_copy, "--quiet"), str(ckpt))
    assert "corrupt or truncated" in line


def test_a_corrupt_config_is_named(run_copy):
    (run_copy / "config.json").write_text('{"preset": "micro", "model": {')
    one_line_error(invoke("info", run_copy), "config.json", "not valid JSON")


def test_a_run_cut_short_before_its_run_info_is_named(run_copy):
    (run_copy / "run_info.json").unlink()
    one_line_error(invoke("info", run_copy), "no run_info.json", "remove the folder")


def test_a_hugging_face_folder_is_not_a_run(tmp_path):
    hf = tmp_path / "trainer_out"
    (hf / "checkpoint-10").mkdir(parents=True)
    config = json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    (hf / "checkpoint-10" / "config.json").write_text(config)
    for folder in (hf, hf / "checkpoint-10"):
        for command in ("info", "report"):
            one_line_error(invoke(command, folder), "Hugging Face checkpoint", "interp-ext import")


def test_folders_that_are_not_runs(tmp_path):
    one_line_error(
        invoke("info", tmp_path / "nowhere"), "does not exist, so it is not a run directory"
    )
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("measure", "induction", tmp_path / "empty"), "not a run directory")
    (tmp_path / "file.txt").write_text("x")
    one_line_error(invoke("report", tmp_path / "file.txt"), "is a file")


def test_an_sae_on_a_pattern_hook_is_refused_before_training(run_copy):
    line = one_line_error(
        invoke("measure", "sae", run_copy, "--hook", "blocks.0.attn.hook_pattern", "--quiet"),
        "blocks.0.attn.hook_pattern",
        "not a vector activation",
    )
    assert "hook_resid_post" in line
    assert "sae" not in parts.families(run_copy / "metrics")


def test_a_truncated_metrics_part_is_set_aside_and_measured_again(run_copy):
    args = ("measure", "induction", run_copy, "--quiet")
    assert invoke(*args).exit_code == 0
    run = open_run(run_copy)
    expected = run.metrics("induction")
    (settings,) = set(expected.settings)
    part = parts.part_path(run_copy / "metrics", "induction", settings, "seed1-step4")
    assert part.parent == run_copy / "metrics" / "family=induction" / f"settings={settings}"
    part.write_bytes(part.read_bytes()[:200])
    for command in ("info", "report"):
        result = invoke(command, run_copy)
        assert result.exit_code == 0, result.output
        assert "set aside" in result.output and "seed1-step4.parquet" in result.output  # named
    assert not part.exists()
    broken = run_copy / "metrics" / ".broken" / "family=induction" / f"settings={settings}"
    assert (broken / part.name).exists()
    again = invoke(*args)
    assert again.exit_code == 0 and "1 units measured now" not in again.output
    assert part.exists()
    actual = open_run(run_copy).metrics("induction")
    key = ["seed", "step", "metric", "component"]
    assert actual.sort_values(key).value.tolist() == pytest.approx(
        expected.sort_values(key).value.tolist(), nan_ok=True
    )


def test_a_part_whose_row_count_disagrees_is_not_counted(run_copy):
    """A part that reads but holds fewer rows than it was written with is broken too."""
    import pyarrow.parquet as pq

    assert invoke("measure", "induction", run_copy, "--quiet").exit_code == 0
    run = open_run(run_copy)
    (settings,) = set(run.metrics("induction").settings)
    part = parts.part_path(run_copy / "metrics", "induction", settings, "seed0-step2")
    table = pq.read_table(part)
    pq.write_table(table.slice(0, 3).replace_schema_metadata(table.schema.metadata), part)
    assert "3 rows of the" in parts.part_problem(part)
    assert not parts.has_part(run_copy / "metrics", "induction", settings, "seed0-step2")


def test_out_of_range_and_unknown_selections(run_copy):
    one_line_error(invoke("measure", "induction", run_copy, "--seeds", "7"), "seed(s) [7]")
    one_line_error(invoke("measure", "induction", run_copy, "--steps", "5"), "step(s) [5]")
    one_line_error(invoke("measure", "indution", run_copy), "unknown measurement family")
    one_line_error(invoke("measure", "stream1", "--help"), "unknown measurement family")
    one_line_error(invoke("measure", "geometry", run_copy, "--k", "0"), "k=0")


def test_debug_shows_the_traceback(run_copy):
    (run_copy / "config.json").write_text("{")
    result = runner.invoke(app, ["--debug", "info", str(run_copy)])
    assert isinstance(result.exception, InterpExtError)


def test_import_without_probe_text_fails_before_any_work(tmp_path):
    source = tmp_path / "trainer_out"
    (source / "checkpoint-1").mkdir(parents=True)
    one_line_error(
        invoke("import", source, "--out", tmp_path / "r"), "--probe-text FILE or --data-dir"
    )
    one_line_error(
        invoke("import", source, "--out", tmp_path / "r", "--probe-text", tmp_path / "no.txt"),
        "no.txt: no such file",
    )
    assert not (tmp_path / "r").exists()


def test_resume_of_a_run_with_a_truncated_last_checkpoint_starts_from_the_one_before(run_copy):
    from interp_ext.training import last_complete_step

    assert last_complete_step(run_copy, [0, 1]) == 6
    last = run_copy / "checkpoints" / "seed=0" / "step=6.safetensors"
    last.write_bytes(last.read_bytes()[:500])
    assert last_complete_step(run_copy, [0, 1]) == 4


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("llc", "--data", "words"), ("data='words'", "random", "text")),
        (("llc", "--data", "random"), ("random_seq_prob is 0.0", "data=all")),
        (("llc", "--calibrate", "--calibration-seeds", "9"), ("seed 9 is not in this run",)),
        (("llc", "--calibrate", "--calibration-steps", "5"), ("no checkpoint at [5]",)),
        (("llc", "--calibration-seeds", "a,b"), ("calibration_seeds='a,b'", "integers")),
        (("llc", "--component-lr", "model"), ("component_lr='model'", "component=lr")),
        (("stream2", "--composition", "mixed"), ("composition='mixed'", "fixed")),
        (("noise", "--scales", "0,x"), ("scales='0,x'", "sqrt2")),
        (("noise", "--second-moment", "mine"), ("second_moment='mine'", "fed")),
        (("noise", "--batch-sizes", "100000"), ("batch_sizes='100000'", "use at most")),
        (("noise", "--mean-batches", "1"), ("mean_batches=1", ">= 2")),
        (("noise", "--stop-after", "30"), ("stop_after=30", "multiple of record_every")),
        (("work", "--arm", "c1"), ("arm='c1'", "c<scale>/own")),
    ],
)
def test_bad_calibration_and_composition_settings(run_copy, args, fragments):
    """The LLC's plateau calibration, its data part, and Stream 2's batch composition: each bad value
    named in one line before any sampling."""
    family, *rest = args
    one_line_error(invoke("measure", family, run_copy, *rest), *fragments)


def test_a_corpus_file_that_is_not_utf8_or_is_empty_is_named(tmp_path):
    data = tmp_path / "wiki"
    data.mkdir()
    (data / "wiki.valid.raw").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    (data / "wiki.test.raw").write_text("some text\n" * 50, encoding="utf-8")
    args = ("train", "--out", tmp_path / "r", "--steps", "2", "--checkpoint-every", "1")
    one_line_error(invoke(*args, "--data-dir", data), "wiki.valid.raw", "not UTF-8")
    (data / "wiki.valid.raw").write_text("  \n", encoding="utf-8")
    one_line_error(invoke(*args, "--data-dir", data), "wiki.valid.raw", "is empty")


def test_training_into_a_folder_of_other_files_is_refused_unless_forced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_line_error(
        invoke("train", "--out", mine, "--steps", "2", "--checkpoint-every", "1"),
        str(mine),
        "--force",
    )
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_the_version_and_help_read_as_a_user_expects():
    assert invoke("--version").output.startswith("interp-ext ")
    help_text = invoke("train", "--help").output
    assert "Long because" not in help_text and "tiny_mlp" in help_text
    # a family's help keeps its brackets (rich would read them as markup and drop them)
    family_help = runner.invoke(app, ["measure", "members", "--help"], env={"COLUMNS": "200"})
    assert "[f - 750, f + 250]" in " ".join(family_help.output.split())


def test_the_run_folder_is_positional_with_out_as_its_alias(tmp_path):
    one_line_error(invoke("train"), "give the run directory")
    one_line_error(invoke("train", tmp_path / "a", "--out", tmp_path / "b"), "differ")
    args = ["--corpus", "synthetic", "--steps", "2", "--seeds", "1", "--checkpoint-every", "2"]
    made = invoke("train", tmp_path / "pos", *args, "--quiet")
    assert made.exit_code == 0, made.output
    assert (tmp_path / "pos" / "checkpoints" / "seed=0" / "step=2.safetensors").exists()
    again = invoke("train", "--out", tmp_path / "pos", "--resume", "--steps", "4", "--quiet")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "pos" / "checkpoints" / "seed=0" / "step=4.safetensors").exists()
