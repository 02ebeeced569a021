"""The ``interp-ext`` command: train runs, inspect them, measure them.

Every command has ``--help``. Runs are directories (SPEC section 2); everything a
command computes goes into the run's metrics table, so notebooks read the same
numbers with ``open_run(RUN).metrics()``.

Bad input (any :class:`interp_ext.errors.InterpExtError`, or the circuits package's
``CircuitError``) ends a command with one line naming the value and the fix, and
exit code 2; ``interp-ext --debug COMMAND`` or ``INTERP_EXT_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from pathlib import Path

import typer
import typer.core

from interp_ext.errors import one_line, user_errors

DEBUG_ENV = "INTERP_EXT_DEBUG"


class _OneLineErrors(typer.core.TyperGroup):
    """The command group: bad input becomes one line on stderr and exit code 2."""

    def main(self, args=None, *rest, **kwargs):
        words = sys.argv[1:] if args is None else list(args)
        try:
            return super().main(args, *rest, **kwargs)
        except user_errors() as err:
            if os.environ.get(DEBUG_ENV) or "--debug" in words[:1]:
                raise
            typer.secho(f"error: {one_line(err)}", fg=typer.colors.RED, err=True)
            sys.exit(2)


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Watch circuits form during training (TransformerLens).",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"interp-ext {version('interp-ext')}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help=f"Show the traceback of an error (or set {DEBUG_ENV}=1)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Watch circuits form during training (TransformerLens)."""


measure_app = typer.Typer(
    no_args_is_help=True,
    help="Measure a trained run: `interp-ext measure FAMILY RUN`; rows go to RUN/metrics/, keyed by their settings.",
)
app.add_typer(measure_app, name="measure")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("interp_ext").setLevel(logging.INFO)


def _fail(message: str) -> None:
    """Bad command-line input found here (not by the package): one line, exit code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    run_dir: Path | None = typer.Argument(
        None, help="Run directory to create (or to continue with --resume); or --out."
    ),
    out: Path | None = typer.Option(None, "--out", help="The run directory, as RUN_DIR."),
    preset: str = typer.Option(
        "tiny",
        help="Named config: 'tiny' (CPU, minutes), 'tiny_mlp' (attention + MLP) or 'paper' (the paper's model, a GPU).",
    ),
    seeds: int | None = typer.Option(
        None,
        help="Number of seeds trained side by side (with --resume: more adds seeds from step 0).",
    ),
    first_seed: int | None = typer.Option(
        None, help="First seed; seeds are first_seed .. first_seed + seeds - 1."
    ),
    steps: int | None = typer.Option(
        None, help="Training steps (with --resume: extend the run to this many)."
    ),
    checkpoint_every: int | None = typer.Option(
        None, "--checkpoint-every", help="Steps between checkpoints (step 0 is always saved)."
    ),
    record: list[str] = typer.Option(
        [],
        "--record",
        help="TransformerLens hook name to record at checkpoints (repeatable); suffix _grad for backward hooks.",
    ),
    record_every: int | None = typer.Option(
        None, "--record-every", help="Also record every N training steps (0: checkpoints only)."
    ),
    record_batches: int | None = typer.Option(
        None, "--record-batches", help="Probe batches recorded each time."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Directory with wiki.{train,valid,test}.raw (WikiText-2 raw)."
    ),
    corpus: str | None = typer.Option(None, help="The corpus: auto, wikitext or synthetic."),
    device: str | None = typer.Option(None, help="The device: cpu, cuda or cuda:N."),
    bf16: bool | None = typer.Option(
        None, "--bf16/--no-bf16", help="Train under bfloat16 autocast (measurements stay float32)."
    ),
    deterministic: bool | None = typer.Option(
        None,
        "--deterministic/--no-deterministic",
        help="Train with torch.use_deterministic_algorithms (default on): repeats and resumes are equal bit for bit on the same device type and thread count.",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last checkpoint of every seed."
    ),
    force: bool = typer.Option(
        False, "--force", help="Train into a folder that holds other files (not a run)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train several seeds side by side, with checkpoints and hook recording."""
    # Long because typer declares each command-line option as a parameter.
    from interp_ext.config import RunConfig, get_preset, override
    from interp_ext.run import Layout
    from interp_ext.training import train as run_training

    _setup_logging()
    out = _run_arg(run_dir, out, "train")
    if resume and Layout(out).config.exists():
        base = RunConfig.load(Layout(out).config)
        changes = dict(train__steps=steps, train__n_seeds=seeds, train__deterministic=deterministic)
    else:
        base = get_preset(preset)
        changes = dict(
            train__n_seeds=seeds,
            train__first_seed=first_seed,
            train__steps=steps,
            train__checkpoint_every=checkpoint_every,
            train__device=device,
            train__bf16=bf16,
            train__deterministic=deterministic,
            data__data_dir=str(data_dir) if data_dir else None,
            data__corpus=corpus,
            record__hooks=list(record) or None,
            record__every=record_every,
            record__n_batches=record_batches,
        )
    cfg = override(base, **changes)
    run = run_training(cfg, out, resume=resume, progress=not quiet, force=force)
    typer.echo(
        f"\nrun written to {run.path}  (seeds {run.seeds}, checkpoints at steps {run.steps})"
    )
    typer.echo(f"inspect it:  interp-ext info {run.path}")
    typer.echo(
        f"in Python:   from interp_ext import open_run; run = open_run({str(run.path)!r}); model = run.model(seed={run.seeds[0]})"
    )


