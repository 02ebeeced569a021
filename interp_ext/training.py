"""Multi-seed training as one stacked ensemble (SPEC section 3).

All seeds train in one process: their parameters are stacked with
``torch.func.stack_module_state`` and the `HookedTransformer` forward is vmapped
over the seed dimension with ``functional_call``, so on a GPU 16 seeds cost one
kernel launch per op. On a CPU each seed instead runs through its own
`HookedTransformer` whose weights are views of the stacked tensors. Each seed's
``torch.optim.AdamW`` (fused kernels by default) steps its views, so checkpoints
and measurements read one stacked tensor per parameter. Each seed's trajectory
equals training that seed alone with a plain `HookedTransformer` (tested).

Read top to bottom: :func:`train` prepares the run directory, then
:class:`StackedTrainer` runs the loop, checkpoints and records.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from interp_ext import diskio, distributed
from interp_ext.adamw import adamw, autocast, deterministic_algorithms, set_adamw_state
from interp_ext.config import ConfigError, RunConfig, TrainConfig
from interp_ext.data import TokenData, make_probe_set, prepare_data, training_rows
from interp_ext.errors import CheckpointError, NonFiniteLossError, RunExistsError
from interp_ext.hooks import ActivationRecorder, validate_hooks
from interp_ext.interventions import (
    Interventions,
    Projection,
    ablation_hooks,
    apply_scaled_update,
    interventions_of,
    scaled_masks,
)
from interp_ext.models import build_model, param_names, share_parameters
from interp_ext.run import Layout, Run
from interp_ext.run.checkpoints import load_checkpoint, save_checkpoint
from interp_ext.run.parts import unit_name

log = logging.getLogger("interp_ext")


def _provenance(cfg: RunConfig) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("interp-ext", "torch", "transformer-lens", "sae-lens", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {
        "versions": versions,
        "git_sha": sha,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "numerics": numerics(cfg),
    }


def seeds_per_pass(train: TrainConfig, n_seeds: int) -> int:
    """Seeds per forward/backward (``train.seed_chunk``; 0 = automatic).

    Automatic: every seed of the process in one vmap on a GPU (one kernel launch per
    op for all of them); one seed at a time on a CPU, where the stacked activations
    of many seeds (the 50,257-wide logits above all) overflow the caches and one
    vmap over 16 seeds runs at half the speed (docs/benchmarks.md).
    """
    if train.seed_chunk:
        return min(train.seed_chunk, n_seeds)
    return n_seeds if torch.device(train.device).type == "cuda" else 1


NUMERICS = ("deterministic", "device_type", "threads", "seeds_per_pass")


def numerics(cfg: RunConfig) -> dict:
    """What decides whether a repeat of this training is equal bit for bit: the
    deterministic-algorithms setting, the device type, the CPU thread count and the
    seeds sharing one forward/backward (a vmap over 4 seeds and one seed at a time
    differ at float level: 1.4e-3 relative after 50 bf16 steps on a GPU)."""
    return {
        "deterministic": cfg.train.deterministic,
        "device_type": torch.device(cfg.train.device).type,
        "threads": torch.get_num_threads(),
        "seeds_per_pass": ranks_seeds_per_pass(cfg.train),
    }


def ranks_seeds_per_pass(train: TrainConfig) -> int | list[int]:
    """:func:`seeds_per_pass` of the process, or under torchrun of every rank in rank order (the
    shares can differ: 3 seeds on 2 ranks are 2 and 1), so the record describes every rank."""
    distributed.my_seeds(train.seeds)  # refuses more ranks than seeds, in one line
    _, size = distributed.world()
    per_rank = [
        seeds_per_pass(train, len(distributed.rank_share(train.seeds, r, size)))
        for r in range(size)
    ]
    return per_rank[0] if size == 1 else per_rank


def last_complete_step(out: Path, seeds: list[int]) -> int | None:
    """Largest step with a readable checkpoint for every seed, or None (a file cut short by a
    crash is not counted: the run resumes from the checkpoint before it)."""
    layout = Layout(out)
    run_steps = None
    for s in seeds:
        folder = layout.seed_checkpoints(s)
        steps = (
            {int(p.name[5:-12]) for p in folder.glob("step=*.safetensors")}
            if folder.is_dir()
            else set()
        )
        run_steps = steps if run_steps is None else run_steps & steps
    for step in sorted(run_steps or (), reverse=True):
        try:
            for s in seeds:
                diskio.safetensors_metadata(layout.checkpoint(s, step))
        except CheckpointError as err:
            log.warning("%s; resuming from an earlier checkpoint", str(err).splitlines()[0])
            continue
        return step
    return None


class StackedTrainer:
    """Trains seeds of one model config side by side.

    Args:
        cfg: the run config.
        out: run directory (prepared by :func:`prepare_run`).
        data: token streams and tokenizer.
        probe: the probe set (recordings run on it).
        seeds: the seeds this process trains (default: all of ``cfg.train.seeds``).
    """

    def __init__(
        self,
        cfg: RunConfig,
        out: Path | None,
        data: TokenData,
        probe: dict[str, torch.Tensor],
        seeds: list[int] | None = None,
        interventions: Interventions | None = None,
    ):
        self.cfg, self.data, self.probe = cfg, data, probe
        self.out = Path(out) if out is not None else None
        self.device = torch.device(cfg.train.device)
        self.seeds = cfg.train.seeds if seeds is None else list(seeds)
        models = [
            build_model(cfg.model, data.d_vocab, seed=s, device=cfg.train.device)
            for s in self.seeds
        ]
        self.template = models[0]
        self.names = param_names(self.template)
        params, _ = stack_module_state(models)
        self.params = {k: params[k] for k in self.names}
        # each seed's model keeps its hooks and forward but its weights become views of the stacked
        # tensors: one seed at a time runs as a plain module (see train_step), and the seed's AdamW
        # steps its views, so a gradient never has to be copied into a stacked buffer
        self.models = [share_parameters(m, self.params, i) for i, m in enumerate(models)]
        self.views = [dict(m.named_parameters()) for m in self.models]
        self.buffers = {k: v for k, v in self.template.named_buffers()}
        self.optimizers = self._make_optimizers()
        self.step = 0
        self.recorder = ActivationRecorder(validate_hooks(self.template, cfg.record.hooks))
        self._check_record_budget()
        self._vloss = vmap(self._loss, in_dims=(0, None, 0))
        # a branch's interventions (interp_ext.interventions): none for a plain run
        self.interventions = interventions or Interventions()
        self.scaled = scaled_masks(self.interventions, self.template)
        # once per model: the template is the first seed's module on the per-seed path
        for model in {id(m): m for m in [*self.models, self.template]}.values():
            for name, fn in ablation_hooks(self.interventions):
                model.add_hook(name, fn, is_permanent=True)
        self.projections = (
            [
                Projection(
                    self.interventions, m, s, self.out / "projection.csv" if self.out else None
                )
                for m, s in zip(self.models, self.seeds)
            ]
            if self.interventions.project_out
            else []
        )

    def _make_optimizers(self) -> list[torch.optim.AdamW]:
        """One AdamW per seed over its views of the stacked parameters.

        A seed steps as soon as its gradient exists and frees it: holding every seed's
        gradient for one AdamW at the end made 4 seeds 25% slower on the CPU.
        """
        return [adamw([v[k] for k in self.names], self.cfg.train) for v in self.views]

    def _loss(self, params, buffers, tokens):
        return functional_call(
            self.template, (params, buffers), (tokens,), kwargs={"return_type": "loss"}
        )

    def _check_record_budget(self) -> None:
        if not self.recorder.hooks:
            return
        n_seq = self.cfg.record.n_batches * self.probe[self.cfg.record.probe].shape[1]
        seq_len = self.probe[self.cfg.record.probe].shape[-1]
        per = self.recorder.bytes_per_sequence(self.template, seq_len)
        if per * n_seq > self.cfg.record.max_bytes:
            raise ConfigError(
                f"record.n_batches={self.cfg.record.n_batches} records {per * n_seq / 2**20:.1f} MiB per seed and step, "
                f"over record.max_bytes={self.cfg.record.max_bytes / 2**20:.1f} MiB; record fewer batches or hooks, or raise the bound"
            )

    # ------------------------------------------------------------------ state
    def seed_params(self, i: int) -> dict[str, torch.Tensor]:
        return {k: self.params[k][i].detach() for k in self.names}

    def seed_model(self, i: int):
        """Seed ``i``'s `HookedTransformer`; its weights share storage with the stacked parameters."""
        return self.models[i]

    def save(self) -> None:
        for i, s in enumerate(self.seeds):
            own = [self.optimizers[i].state.get(self.views[i][k]) for k in self.names]
            has_state = all(own)
            save_checkpoint(
                Layout(self.out).checkpoint(s, self.step),
                self.seed_params(i),
                seed=s,
                step=self.step,
                exp_avg={k: st["exp_avg"] for k, st in zip(self.names, own)} if has_state else None,
                exp_avg_sq={k: st["exp_avg_sq"] for k, st in zip(self.names, own)}
                if has_state
                else None,
                adam_step=float(own[0]["step"]) if has_state else 0.0,
            )

    def load(self, step: int) -> None:
        """Restore params and AdamW state of every seed from checkpoints at ``step``."""
        ckpts = [load_checkpoint(Layout(self.out).checkpoint(s, step)) for s in self.seeds]
        with torch.no_grad():
            for k in self.names:
                self.params[k].copy_(torch.stack([c["params"][k] for c in ckpts]).to(self.device))
        self.optimizers = self._make_optimizers()
        for opt, c in zip(self.optimizers, ckpts):
            if c["exp_avg"]:
                set_adamw_state(
                    opt, [(c["adam_step"], c["exp_avg"][k], c["exp_avg_sq"][k]) for k in self.names]
                )
        self.step = step

    def record(self) -> None:
        if not self.recorder.hooks:
            return
        probe = self.probe[self.cfg.record.probe][: self.cfg.record.n_batches]
        tokens = probe.reshape(-1, probe.shape[-1]).to(self.device)
        for i, s in enumerate(self.seeds):
            with deterministic_algorithms(self.cfg.train.deterministic, self.cfg.train.device):
                acts = self.recorder.record(self.seed_model(i), tokens)
            diskio.write_safetensors(
                Layout(self.out).activation(s, self.step),
                acts,
                {"step": str(self.step), "seed": str(s)},
            )

    # ------------------------------------------------------------------ loop
    def batch(self) -> torch.Tensor:
        t, m = self.cfg.train, self.cfg.model
        toks = [
            training_rows(
                self.data.train,
                s,
                self.step,
                t.batch_size,
                m.n_ctx,
                self.data.bos,
                self.cfg.data,
                self.data.d_vocab,
            )[0]
            for s in self.seeds
        ]
        return torch.from_numpy(np.stack(toks)).to(self.device)

    def seed_chunk(self) -> int:
        """Seeds per forward/backward (:func:`seeds_per_pass`). Either way the parameters
        stay stacked and each seed's AdamW steps its views."""
        if self.projections:  # each seed's projection reads its own module's gradients
            return 1
        return seeds_per_pass(self.cfg.train, len(self.seeds))

    def _set_seed_grads(self, start: int, grads: dict[str, torch.Tensor]) -> None:
        """Hand rows of stacked gradients [chunk, ...] to seeds ``start, start + 1, ...`` as views.

        Gradients that come back transposed are made contiguous (a copy only for those),
        as AccumulateGrad would: AdamW on mixed strides runs at half speed.
        """
        for k, g in grads.items():
            for j in range(g.shape[0]):
                self.views[start + j][k].grad = g[j].contiguous()

    def _check_finite(self, loss: torch.Tensor, start: int) -> None:
        finite = torch.isfinite(loss)
        if not bool(finite.all()):
            bad = [
                (self.seeds[start + i], float(loss[i].detach()))
                for i in range(len(loss))
                if not bool(finite[i])
            ]
            last = last_complete_step(self.out, self.seeds) if self.out is not None else None
            raise NonFiniteLossError(
                f"non-finite training loss at step {self.step} for seed(s) {[s for s, _ in bad]} (values {[v for _, v in bad]}); "
                f"the last good checkpoint is step {last} in {self.out / 'checkpoints' if self.out else 'the run'}; lower train.lr or turn off bf16, then resume"
            )

    def _seed_step(self, i: int, tokens: torch.Tensor) -> torch.Tensor:
        """Seed ``i`` alone through its own module (``.grad`` lands on its views), then its AdamW step."""
        if self.projections:
            self.projections[i].prepare(
                self.models[i], tokens, self.step, lambda: autocast(self.cfg)
            )
        with autocast(self.cfg):
            loss = self.models[i](tokens, return_type="loss").float().reshape(1)
        self._check_finite(loss, i)
        loss.backward()
        self._adamw_steps(i, i + 1)
        if self.projections:
            self.projections[i].apply(self.models[i])
        return loss.detach()

    def _adamw_steps(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            opt = self.optimizers[i]
            if self.scaled:
                apply_scaled_update(opt, self.views[i], self.scaled, self.interventions.moments)
                continue
            opt.step()
            opt.zero_grad(set_to_none=True)

    def train_step(self) -> torch.Tensor:
        """One AdamW step for every seed; returns the per-seed losses [n_seeds].

        A non-finite loss raises before its seed (or vmapped chunk) steps; seeds before it
        have stepped already, so continue from the last checkpoint (``--resume``).
        """
        with deterministic_algorithms(self.cfg.train.deterministic, self.cfg.train.device):
            return self._train_step()

    def _train_step(self) -> torch.Tensor:
        tokens = self.batch()
        chunk = self.seed_chunk()
        n = len(self.seeds)
        if chunk == 1:
            # one seed at a time through its own module, whose weights are views of the stacked
            # parameters: the forward, backward and gradient layout of a plain model, no copies
            losses = [self._seed_step(i, tokens[i]) for i in range(n)]
        else:
            # chunks of seeds vmapped over their views of the stacked parameters (one chunk = every
            # seed in one vmap): backward touches only that chunk
            losses = []
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                part = {k: v[start:stop] for k, v in self.params.items()}
                with autocast(self.cfg):
                    loss = self._vloss(part, self.buffers, tokens[start:stop]).float()
                self._check_finite(loss, start)
                gs = torch.autograd.grad(loss.sum(), [part[k] for k in self.names])
                self._set_seed_grads(start, dict(zip(self.names, gs)))
                self._adamw_steps(start, stop)
                losses.append(loss.detach())
        self.step += 1
        return torch.cat(losses)

    def run(self, progress: bool = True) -> None:
        cfg = self.cfg.train
        run = Run(self.out)
        tokens_per_step = len(self.seeds) * cfg.batch_size * self.cfg.model.n_ctx
        window: list[torch.Tensor] = []
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
        )
        t0, s0 = time.perf_counter(), self.step
        while self.step < cfg.steps:
            losses = self.train_step()
            window.append(losses)
            bar.update(1)
            if self.step % 10 == 0 or self.step == cfg.steps:
                rate = (self.step - s0) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{float(losses.mean()):.3f}",
                    min=f"{float(losses.min()):.3f}",
                    max=f"{float(losses.max()):.3f}",
                    tok_s=f"{rate:,.0f}",
                )
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
                self.record()
                mean = torch.stack(window).mean(0)
                for i, s in enumerate(self.seeds):
                    rows = [
                        {
                            "seed": s,
                            "step": self.step,
                            "metric": "loss",
                            "component": "",
                            "value": float(mean[i]),
                        }
                    ]
                    run.write_rows("train", "train", unit_name(s, self.step), rows)
                window = []
            elif self.cfg.record.every and self.step % self.cfg.record.every == 0:
                self.record()
        bar.close()


