"""The ``interp-ext`` command: train runs, inspect them, measure them.

Every command has ``--help``. Runs are directories (SPEC section 2); everything a
command computes goes into the run's metrics table, so notebooks read the same
numbers with ``open_run(RUN).metrics()``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Watch circuits form during training (TransformerLens).")
measure_app = typer.Typer(no_args_is_help=True, help="Measure a trained run; results go to RUN/metrics.parquet.")
app.add_typer(measure_app, name="measure")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("interp_ext").setLevel(logging.INFO)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run directory to create (or to continue with --resume)."),
    preset: str = typer.Option("tiny", help="Named config: 'tiny' (CPU) or 'paper' (SPEC section 1)."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds trained side by side."),
    first_seed: Optional[int] = typer.Option(None, help="First seed; seeds are first_seed .. first_seed + seeds - 1."),
    steps: Optional[int] = typer.Option(None, help="Training steps (with --resume: extend the run to this many)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints (step 0 is always saved)."),
    record: List[str] = typer.Option([], "--record", help="TransformerLens hook name to record at checkpoints (repeatable); suffix _grad for backward hooks."),
    record_every: Optional[int] = typer.Option(None, "--record-every", help="Also record every N training steps (0: checkpoints only)."),
    record_batches: Optional[int] = typer.Option(None, "--record-batches", help="Probe batches recorded each time."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Directory with wiki.{train,valid,test}.raw (WikiText-2 raw)."),
    corpus: Optional[str] = typer.Option(None, help="auto | wikitext | synthetic."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bfloat16 autocast for training (measurements stay float32)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of every seed."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train several seeds side by side, with checkpoints and hook recording."""
    from interp_ext.config import ConfigError, RunConfig, get_preset, override
    from interp_ext.data import DataError
    from interp_ext.training import NonFiniteLossError
    from interp_ext.training import train as run_training

    _setup_logging()
    try:
        if resume and (out / "config.json").exists():
            base = RunConfig.load(out / "config.json")
            changes = dict(train__steps=steps)
        else:
            base = get_preset(preset)
            changes = dict(
                train__n_seeds=seeds,
                train__first_seed=first_seed,
                train__steps=steps,
                train__checkpoint_every=checkpoint_every,
                train__device=device,
                train__bf16=bf16,
                data__data_dir=str(data_dir) if data_dir else None,
                data__corpus=corpus,
                record__hooks=list(record) or None,
                record__every=record_every,
                record__n_batches=record_batches,
            )
        cfg = override(base, **changes)
        run = run_training(cfg, out, resume=resume, progress=not quiet)
    except (ConfigError, DataError, FileExistsError, NonFiniteLossError) as err:
        _fail(str(err))
        return
    typer.echo(f"\nrun written to {run.path}  (seeds {run.seeds}, checkpoints at steps {run.steps})")
    typer.echo(f"inspect it:  interp-ext info {run.path}")
    typer.echo(f"in Python:   from interp_ext import open_run; run = open_run({str(run.path)!r}); model = run.model(seed={run.seeds[0]})")


@app.command()
def info(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Seeds, steps, config summary and metric families of a run."""
    from interp_ext.store import RunError, open_run

    try:
        run = open_run(run_dir)
    except RunError as err:
        _fail(str(err))
        return
    summary = run.info()
    typer.echo(f"run       {summary['path']}  (preset {summary['preset']})")
    typer.echo(f"corpus    {summary['corpus']}")
    typer.echo(f"model     {json.dumps(summary['model'])}, d_vocab {summary['d_vocab']}")
    t = run.config.train
    typer.echo(f"training  {t.steps} steps, batch {t.batch_size}, AdamW lr {t.lr} wd {t.weight_decay}, bf16 {t.bf16}")
    typer.echo(f"seeds     {summary['seeds']}")
    steps = summary["steps"]
    typer.echo(f"steps     {len(steps)} checkpoints: {steps if len(steps) <= 12 else steps[:6] + ['...'] + steps[-3:]}")
    typer.echo(f"recorded  {summary['recorded_hooks'] or 'no hooks'}")
    typer.echo(f"metrics   {summary['metric_families'] or 'none yet'}")


def _parse_list(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        _fail(f"expected a comma-separated list of integers, got {text!r}")
        return None


def _open(run_dir: Path):
    from interp_ext.store import RunError, open_run

    try:
        return open_run(run_dir)
    except RunError as err:
        _fail(str(err))


@measure_app.command("induction")
def measure_induction(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (default: all)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated checkpoint steps (default: all)."),
    threshold: float = typer.Option(0.4, help="Induction-score threshold for detection."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Induction/previous-token/duplicate/copying scores, K-composition, detection, formation step, ablation."""
    from circuits.induction import measure_run
    from interp_ext.store import RunError

    run = _open(run_dir)
    try:
        df = measure_run(run, _parse_list(seeds), _parse_list(steps), threshold=threshold, progress=not quiet)
    except RunError as err:
        _fail(str(err))
        return
    if df.empty:
        typer.echo("no induction measurement: the model needs at least two layers")
        return
    for seed in sorted(df.seed.unique()):
        if seed < 0:
            continue
        d = df[df.seed == seed]
        heads = d[d.metric == "detected_induction_head"].component.tolist()
        prev = d[d.metric == "detected_prev_token_head"].component.tolist()
        form = d[d.metric == "formation_step"].value.iloc[0]
        best = d[d.metric == "best_induction_score"].sort_values("step")
        abl = d[d.metric == "ablation_loss_increase"].set_index("component").value
        typer.echo(
            f"seed {seed}: best induction score {best.value.iloc[0]:.2f} (step {best.step.iloc[0]}) -> {best.value.iloc[-1]:.2f} "
            f"(step {best.step.iloc[-1]}); induction heads {heads or 'none'}, previous-token heads {prev or 'none'}; "
            f"formation step ~{form:.0f}; ablation loss increase {abl.get('detected', float('nan')):.3f} vs random {abl.get('random', float('nan')):.3f}"
        )
    m = df[df.metric.str.startswith("formation_step_")].set_index("metric").value
    typer.echo(f"formation step across seeds: {m['formation_step_mean']:.0f} (95% CI {m['formation_step_lo']:.0f} .. {m['formation_step_hi']:.0f})")


@measure_app.command("patching")
def measure_patching(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    step: int = typer.Option(..., "--step", help="Checkpoint step."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default: first)."),
) -> None:
    """Activation patching sweeps (residual x position, head outputs) and path patching into induction heads."""
    from circuits.patching import measure_patching as run_patching
    from interp_ext.store import RunError

    run = _open(run_dir)
    try:
        summary = run_patching(run, seed if seed is not None else run.seeds[0], step)
    except RunError as err:
        _fail(str(err))
        return
    typer.echo(summary)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
