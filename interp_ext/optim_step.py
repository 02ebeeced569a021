"""The optimizer's actual update at a checkpoint: one AdamW step from the saved state.

Function-space alignment (SPEC section 4) and Stream 3's ``optimizer`` direction
and energy budget (SPEC section 6) all need d = theta_{t+1} - theta_t for the
real training step taken right after checkpoint t, on that seed's batch of step t.
"""

from __future__ import annotations

import torch

from interp_ext.data import training_batch
from interp_ext.training import _autocast


def optimizer_for(model: torch.nn.Module, run, checkpoint: dict) -> torch.optim.AdamW:
    """A `torch.optim.AdamW` over ``model``'s parameters holding the checkpoint's state."""
    t = run.config.train
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    if checkpoint["exp_avg"]:
        sd = opt.state_dict()
        sd["state"] = {
            i: {
                "step": torch.tensor(checkpoint["adam_step"], dtype=torch.float32),
                "exp_avg": checkpoint["exp_avg"][n].to(p.device, copy=True),
                "exp_avg_sq": checkpoint["exp_avg_sq"][n].to(p.device, copy=True),
            }
            for i, (n, p) in enumerate(model.named_parameters())
        }
        opt.load_state_dict(sd)
    return opt


def step_batch(run, seed: int, step: int) -> torch.Tensor:
    """The training batch seed ``seed`` saw at ``step``."""
    cfg = run.config
    info_bos = run.tokenizer().convert_tokens_to_ids("<|endoftext|>")
    return training_batch(run.train_tokens(), seed, step, cfg.train.batch_size, cfg.model.n_ctx, info_bos, cfg.data, run.d_vocab)


def optimizer_step_direction(run, seed: int, step: int, device: str | None = None) -> tuple[dict, dict, torch.Tensor]:
    """(theta_t, d = theta_{t+1} - theta_t, batch) for the real step after checkpoint ``step``.

    The step reproduces training exactly (same batch, AdamW state and autocast).
    """
    device = device or run.device
    model = run.model(seed, step, device=device)
    ckpt = run.checkpoint(seed, step)
    opt = optimizer_for(model, run, ckpt)
    batch = step_batch(run, seed, step).to(device)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    with _autocast(run.config):
        loss = model(batch, return_type="loss")
    loss.float().backward()
    opt.step()
    direction = {n: (p.detach() - theta[n]) for n, p in model.named_parameters()}
    return theta, direction, batch