def prepare_run(
    cfg: RunConfig, out: str | Path, cache_dir: str | Path | None = None
) -> tuple[TokenData, dict[str, torch.Tensor]]:
    """Create the run directory: config, tokenizer, token streams and probe set."""
    layout = Layout(out)
    layout.root.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg.data, layout.tokenizer, cache_dir)
    diskio.write_npy(layout.tokens("train"), data.train)
    diskio.write_npy(layout.tokens("heldout"), data.heldout)
    probe = make_probe_set(data, cfg.data, cfg.model)
    diskio.write_safetensors(layout.probe_set, probe)
    info = {
        "d_vocab": data.d_vocab,
        "bos": data.bos,
        "corpus": data.corpus,
        "corpus_note": data.note,
    }
    diskio.write_json(layout.run_info, info)
    diskio.write_json(
        layout.config, cfg.payload(_provenance(cfg))
    )  # last: a run exists once it has a config
    return data, probe


def _reopen(
    cfg: RunConfig, out: Path, start: int | None, rank: int
) -> tuple[TokenData, dict[str, torch.Tensor]]:
    """A run directory being resumed: check the config against the saved one, note the resume in
    the provenance (warning if the numerics changed), and load the saved data and probe set."""
    layout = Layout(out)
    saved = RunConfig.load(layout.config)
    if (
        saved.model != cfg.model
        or saved.data != cfg.data
        or not set(saved.train.seeds) <= set(cfg.train.seeds)
    ):
        raise ConfigError(
            f"--resume: the model, data or seeds differ from the run's saved config in {layout.config}; resume with the saved settings (more seeds may be added: --seeds larger, the same --first-seed)"
        )
    provenance = diskio.read_json(layout.config).get("provenance") or {}
    if start is not None:
        _warn_numerics_changed(provenance, cfg, out, start)
        provenance.setdefault("resumed", []).append(
            {"step": start, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **numerics(cfg)}
        )
    if rank == 0:
        diskio.write_json(layout.config, cfg.payload(provenance))
    return _load_prepared(out)


