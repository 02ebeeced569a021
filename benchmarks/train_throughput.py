"""Training throughput: stacked multi-seed trainer vs a Python loop of plain models.

Measures, in one process and one run, training steps/s of the paper preset
(SPEC section 1: 4 layers, d_model 128, GPT-2 vocabulary, batch 8 x 64, AdamW)
with 1, 4 and 16 seeds, for

* ``stacked``: the `StackedTrainer` step with its defaults (parameters stacked,
  each seed's fused AdamW stepping its views of them; forward/backward of all
  seeds in one vmap on a GPU, one seed at a time on a CPU),
* ``one-vmap``: the same trainer with every seed in one vmap, and
* ``loop``: one plain `HookedTransformer` + `torch.optim.AdamW` per seed,
  stepped one after the other, and
* ``loop-fused``: the same loop with ``AdamW(fused=True)``, the trainer's
  default optimizer, to show what the optimizer alone accounts for, and
* ``nondet``: the trainer's default step with ``train.deterministic`` off, to
  show what bit-for-bit repeatability (``torch.use_deterministic_algorithms``,
  the default) costs,

and the cost of recording hooks at a checkpoint relative to the training time of
one checkpoint interval. ``--preset tiny`` measures the tiny preset instead
(512-token vocabulary, batch 32), where the CPU's parallel embedding backward,
the operation the deterministic setting replaces, is taken. Single steps of the variants alternate, so slow
drifts of the machine's speed hit all of them alike. Token content does not change the cost, so batches are
uniform random tokens.

Usage: python benchmarks/train_throughput.py [--preset paper|tiny] [--device cpu] [--seeds 1 4 16] [--rounds 10]
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import statistics
import time

import torch

from interp_ext.adamw import autocast
from interp_ext.config import get_preset
from interp_ext.data import TokenData
from interp_ext.hooks import ActivationRecorder
from interp_ext.models import build_model
from interp_ext.training import StackedTrainer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def vocab(cfg) -> int:
    return cfg.data.vocab_size or 50257


def make_stacked(cfg, n_seeds: int, device: str, deterministic: bool = True):
    """A `StackedTrainer` on random batches; its ``cfg.train.seed_chunk`` picks how seeds are batched."""
    cfg = copy.deepcopy(cfg)
    cfg.train.n_seeds = n_seeds
    cfg.train.deterministic = deterministic
    v, b, n_ctx = vocab(cfg), cfg.train.batch_size, cfg.model.n_ctx
    data = TokenData(None, None, None, v - 1, v, "random", "random tokens")
    probe = {"lm": torch.randint(0, v, (4, b, n_ctx))}
    trainer = StackedTrainer(cfg, out=None, data=data, probe=probe)
    gen = torch.Generator().manual_seed(0)
    trainer.batch = lambda: torch.randint(0, v, (n_seeds, b, n_ctx), generator=gen).to(device)
    return trainer


def make_loop(cfg, n_seeds: int, device: str, fused: bool | None = None):
    """One step of a Python loop over plain `HookedTransformer`s, each with its own AdamW."""
    v, b, n_ctx = vocab(cfg), cfg.train.batch_size, cfg.model.n_ctx
    models = [build_model(cfg.model, v, seed=s, device=device) for s in range(n_seeds)]
    opts = [
        torch.optim.AdamW(
            m.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=fused
        )
        for m in models
    ]
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        for m, o in zip(models, opts):
            tokens = torch.randint(0, v, (b, n_ctx), generator=gen).to(device)
            with autocast(cfg):
                loss = m(tokens, return_type="loss")
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)

    return step


def timed(step, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def bench_recording(cfg, device: str, hooks: list[str]) -> float:
    """Seconds to record ``hooks`` on 4 probe batches for one seed."""
    model = build_model(cfg.model, vocab(cfg), seed=0, device=device)
    rec = ActivationRecorder(hooks)
    tokens = torch.randint(0, vocab(cfg), (32, cfg.model.n_ctx)).to(device)
    rec.record(model, tokens)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        rec.record(model, tokens)
    sync(device)
    return (time.perf_counter() - start) / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="rounds of one step of each variant (4 x as many with 1 seed); medians reported",
    )
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="train in float32 instead of the preset's bf16 autocast",
    )
    args = parser.parse_args()
    cfg = get_preset(args.preset)
    cfg.train.device = args.device
    cfg.train.bf16 = cfg.train.bf16 and not args.no_bf16
    torch.manual_seed(0)
    m = cfg.model
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}"
    )
    print(
        f"{args.preset} preset: {m.n_layers} layers{' (attention only)' if m.attn_only else ''}, d_model {m.d_model}, d_vocab {vocab(cfg)}, batch {cfg.train.batch_size} x {m.n_ctx}, bf16 autocast {cfg.train.bf16}"
    )
    print(
        "stacked = StackedTrainer step with its defaults (seed_chunk automatic: all seeds in one vmap on a GPU, one at a time on a CPU; fused AdamW; deterministic algorithms);"
    )
    print(
        "one-vmap = the same trainer with every seed in one vmap (train.seed_chunk = n); loop = one plain HookedTransformer + torch.optim.AdamW per seed;"
    )
    print(
        "loop-fused = that loop with AdamW(fused=True); nondet = stacked with train.deterministic off"
    )
    cols = ["stacked", "one-vmap", "loop", "loop-fused", "nondet"]
    print(
        f"single steps of the {len(cols)} alternate (order rotating), {args.rounds} rounds per seed count (4x as many with 1 seed); steps/s from the median step time"
    )
    print(
        f"{'seeds':>5} | {'rounds':>6} | "
        + " | ".join(f"{c:>10}" for c in cols)
        + " | stacked/loop | one-vmap/loop | stacked/loop-fused | stacked faster than loop | deterministic cost (stacked/nondet time)"
    )
    per_step_time = None
    for n in args.seeds:
        trainer = make_stacked(cfg, n, args.device)
        nondet = make_stacked(cfg, n, args.device, deterministic=False)

        def stacked(chunk: int, trainer=trainer):
            def step() -> None:
                trainer.cfg.train.seed_chunk = chunk
                trainer.train_step()

            return step

        variants = [
            stacked(0),
            stacked(n),
            make_loop(cfg, n, args.device),
            make_loop(cfg, n, args.device, fused=True),
            nondet.train_step,
        ]
        steps = dict(zip(cols, variants))
        rounds = max(
            args.rounds, 4 * args.rounds // n
        )  # cheap small ensembles get more rounds (less noise)
        for warm in steps.values():  # warm-up
            warm()
        times = {k: [] for k in steps}
        for r in range(rounds):
            # the order rotates from round to round: no variant always runs first or after the same one
            for name in cols[r % len(cols) :] + cols[: r % len(cols)]:
                times[name].append(timed(steps[name], args.device))
            gc.collect()
        med = {k: statistics.median(v) for k, v in times.items()}
        wins = sum(a < b for a, b in zip(times["stacked"], times["loop"]))
        if n == 1:
            per_step_time = med["stacked"]
        print(
            f"{n:>5} | {rounds:>6} | "
            + " | ".join(f"{1 / med[c]:>10.3f}" for c in cols)
            + f" | {med['loop'] / med['stacked']:>11.2f}x | {med['loop'] / med['one-vmap']:>12.2f}x | {med['loop-fused'] / med['stacked']:>17.2f}x | {wins:>6} of {rounds} rounds"
            + f" | {med['stacked'] / med['nondet']:.3f}x",
            flush=True,
        )
        del trainer, nondet, steps
        gc.collect()
    hooks = ["blocks.1.attn.hook_pattern", f"blocks.{cfg.model.n_layers - 1}.hook_resid_post"]
    rec = bench_recording(cfg, args.device, hooks)
    if per_step_time is None:
        trainer = make_stacked(cfg, 1, args.device)
        trainer.train_step()
        per_step_time = statistics.median(timed(trainer.train_step, args.device) for _ in range(5))
    interval = cfg.train.checkpoint_every
    print(
        f"recording {hooks} on 4 probe batches: {rec:.3f} s per seed and checkpoint; "
        f"{interval} training steps of one seed take {interval * per_step_time:.1f} s -> "
        f"recording adds {100 * rec / (interval * per_step_time):.2f}% at the preset's checkpoint interval"
    )


if __name__ == "__main__":
    main()
