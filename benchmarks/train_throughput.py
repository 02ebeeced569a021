"""Training throughput: stacked multi-seed trainer vs a Python loop of plain models.

Measures, in one process and one run, training steps/s of the paper preset
(SPEC section 1: 4 layers, d_model 128, GPT-2 vocabulary, batch 8 x 64, AdamW)
with 1, 4 and 16 seeds, for

* ``stacked``: the `StackedTrainer` step (vmap over seeds, one AdamW), and
* ``loop``: one plain `HookedTransformer` + `torch.optim.AdamW` per seed,
  stepped one after the other,

and the cost of recording hooks at a checkpoint relative to the training time of
one checkpoint interval. Token content does not change the cost, so batches are
uniform random tokens.

Usage: python benchmarks/train_throughput.py [--device cpu] [--seeds 1 4 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import platform
import time

import torch

from interp_ext.config import get_preset
from interp_ext.data import TokenData
from interp_ext.hooks import ActivationRecorder
from interp_ext.models import build_model
from interp_ext.training import StackedTrainer, _autocast


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_stacked(cfg, n_seeds: int, steps: int, device: str, chunk: int = 0) -> float:
    cfg.train.n_seeds = n_seeds
    cfg.train.seed_chunk = chunk
    data = TokenData(None, None, None, 50256, 50257, "random", "random tokens")
    probe = {"lm": torch.randint(0, 50257, (64, 8, 64))}
    trainer = StackedTrainer(cfg, out=None, data=data, probe=probe)
    gen = torch.Generator().manual_seed(0)
    trainer.batch = lambda: torch.randint(0, 50257, (n_seeds, 8, 64), generator=gen).to(device)
    trainer.train_step()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(device)
    return steps / (time.perf_counter() - start)


def bench_loop(cfg, n_seeds: int, steps: int, device: str) -> float:
    models = [build_model(cfg.model, 50257, seed=s, device=device) for s in range(n_seeds)]
    opts = [torch.optim.AdamW(m.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay) for m in models]
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        for m, o in zip(models, opts):
            tokens = torch.randint(0, 50257, (8, 64), generator=gen).to(device)
            with _autocast(cfg):
                loss = m(tokens, return_type="loss")
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps / (time.perf_counter() - start)


def bench_recording(cfg, device: str, hooks: list[str]) -> float:
    """Seconds to record ``hooks`` on 4 probe batches for one seed."""
    model = build_model(cfg.model, 50257, seed=0, device=device)
    rec = ActivationRecorder(hooks)
    tokens = torch.randint(0, 50257, (32, 64)).to(device)
    rec.record(model, tokens)
    sync(device)
    start = time.perf_counter()
    for _ in range(3):
        rec.record(model, tokens)
    sync(device)
    return (time.perf_counter() - start) / 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement (after one warm-up); at least 16 / seeds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; ratios are taken within a round, the median reported")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 instead of the preset's bf16 autocast")
    args = parser.parse_args()
    cfg = get_preset("paper")
    cfg.train.device = args.device
    cfg.train.bf16 = not args.no_bf16
    torch.manual_seed(0)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}")
    print(f"paper preset: 4 layers, d_model 128, d_vocab 50257, batch 8 x 64, bf16 autocast {cfg.train.bf16}")
    print("stacked = StackedTrainer step with its default seed_chunk (all seeds in one vmap on a GPU, one at a time on a CPU);")
    print("one-vmap = the same with every seed in one vmap (train.seed_chunk = n; with 1 seed the same code as stacked); loop = one plain HookedTransformer + torch.optim.AdamW per seed")
    print(f"{'seeds':>5} | {'round':>5} | {'stacked steps/s':>15} | {'one-vmap steps/s':>16} | {'loop steps/s':>12} | {'stacked/loop':>12} | {'one-vmap/loop':>13}")
    per_step_time = None
    summary = []
    for n in args.seeds:
        ratios, ratios_vmap = [], []
        steps = max(args.steps, 16 // n)  # cheap small ensembles get more timed steps (less noise)
        runs = {
            "stacked": lambda: bench_stacked(cfg, n, steps, args.device),
            "wide": lambda: bench_stacked(cfg, n, steps, args.device, chunk=n),
            "loop": lambda: bench_loop(cfg, n, steps, args.device),
        }
        for r in range(args.rounds):
            # the order rotates from round to round: the first measurement of a round tends to run slower
            order = list(runs)[r % 3 :] + list(runs)[: r % 3]
            rate = {}
            for name in order:
                gc.collect()
                rate[name] = runs[name]()
            stacked, wide, loop = rate["stacked"], rate["wide"], rate["loop"]
            if n == 1 and per_step_time is None:
                per_step_time = 1 / stacked
            ratios.append(stacked / loop)
            ratios_vmap.append(wide / loop)
            print(f"{n:>5} | {r + 1:>5} | {stacked:>15.3f} | {wide:>16.3f} | {loop:>12.3f} | {ratios[-1]:>11.2f}x | {ratios_vmap[-1]:>12.2f}x", flush=True)
        summary.append((n, statistics.median(ratios), statistics.median(ratios_vmap)))
    for n, a, b in summary:
        print(f"{n:>2} seeds: stacked/loop median {a:.2f}x, one-vmap/loop median {b:.2f}x")
    hooks = ["blocks.1.attn.hook_pattern", "blocks.3.hook_resid_post"]
    rec = bench_recording(cfg, args.device, hooks)
    per_step_time = per_step_time or 1 / bench_stacked(cfg, 1, args.steps, args.device)
    interval = cfg.train.checkpoint_every
    print(
        f"recording {hooks} on 4 probe batches: {rec:.3f} s per seed and checkpoint; "
        f"{interval} training steps of one seed take {interval * per_step_time:.1f} s -> "
        f"recording adds {100 * rec / (interval * per_step_time):.2f}% at the paper's checkpoint interval"
    )


if __name__ == "__main__":
    main()