@app.command()
def reproduce(
    preset: str = typer.Option(
        "tiny", help="'tiny' (CPU, minutes), 'tiny_mlp' (attention + MLP) or 'paper' (GPU scale)."
    ),
    run_dir: Path | None = typer.Argument(
        None, help="Run directory (default runs/tiny); or --out."
    ),
    out: Path | None = typer.Option(None, "--out", help="The run directory, as RUN_DIR."),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Directory with wiki.*.raw (WikiText-2); default: the hub, else the synthetic corpus.",
    ),
    seeds: int | None = typer.Option(None, help="Number of seeds (default: the preset's)."),
    steps: int | None = typer.Option(None, help="Training steps (default: the preset's)."),
    device: str | None = typer.Option(None, help="The device: cpu, cuda or cuda:N."),
    checkpoint_every: int | None = typer.Option(
        None, "--checkpoint-every", help="Steps between checkpoints (default: the preset's)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a killed reproduction; finished stages are skipped."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train, measure everything (induction, patching, geometry, Streams 1-3, SAEs) and write the report."""
    from interp_ext import distributed
    from interp_ext.pipeline import reproduce as run_reproduce

    _setup_logging()
    run, report, timings = run_reproduce(
        _run_arg(run_dir, out, "reproduce", Path("runs/tiny")),
        preset,
        str(data_dir) if data_dir else None,
        seeds,
        steps,
        device,
        resume,
        progress=not quiet,
        checkpoint_every=checkpoint_every,
    )
    if distributed.world()[0] != 0:
        return
    typer.echo("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    typer.echo(
        f"\nreport: {report.with_suffix('.html')} (one page; the text also in {report.name})"
    )
    typer.echo(f"figures: {report.parent}/*.png (interactive: *.html)")
    typer.echo(f"in Python: from interp_ext import open_run; run = open_run({str(run.path)!r})")


@app.command()
def study(
    run_dir: Path | None = typer.Argument(
        None, help="Run directory (default runs/study); or --out."
    ),
    out: Path | None = typer.Option(None, "--out", help="The run directory, as RUN_DIR."),
    preset: str = typer.Option("tiny", help="'tiny' (CPU), 'tiny_mlp' or 'paper'."),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Directory with wiki.*.raw (WikiText-2); default: the hub, else the synthetic corpus.",
    ),
    seeds: int | None = typer.Option(
        None, help="Number of seeds (default: the preset's measure.study_seeds, 8 for tiny)."
    ),
    steps: int | None = typer.Option(None, help="Training steps (default: the preset's)."),
    device: str | None = typer.Option(None, help="The device: cpu, cuda or cuda:N."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue a killed study; finished units are skipped."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Stream 3: train the study seeds, find each seed's circuit by cause, measure who reinforces
    whom (the member matrix) and replay the real steps through formation with the exact ledger;
    then the report."""
    from interp_ext import distributed
    from interp_ext.pipeline import study as run_study

    _setup_logging()
    run, report, timings = run_study(
        _run_arg(run_dir, out, "study", Path("runs/study")),
        preset,
        str(data_dir) if data_dir else None,
        seeds,
        steps,
        device,
        resume,
        progress=not quiet,
    )
    if distributed.world()[0] != 0:
        return
    typer.echo(
        "stage times: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        + f" (total {sum(timings.values()) / 60:.1f} min)"
    )
    typer.echo(
        f"\nreport: {report.with_suffix('.html')} (one page; the text also in {report.name})"
    )


@app.command("import")
def import_run(
    sources: list[str] = typer.Argument(
        ...,
        help="Hugging Face Trainer output folder(s) (one per seed), or a TransformerLens checkpointed model name.",
    ),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    probe_text: Path | None = typer.Option(
        None,
        "--probe-text",
        help="Text file the probe set is drawn from (tokenised with the checkpoints' tokenizer).",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Directory with wiki.*.raw (WikiText-2) for the probe set instead."
    ),
    checkpoint_index: str | None = typer.Option(
        None,
        "--checkpoint-index",
        help="For a model name: comma-separated checkpoint indices (default: all).",
    ),
    probe_batches: int = typer.Option(16, "--probe-batches", help="Probe batches B."),
    probe_batch_size: int = typer.Option(
        8, "--probe-batch-size", help="Sequences per probe batch."
    ),
) -> None:
    """Make a run directory from checkpoints trained elsewhere; every measurement then accepts it."""
    from interp_ext.importing import import_checkpoints

    _setup_logging()
    source = sources[0] if len(sources) == 1 else sources
    run = import_checkpoints(
        source,
        out,
        probe_text,
        data_dir,
        _parse_list(checkpoint_index),
        probe_batches,
        probe_batch_size,
    )
    typer.echo(
        f"imported {len(run.seeds)} seed(s), checkpoints at steps {run.steps} into {run.path}"
    )
    typer.echo(f"measure it:  interp-ext measure induction {run.path}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="The run whose checkpoint is exported."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (default: the run's first)."),
    step: int | None = typer.Option(
        None, "--step", help="Checkpoint step (default: the seed's last)."
    ),
    to: str = typer.Option(
        "hf", "--to", help="Format: 'hf', a Hugging Face transformers GPT2LMHeadModel folder."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write (new, or empty)."),
    fold_unembed_bias: bool = typer.Option(
        False,
        "--fold-unembed-bias",
        help="Fold a non-zero unembedding bias into lm_head (GPT-2 has no such bias; same logits).",
    ),
) -> None:
    """Write one checkpoint as a Hugging Face model folder (config.json, model.safetensors, tokenizer)."""
    from interp_ext.errors import ExportError
    from interp_ext.exporting import export_checkpoint

    _setup_logging()
    if to != "hf":
        raise ExportError(f"--to {to!r} is not a format here; use --to hf")
    run = _open(run_dir)
    seed = run.seeds[0] if seed is None else seed
    path = export_checkpoint(run, seed, step, out, fold_unembed_bias)
    step = run.steps_for(seed)[-1] if step is None else step
    typer.echo(f"exported seed {seed} step {step} of {run.path} to {path} (GPT2LMHeadModel)")
    typer.echo(f"load it:  AutoModelForCausalLM.from_pretrained({str(path)!r})")


@app.command()
def branch(
    run_dir: Path = typer.Argument(
        ..., help="The run to branch (its checkpoints hold AdamW moments)."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory of the branch (must not exist)."),
    seeds: str = typer.Option(
        ..., "--seeds", help="Seeds to continue, comma-separated, e.g. 0,1,3."
    ),
    start: int = typer.Option(..., "--from", help="The checkpoint step each seed continues from."),
    steps: int = typer.Option(..., "--steps", help="Steps to train after it."),
    checkpoint_every: int | None = typer.Option(
        None,
        "--checkpoint-every",
        help="Steps between the branch's checkpoints (default: the run's); finer times formation finer.",
    ),
    lr_scale: list[str] = typer.Option(
        [],
        "--lr-scale",
        help="COMPONENTS=M: multiply the AdamW update of those components' parameters by M "
        "(0 freezes), e.g. L0H1=0 or L0H1,L0H2=0.25 (repeatable).",
    ),
    moments: str = typer.Option(
        "run",
        "--moments",
        help="With --lr-scale: the scaled components' AdamW moments 'run' on as usual or 'freeze'.",
    ),
    ablate: list[str] = typer.Option(
        [],
        "--ablate",
        help="COMPONENT=mean|zero: replace a head's or an MLP's output during training by its "
        "batch mean or by zero (repeatable).",
    ),
    project_out: str = typer.Option(
        "",
        "--project-out",
        help="BLOCK=MEMBERS: at every step remove from BLOCK's update the component that raises "
        "MEMBERS' signal energy S (grad_BLOCK S_MEMBERS, from the batch's two halves), e.g. "
        "L0H1=L1H3 (one pair; each side a comma-separated set).",
    ),
    project_control: str = typer.Option(
        "signal",
        "--project-control",
        help="With --project-out: 'signal' (remove it along grad S) or 'random' (remove as much "
        "along a random direction of BLOCK: the control).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Continue some seeds of a run from a checkpoint, with or without an intervention, into a new
    run directory that every command reads (without one it equals the run bit for bit)."""
    # Long because typer declares each intervention as its own option.
    from interp_ext.branch import Interventions, parse_ablate, parse_lr_scale, parse_project
    from interp_ext.branch import branch as make_branch

    _setup_logging()
    run = _open(run_dir)
    chosen = _parse_list(seeds) or []
    iv = Interventions(
        parse_lr_scale(lr_scale),
        moments,
        parse_ablate(ablate),
        parse_project(project_out),
        project_control,
    )
    made = make_branch(
        run, chosen, start, steps, out, iv, progress=not quiet, checkpoint_every=checkpoint_every
    )
    typer.echo(
        f"branch of {run.path} at step {start}: seeds {made.seeds}, steps to {made.steps[-1]} in {made.path}"
    )
    typer.echo(f"measure it:  interp-ext measure induction {made.path}")


@app.command()
def causal(
    run_dir: Path = typer.Argument(..., help="A run measured with induction and circuit."),
    out: Path = typer.Option(..., "--out", help="Folder of the branches and tables (resumable)."),
    arms: str = typer.Option(
        "none,prev*0,ind*0,ctrl*0",
        "--arms",
        help="Comma-separated: none, prev*M / ind*M / ctrl*M (learning-rate multiplier M of the "
        "previous-token members, the induction members or the previous-token members' control "
        "heads), ablate:prev / ablate:ctrl (mean-ablated in training), proj:prev>ind / "
        "projrand:prev>ind (the partners' update stripped of what raises the induction heads' "
        "signal energy, or as much along a random direction).",
    ),
    leads: str = typer.Option("500", "--leads", help="Steps before formation to branch at."),
    steps: int = typer.Option(1000, "--steps", help="Steps each branch trains."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Branch checkpoints."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seeds (default: the formed ones)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """The causal test: branch each formed seed before formation, freeze, slow or clamp a
    circuit member, and time formation against the seed's own unperturbed branch."""
    from interp_ext.causal import all_tests, run_experiment

    _setup_logging()
    run = _open(run_dir)
    table = run_experiment(
        run,
        out,
        [a for a in arms.replace(" ", "").split(",") if a],
        _parse_list(leads) or [500],
        steps,
        checkpoint_every,
        _parse_list(seeds),
        progress=not quiet,
    )
    if table.empty:
        _fail(f"no formed seed in {run.path} to branch; measure induction and circuit first")
    typer.echo(all_tests(table).to_string(index=False))
    typer.echo(f"\nper branch: {out / 'arms.csv'}; figure: {out / 'causal.png'}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    beside: list[Path] = typer.Option(
        [],
        "--beside",
        help="Another run whose exact Stream 3 ledger is drawn next to this one's (repeatable).",
    ),
) -> None:
    """Write RUN/report/report.html (one page, every figure inline), report.md and each
    figure's PNG + HTML from the metrics table."""
    from interp_ext.report.compose import write_report

    run = _open(run_dir)
    others = tuple(_open(p) for p in beside)
    path = write_report(run, beside=others)
    typer.echo(f"report: {path.with_suffix('.html')} (one page; the text also in {path.name})")
    _name_broken(run.info()["broken_parts"])


@app.command()
def findings(
    study: Path = typer.Option(..., "--study", help="The study run (induction, members rows)."),
    causal_dir: Path | None = typer.Option(
        None, "--causal", help="The causal test's folder (its arms.csv), if run."
    ),
    out: Path = typer.Option(Path("docs"), "--out", help="Folder of findings.json and .md."),
    check: bool = typer.Option(
        False, "--check", help="Only compare the runs' rows with OUT/findings.json; write nothing."
    ),
) -> None:
    """Write the page of findings (OUT/findings.md) and the per-seed values it is computed from
    (OUT/findings.json), read from the runs' rows; --check compares instead."""
    import json

    from interp_ext.findings import collect, differences, write

    _open(study)
    if causal_dir is not None and not (causal_dir / "arms.csv").is_file():
        _fail(f"--causal {causal_dir}: no arms.csv there; run `interp-ext causal` into it first")
    snapshot = collect(study, causal_dir)
    if check:
        saved = out / "findings.json"
        if not saved.is_file():
            _fail(f"--check: no {saved} to compare with; run without --check to write it")
        changed = differences(json.loads(saved.read_text()), snapshot)
        if changed:
            _fail(f"the rows no longer give {saved} for: {', '.join(changed)}")
        typer.echo(f"{saved}: every claim's per-seed values agree with the rows")
        return
    data, page = write(snapshot, out)
    typer.echo(f"findings: {page} (from the per-seed values in {data})")


@app.command()
def info(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Seeds, steps, config summary and metric families of a run."""
    run = _open(run_dir)
    summary = run.info()
    typer.echo(f"run       {summary['path']}  (preset {summary['preset']})")
    typer.echo(f"corpus    {summary['corpus']}")
    typer.echo(f"model     {json.dumps(summary['model'])}, d_vocab {summary['d_vocab']}")
    t = run.config.train
    typer.echo(
        f"training  {t.steps} steps, batch {t.batch_size}, AdamW lr {t.lr} wd {t.weight_decay}, bf16 {t.bf16}"
    )
    typer.echo(f"seeds     {summary['seeds']}")
    if run.layout.branch.exists():
        b = json.loads(run.layout.branch.read_text())
        typer.echo(
            f"branch    of {b['parent']} at step {b['from']} for {b['steps']} steps; "
            f"interventions {json.dumps(b['interventions'])}"
        )
    steps = summary["steps"]
    typer.echo(
        f"steps     {len(steps)} checkpoints: {steps if len(steps) <= 12 else steps[:6] + ['...'] + steps[-3:]}"
    )
    typer.echo(f"recorded  {summary['recorded_hooks'] or 'no hooks'}")
    typer.echo(f"metrics   {summary['metric_families'] or 'none yet'}")
    _name_broken(summary["broken_parts"])


def _name_broken(parts: list) -> None:
    if parts:
        typer.echo(
            f"broken    {len(parts)} metrics part(s) failed verification and were set aside "
            f"(measure again to replace them): {', '.join(map(str, parts))}"
        )


def _parse_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        _fail(f"expected a comma-separated list of integers, got {text!r}")
        return None


def _run_arg(run_dir: Path | None, out: Path | None, command: str, default: Path | None = None):
    """The run directory a command creates, given as RUN_DIR or --out (one convention with every
    command that reads a run, --out kept as its alias)."""
    if run_dir is not None and out is not None and Path(run_dir) != Path(out):
        _fail(f"{command}: RUN_DIR {run_dir} and --out {out} differ; give one of them")
    chosen = run_dir if run_dir is not None else out if out is not None else default
    if chosen is None:
        _fail(f"{command}: give the run directory, e.g. `interp-ext {command} runs/mine`")
    return Path(chosen)


def _open(run_dir: Path):
    from interp_ext.run import open_run

    return open_run(run_dir)


# --------------------------------------------------------------------------- measure FAMILY


def _cli_type(f) -> type:
    """The command-line type of a settings field (tuples are given comma-separated)."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name, cli in (("bool", bool), ("int", int), ("float", float)):
        if kind.startswith(name):
            return cli
    return str


def _settings_value(f, raw):
    if raw is None:
        return None
    parse = f.metadata.get("parse")
    if parse:
        return parse(raw)
    if "tuple" in str(f.type):
        return tuple(x.strip() for x in str(raw).split(",") if x.strip())
    return raw


def _option(name: str, flag: str, help_text: str, annotation) -> inspect.Parameter:
    option = typer.Option(None, flag, help=help_text, show_default=False)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def _settings_option(f) -> inspect.Parameter:
    """The command-line option of one settings field (``--no-x`` too for a flag)."""
    from dataclasses import MISSING

    flag = f.metadata.get("cli", "--" + f.name.replace("_", "-"))
    default = f.default if f.default is not MISSING else None
    shown = ",".join(default) if isinstance(default, tuple) else default
    help_text = f.metadata.get("help", "")
    help_text += "" if "default" in help_text or shown in (None, "") else f" (default: {shown})"
    help_text = help_text.replace("[", "\\[")  # rich reads [..] as markup and would drop it
    if _cli_type(f) is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    return _option(f.name, flag, help_text, _cli_type(f) | None)


def _family_command(name: str):
    """``interp-ext measure NAME RUN``: options from the family's settings fields."""
    from dataclasses import fields

    from interp_ext.measurement.runner import get_family

    fam = get_family(name)
    settings_fields = list(fields(fam.settings))
    run_dir = typer.Argument(..., help="Run directory.")
    params = [
        inspect.Parameter(
            "run_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=run_dir, annotation=Path
        ),
        _option("seeds", "--seeds", "Comma-separated seeds (default: all).", str | None),
        _option(
            "steps",
            "--steps",
            "Comma-separated checkpoint steps (default: the family's choice, usually all).",
            str | None,
        ),
        _option("quiet", "--quiet", "No progress bar.", bool | None),
    ]
    # a field the family resolves from the run is recorded with the measurement, not given
    settings_fields = [f for f in settings_fields if not f.metadata.get("resolved")]
    params += [_settings_option(f) for f in settings_fields]

    def command(
        run_dir: Path, seeds: str | None, steps: str | None, quiet: bool | None, **values
    ) -> None:
        given = {
            f.name: _settings_value(f, values[f.name])
            for f in settings_fields
            if values[f.name] is not None
        }
        _measure(name, run_dir, seeds, steps, bool(quiet), given)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    doc = (inspect.getmodule(type(fam)).__doc__ or name).strip().split("\n\n")[0].replace("\n", " ")
    command.__doc__ = doc.split(": ", 1)[-1] if doc.startswith("``") else doc
    return command


def _measure(
    name: str, run_dir: Path, seeds: str | None, steps: str | None, quiet: bool, values: dict
) -> None:
    from interp_ext import distributed
    from interp_ext.measurement.runner import get_family, measure

    run = _open(run_dir)
    fam = get_family(name)
    settings = fam.settings.from_dict(values)
    distributed.init(run.device)
    zero = distributed.world()[0] == 0
    rows = measure(
        run, settings, _parse_list(seeds), _parse_list(steps), progress=not quiet and zero
    )
    if not zero:
        return
    counts = rows.attrs.get("measured", {})
    typer.echo(
        f"{name}: settings {rows.attrs.get('settings')} ({sum(counts.values())} units measured now; {len(rows)} rows)"
    )
    for line in fam.describe(rows):
        typer.echo(line)


class _FamilyGroup(typer.core.TyperGroup):
    """``measure``'s subcommands, one per registered family, built when asked for (a family's
    module is imported only then); an unknown family is a one-line error listing the valid ones."""

    def list_commands(self, ctx):
        from interp_ext.measurement.runner import family_names

        return family_names()

    def get_command(self, ctx, cmd_name):
        import click

        from interp_ext.measurement.runner import MeasureError, closest_first, family_names

        if cmd_name in family_names():
            single = typer.Typer(add_completion=False)
            single.command(cmd_name)(_family_command(cmd_name))
            return typer.main.get_command(single)
        message = str(
            MeasureError(
                f"unknown measurement family {cmd_name!r}; valid families: {closest_first(cmd_name, family_names())}"
            )
        )
        return click.Command(
            cmd_name,
            callback=lambda: _fail(message),
            add_help_option=False,  # `measure nosuch --help` is the same one line
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )


measure_app.info.cls = _FamilyGroup


def main() -> None:  # pragma: no cover - console entry
    """The ``interp-ext`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
