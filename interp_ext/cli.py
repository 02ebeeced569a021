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
    deterministic: Optional[bool] = typer.Option(
        None, "--deterministic/--no-deterministic",
        help="torch.use_deterministic_algorithms while training (default on): repeats and resumes are equal bit for bit on the same device type and thread count.",
    ),
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
            changes = dict(train__steps=steps, train__deterministic=deterministic)
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
        run = run_training(cfg, out, resume=resume, progress=not quiet)
    except (ConfigError, DataError, FileExistsError, NonFiniteLossError) as err:
        _fail(str(err))
        return
    typer.echo(f"\nrun written to {run.path}  (seeds {run.seeds}, checkpoints at steps {run.steps})")
    typer.echo(f"inspect it:  interp-ext info {run.path}")
    typer.echo(f"in Python:   from interp_ext import open_run; run = open_run({str(run.path)!r}); model = run.model(seed={run.seeds[0]})")


@app.command()
def reproduce(
    preset: str = typer.Option("tiny", help="'tiny' (CPU, minutes) or 'paper' (GPU scale)."),
    out: Path = typer.Option(Path("runs/tiny"), "--out", help="Run directory."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Directory with wiki.*.raw (WikiText-2); default: the hub, else the synthetic corpus."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds (default: the preset's)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the preset's)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints (default: the preset's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed reproduction; finished stages are skipped."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train, measure everything (induction, patching, geometry, Streams 1-3, SAEs) and write the report."""
    from interp_ext.config import ConfigError
    from interp_ext.data import DataError
    from interp_ext.pipeline import reproduce as run_reproduce
    from interp_ext.training import NonFiniteLossError

    from interp_ext import distributed

    _setup_logging()
    try:
        run, report, timings = run_reproduce(
            out, preset, str(data_dir) if data_dir else None, seeds, steps, device, resume, progress=not quiet, checkpoint_every=checkpoint_every
        )
    except (ConfigError, DataError, NonFiniteLossError) as err:
        _fail(str(err))
        return
    if distributed.world()[0] != 0:
        return
    typer.echo("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    typer.echo(f"\nreport: {report}")
    typer.echo(f"figures: {report.parent}/*.png (interactive: *.html)")
    typer.echo(f"in Python: from interp_ext import open_run; run = open_run({str(run.path)!r})")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Write RUN/report/report.md and its PNG + HTML figures from the metrics table."""
    from interp_ext.report import write_report

    run = _open(run_dir)
    path = write_report(run)
    typer.echo(f"report: {path}")


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


def _rank_zero(run) -> bool:
    """Join torchrun's process group (if launched by it); True on the process that prints summaries."""
    from interp_ext import distributed

    distributed.init(run.device)
    return distributed.world()[0] == 0


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
    zero = _rank_zero(run)
    try:
        df = measure_run(run, _parse_list(seeds), _parse_list(steps), threshold=threshold, progress=not quiet and zero)
    except RunError as err:
        _fail(str(err))
        return
    if not zero:
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


@measure_app.command("geometry")
def measure_geometry(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (default: all)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated checkpoint steps (default: all)."),
    batches: Optional[int] = typer.Option(None, "--batches", help="Probe batches B that build G (default: all of the probe set)."),
    k: int = typer.Option(4, "--k", help="Size of the top eigenspace U."),
    params: str = typer.Option("all", help="'all', 'blocks' or comma-separated groups (ln, attn_qkv, attn_out, mlp_in, mlp_out, embed, unembed)."),
    centered: bool = typer.Option(False, help="Subtract the mean gradient before forming G."),
    lag: int = typer.Option(10, help="Checkpoints between U_t and U_{t-lag} (subspace_similarity)."),
    delta: Optional[int] = typer.Option(None, help="Stream 1 Delta in steps (default: lag checkpoint intervals)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Dashboard (SPEC 4), Stream 1 drift, Stream 2 cross-seed alignment, beta fit and transition."""
    from interp_ext.geometry import measure_beta_and_transition, measure_run, measure_stream2
    from interp_ext.store import RunError

    run = _open(run_dir)
    groups = params if params in ("all", "blocks") else [g.strip() for g in params.split(",")]
    seed_list = _parse_list(seeds)
    zero = _rank_zero(run)
    try:
        # under torchrun each rank measures its own seeds; cross-seed metrics read every seed after a barrier
        measure_run(run, seed_list, _parse_list(steps), batches, k, groups, centered, lag, delta, progress=not quiet and zero)
        if len(seed_list or run.seeds) < 2:
            if zero:
                typer.secho("Stream 2 needs >= 2 seeds: skipped (the other metrics are computed)", fg=typer.colors.YELLOW, err=True)
        else:
            measure_stream2(run, _parse_list(steps), seed_list, batches, groups, progress=not quiet and zero)
        measure_beta_and_transition(run)
    except (RunError, ValueError) as err:
        _fail(str(err))
        return
    if not zero:
        return
    geo = run.metrics("geometry")
    last = geo[(geo.step == geo.step.max()) & (geo.component == "")].groupby("metric")["value"].mean()
    typer.echo(f"geometry at step {geo.step.max()} (seed mean): " + ", ".join(f"{m} {last[m]:.3f}" for m in ("effective_rank", "participation_ratio", "topk_variance", "overlap_prev") if m in last))
    tr = run.metrics("transition")
    if len(tr):
        t = tr.set_index("metric").value
        typer.echo(f"transition window: steps {t.get('start', float('nan')):.0f} .. {t.get('end', float('nan')):.0f}")


@measure_app.command("autocatalysis")
def measure_autocatalysis(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    circuit: str = typer.Option("induction", help="'induction' (detected per seed at the last checkpoint) or a Circuit JSON file."),
    direction: str = typer.Option("both", help="sgd, optimizer or both."),
    rows: int = typer.Option(32, "--rows", help="Sampled rows of dG_ii/dtheta_j."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (default: all)."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated checkpoint steps (default: all)."),
    batches: Optional[int] = typer.Option(None, "--batches", help="Probe batches (default: all)."),
    controls: int = typer.Option(3, help="Random-head control circuits per checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Stream 3: K[A,B] = dE_A/d(eps d_B) on the circuit, controls, entries and the energy budget."""
    from interp_ext import autocatalysis
    from interp_ext.store import RunError

    run = _open(run_dir)
    zero = _rank_zero(run)
    directions = ("sgd", "optimizer") if direction == "both" else (direction,)
    try:
        df = autocatalysis.measure_run(run, circuit, directions, _parse_list(seeds), _parse_list(steps), batches, rows, controls, progress=not quiet and zero)
    except (RunError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
        return
    if not zero:
        return
    cc = df[(df.metric == "K_norm") & (df.component == "C|C")]
    summary = cc.groupby(["circuit", "direction"])["value"].agg(["mean", "min", "max"])
    typer.echo("normalised K[C,C] over checkpoints and seeds:")
    typer.echo(summary.to_string())


@measure_app.command("sae")
def measure_sae(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    hook: str = typer.Option(..., "--hook", help="TransformerLens hook name, e.g. blocks.1.hook_resid_post."),
    steps: Optional[str] = typer.Option(None, help="Comma-separated checkpoint steps (default: all)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (default: all)."),
    width: int = typer.Option(256, help="SAE latents (d_sae)."),
    k: int = typer.Option(8, help="TopK active latents per token."),
    source: str = typer.Option("auto", help="recorded (the run's recordings only), generate (run the checkpoint on corpus text) or auto."),
    threshold: float = typer.Option(0.7, help="Similarity threshold for a match."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train an SAE per (seed, checkpoint), match features across checkpoints and seeds, relate them to induction."""
    from interp_ext.sae_tracking import track_run
    from interp_ext.sae_tracking.tracking import HookNotRecordedError
    from interp_ext.store import RunError

    run = _open(run_dir)
    zero = _rank_zero(run)
    try:
        df = track_run(run, hook, _parse_list(steps), _parse_list(seeds), width, k, source, threshold=threshold, progress=not quiet and zero)
    except (HookNotRecordedError, RunError, ValueError) as err:
        _fail(str(err))
        return
    if not zero:
        return
    q = df[df.metric.isin(["l0", "explained_variance", "dead_fraction", "ce_recovered"])].groupby("metric")["value"].mean()
    typer.echo("SAE quality (mean over seeds and checkpoints): " + ", ".join(f"{m} {v:.3f}" for m, v in q.items()))
    birth = df[df.metric == "induction_feature_birth_step"].value
    if len(birth):
        typer.echo(f"birth step of the most induction-related feature: {birth.mean():.0f} (mean over seeds)")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