def _warn_numerics_changed(provenance: dict, cfg: RunConfig, out: Path, start: int) -> None:
    """Warn when a resume cannot continue the run bit for bit (setting, device type or threads changed)."""
    history = [provenance.get("numerics")] + [
        {k: r[k] for k in NUMERICS if k in r} for r in provenance.get("resumed", [])
    ]
    last = next((h for h in reversed(history) if h), None)
    # a run saved before a field was recorded is compared on the fields it has
    now = {k: v for k, v in numerics(cfg).items() if last is None or k in last}
    if last is None:
        if cfg.train.deterministic:
            log.warning(
                "resuming %s at step %d with deterministic algorithms on; the run's steps before it were trained without the setting (a run made before it existed), so it does not continue bit for bit",
                out,
                start,
            )
        return
    changed = {
        k: (last.get(k), v)
        for k, v in now.items()
        if _same_per_rank(last.get(k)) != _same_per_rank(v)
    }
    if changed:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
        log.warning(
            "resuming %s at step %d with %s: training continues, but not bit for bit as the uninterrupted run would have "
            "(that needs the same deterministic setting, device type, thread count and seeds per forward pass; set torch.set_num_threads / OMP_NUM_THREADS, "
            "train.deterministic, train.seed_chunk or the number of torchrun processes as before)",
            out,
            start,
            what,
        )


