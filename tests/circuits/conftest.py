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
        n_layers=2,
        d_model=2 * V + N,
        d_head=d_head,
        n_heads=n_heads,
        d_vocab=V,
        n_ctx=N,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        seed=0,
    )


def build_hand_built(split: bool = False) -> HookedTransformer:
    """Residual = [token one-hot (V) | position one-hot (N) | previous-token one-hot (V)].

    L0H0 attends from p to p-1 and writes the token it sees into the previous-token
    slot; L1H0 queries with the current token against the previous-token slot, so it
    attends to the position after the token's earlier occurrence, and copies that
    token to the output. The second head of each layer is zero.

    ``split=True``: the previous-token function is split between L0H0 and L0H1, half
    each: L0H0 serves even positions (attends p -> p-1 there, to BOS at odd p) and
    L0H1 odd positions (p -> p-1 there, BOS at even p). BOS is token 0, never in r,
    so attending to it writes nothing an induction query can match.
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
        heads = (
            {0: lambda p: True} if not split else {0: lambda p: p % 2 == 0, 1: lambda p: p % 2 == 1}
        )
        for head, serves in heads.items():
            for p in range(
                N
            ):  # query at p matches the key at p - 1 (positions it serves) or at BOS
                a0.W_Q[head, V + p, p] = c
                if p + 1 < N and serves(p + 1):
                    a0.W_K[head, V + p, p + 1] = 1.0
                if split and p > 0 and not serves(p):
                    a0.W_K[head, V + 0, p] = 1.0
            for t in range(V):
                a0.W_V[head, t, t] = 1.0
                a0.W_O[head, t, prev_slot + t] = 1.0
        for t in range(V):
            a1.W_Q[0, t, t] = c  # L1H0: current token vs previous-token slot
            a1.W_K[0, prev_slot + t, t] = 1.0
            a1.W_V[0, t, t] = 1.0
            a1.W_O[0, t, t] = 1.0
    return model


@pytest.fixture(scope="session")
def hand_built():
    """One exact previous-token head (L0H0) feeding one induction head (L1H0); see :func:`build_hand_built`."""
    return build_hand_built()


@pytest.fixture(scope="session")
def hand_built_split():
    """The previous-token function split half and half over L0H0 and L0H1."""
    return build_hand_built(split=True)


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


def build_hand_built_mlp() -> HookedTransformer:
    """The previous token reaches the induction key only through MLP0.

    Residual = [token (V) | position (N) | previous-token slot read by L1H0's key (V) |
    a scratch slot (V)]. L0H0 attends p -> p-1 and writes the token it sees into the
    scratch slot, which no key reads; MLP0 (ReLU, identity weights) copies the scratch
    slot into the previous-token slot. So L0H0's direct key path restores nothing,
    MLP0's restores everything, and the route L0H0 > L0MLP carries it.
    """
    cfg = _base_cfg()
    cfg = HookedTransformerConfig(
        **{
            **{k: getattr(cfg, k) for k in ("n_layers", "d_head", "n_heads", "d_vocab", "n_ctx")},
            "d_model": 3 * V + N,
            "d_mlp": V,
            "act_fn": "relu",
            "attn_only": False,
            "normalization_type": None,
            "positional_embedding_type": "standard",
            "seed": 0,
        }
    )
    model = HookedTransformer(cfg)
    c = 40.0 * math.sqrt(cfg.d_head)
    prev_slot, scratch = V + N, 2 * V + N
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    mlp0 = model.blocks[0].mlp
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:] = torch.eye(V, cfg.d_model)
        model.W_pos[:] = torch.cat([torch.zeros(N, V), torch.eye(N), torch.zeros(N, 2 * V)], dim=1)
        model.W_U[:V, :] = torch.eye(V) * 10
        for p in range(N):
            a0.W_Q[0, V + p, p] = c
            if p + 1 < N:
                a0.W_K[0, V + p, p + 1] = 1.0
        for t in range(V):
            a0.W_V[0, t, t] = 1.0
            a0.W_O[0, t, scratch + t] = 1.0
            mlp0.W_in[scratch + t, t] = 1.0
            mlp0.W_out[t, prev_slot + t] = 1.0
            a1.W_Q[0, t, t] = c
            a1.W_K[0, prev_slot + t, t] = 1.0
            a1.W_V[0, t, t] = 1.0
            a1.W_O[0, t, t] = 1.0
    return model


def build_hand_built_weak_pair() -> HookedTransformer:
    """Two previous-token heads, each writing half the previous token; neither alone is enough.

    L0H0 and L0H1 both attend p -> p-1 and write 0.5 x the token they see into the
    previous-token slot. L1H0's query also meets BOS's key with 0.75 of a full
    match, so it attends to its induction target only when both halves are there:
    each head's key path alone restores ~0 of the target attention, both together
    ~1 (a super-additive pair that a per-head share filter would drop).
    """
    model = build_hand_built()
    cfg = model.cfg
    c = 40.0 * math.sqrt(cfg.d_head)
    prev_slot = V + N
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    with torch.no_grad():
        a0.W_Q[1], a0.W_K[1], a0.W_V[1] = a0.W_Q[0], a0.W_K[0], a0.W_V[0]
        for head in (0, 1):
            for t in range(V):
                a0.W_O[head, t, prev_slot + t] = 0.5
        for p in range(N):
            a1.W_Q[0, V + p, V] = c  # every query meets BOS's key at 0.75 of a full match
        a1.W_K[0, V + 0, V] = 0.75
    return model


@pytest.fixture(scope="session")
def hand_built_mlp():
    """The previous-token head reaches the induction key only through MLP0."""
    return build_hand_built_mlp()


@pytest.fixture(scope="session")
def hand_built_weak_pair():
    """A super-additive pair of previous-token heads."""
    return build_hand_built_weak_pair()
