"""Hand-built induction circuit: a previous-token head feeding an induction head."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

V, S = 20, 10
N = 2 * S + 1


def _base_cfg(n_heads: int = 2, d_head: int = N) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=2, d_model=2 * V + N, d_head=d_head, n_heads=n_heads, d_vocab=V, n_ctx=N,
        attn_only=True, normalization_type=None, positional_embedding_type="standard", seed=0,
    )


@pytest.fixture(scope="session")
def hand_built():
    """Residual = [token one-hot (V) | position one-hot (N) | previous-token one-hot (V)].

    L0H0 attends from p to p-1 and writes the token it sees into the previous-token
    slot; L1H0 queries with the current token against the previous-token slot, so it
    attends to the position after the token's earlier occurrence, and copies that
    token to the output. The second head of each layer is zero.
    """
    cfg = _base_cfg()
    model = HookedTransformer(cfg)
    c = 40.0 * math.sqrt(cfg.d_head)
    prev_slot = V + N
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn  # model.W_Q etc. are stacked copies
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:] = torch.eye(V, cfg.d_model)
        model.W_pos[:] = torch.cat([torch.zeros(N, V), torch.eye(N), torch.zeros(N, V)], dim=1)
        model.W_U[:V, :] = torch.eye(V) * 10
        for p in range(N):  # L0H0: query at p matches key at p - 1
            a0.W_Q[0, V + p, p] = c
            if p + 1 < N:
                a0.W_K[0, V + p, p + 1] = 1.0
        for t in range(V):
            a0.W_V[0, t, t] = 1.0
            a0.W_O[0, t, prev_slot + t] = 1.0
            a1.W_Q[0, t, t] = c  # L1H0: current token vs previous-token slot
            a1.W_K[0, prev_slot + t, t] = 1.0
            a1.W_V[0, t, t] = 1.0
            a1.W_O[0, t, t] = 1.0
    return model


@pytest.fixture(scope="session")
def random_attn_only():
    torch.manual_seed(1)
    return HookedTransformer(_base_cfg(n_heads=4, d_head=8))


def repeated_batch(batch: int = 6, seed: int = 0, bos: int = 0) -> torch.Tensor:
    """[BOS] + r + r with distinct tokens in r (none equal to BOS)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        r = torch.randperm(V - 1, generator=gen)[:S] + 1
        rows.append(torch.cat([torch.tensor([bos]), r, r]))
    return torch.stack(rows)