def _same_per_rank(value):
    """A per-rank list whose ranks all agree (seeds per pass [1, 1] under torchrun) is that one
    value: each seed then sums in the same order as in one process."""
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        return value[0]
    return value


def _load_prepared(out: Path) -> tuple[TokenData, dict[str, torch.Tensor]]:
    run = Run(out)
    info = diskio.read_json(run.layout.run_info)
    data = TokenData(
        run.tokenizer(),
        run.train_tokens(),
        run.heldout_tokens(),
        info["bos"],
        info["d_vocab"],
        info["corpus"],
        info["corpus_note"],
    )
    return data, run.probe_set()


def train(
    cfg: RunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    force: bool = False,
) -> Run:
    """Train every seed of ``cfg`` into run directory ``out`` and return the opened run.

    With ``resume=True`` and checkpoints present, training continues from the
    last step checkpointed for every seed, using the run's saved data and probe
    set; ``cfg.train.steps`` may be larger than the original to extend a run.
    Without ``resume``, an existing run directory with checkpoints is an error.

    Under ``torchrun`` each rank trains its share of the seeds (see
    :mod:`interp_ext.distributed`); rank 0 prepares the run directory first. A folder that holds
    other files and no run is refused unless ``force``.

    Long because seeds at different steps (added, or cut short) train group by group, each
    group shared out over the torchrun ranks.
    """
    out = Path(out)
    if not force and not Layout(out).config.exists() and out.is_dir() and any(out.iterdir()):
        raise RunExistsError(
            f"{out} holds files and is no run; choose an empty or new --out, or pass --force to "
            "train into it beside them"
        )
    distributed.init(cfg.train.device)
    distributed.my_seeds(cfg.train.seeds)  # at most one process per seed, as before
    rank, size = distributed.world()
    layout = Layout(out)
    with distributed.rank_zero_first():
        existing = layout.config.exists()
        # each seed continues from its own last checkpoint; seeds added to a run (a larger
        # --seeds on --resume) start at step 0, training as they would have in the first run
        starts = {s: last_complete_step(out, [s]) if existing else None for s in cfg.train.seeds}
        done = [v for v in starts.values() if v is not None]
        if done and not resume:
            raise RunExistsError(
                f"{out} already holds checkpoints up to step {max(done)}; pass --resume to continue it or choose another --out"
            )
        if existing:
            data, probe = _reopen(cfg, out, min(done) if done else None, rank)
        else:
            data, probe = prepare_run(cfg, out, cache_dir)
    groups: dict[int | None, list[int]] = {}
    for s, start in starts.items():
        groups.setdefault(start, []).append(s)
    if len(groups) > 1 and size > min(len(g) for g in groups.values()):
        log.warning("%s: seeds at different steps %s train group by group", out, groups)
    for start, group in groups.items():
        seeds = distributed.share(group)  # may be empty for a group smaller than the ranks
        if seeds:
            trainer = StackedTrainer(
                cfg, out, data, probe, seeds=seeds, interventions=interventions_of(out)
            )
            if start is not None:
                trainer.load(start)
                log.info("resumed %s at step %d (seeds %s)", out, start, seeds)
            else:
                if existing:
                    log.info("adding seeds %s to %s from step 0", seeds, out)
                trainer.save()
                trainer.record()
            trainer.run(progress=progress and rank == 0)
        distributed.barrier()
    return Run(out)
