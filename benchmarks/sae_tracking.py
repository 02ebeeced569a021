"""Time per SAE at the paper preset's d_model (128) on CPU: producing activations vs training.

Usage: python benchmarks/sae_tracking.py [--tokens 32768] [--width 512]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, paper_model, random_batches, timer

from interp_ext.sae_tracking import SAESettings, train_sae
from interp_ext.sae_tracking.tracking import hook_activations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32_768)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    args = p.parse_args()
    model = paper_model()
    n_seq = args.tokens // 63 + 1
    tokens = random_batches(1, batch=n_seq)[0]
    hook = "blocks.1.hook_resid_post"
    with timer() as t_act:
        acts = hook_activations(model, tokens, hook)
    with timer() as t_train:
        train_sae(acts, SAESettings(width=args.width, k=args.k))
    total = t_act.seconds + t_train.seconds
    print(f"machine: {machine()}")
    print(
        f"{acts.shape[0]:,} activation vectors of d_model {acts.shape[1]} at {hook}; TopK SAE width {args.width}, k {args.k}, 8 epochs"
    )
    print(
        f"producing activations {t_act.seconds:.1f} s ({100 * t_act.seconds / total:.0f}%), training {t_train.seconds:.1f} s ({100 * t_train.seconds / total:.0f}%), total {total:.1f} s per SAE"
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
