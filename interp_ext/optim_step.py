"""The optimizer's actual update at a checkpoint: one AdamW step from the saved state.

Function-space alignment (SPEC section 4) and Stream 3's ``optimizer`` direction
and energy budget (SPEC section 6) all need d = theta_{t+1} - theta_t for the
real training step taken right after checkpoint t, on that seed's batch of step t.
"""

from __future__ import annotations

import torch

from interp_ext.data import training_batch, training_rows
from interp_ext.training import _autocast, adamw, deterministic_algorithms, set_adamw_state


def optimizer_for(model: torch.nn.Module, run, checkpoint: dict) -> torch.optim.AdamW:
    """The run's AdamW (as the trainer builds it) over ``model``'s parameters, holding the checkpoint's state."""
    opt = adamw(model.parameters(), run.config.train)
    if checkpoint["exp_avg"]:
        names = [n for n, _ in model.named_parameters()]
        set_adamw_state(
            opt,
            [
                (checkpoint["adam_step"], checkpoint["exp_avg"][n], checkpoint["exp_avg_sq"][n])
                for n in names
            ],
        )
    return opt


def step_batch(run, seed: int, step: int, draw: int | None = None) -> torch.Tensor:
    """The training batch seed ``seed`` saw at ``step`` (``draw``: an independent one from the same distribution)."""
    cfg = run.config
    bos = run.bos
    args = (cfg.train.batch_size, cfg.model.n_ctx, bos, cfg.data, run.d_vocab)
    return training_batch(run.train_tokens(), seed, step, *args, draw=draw)


def step_rows(
    run, seed: int, step: int, draw: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`step_batch` and a bool per row: True where the row is uniform random tokens, False
    where it is corpus text (both carry the copied span)."""
    cfg = run.config
    seqs, random_rows = training_rows(
        run.train_tokens(),
        seed,
        step,
        cfg.train.batch_size,
        cfg.model.n_ctx,
        run.bos,
        cfg.data,
        run.d_vocab,
        draw,
    )
    return torch.from_numpy(seqs), torch.from_numpy(random_rows)


def optimizer_step_direction(
    run, seed: int, step: int, device: str | None = None
) -> tuple[dict, dict, torch.Tensor]:
    """(theta_t, d = theta_{t+1} - theta_t, batch) for the real step after checkpoint ``step``.

    The step reproduces training exactly (same batch, AdamW state and autocast). For an
    imported run, whose batches are unknown, the real update is the difference to a
    checkpoint one step later (batch: a probe batch), or an error says what is missing.
    """
    device = device or run.device
    if run.imported:
        return imported_update(run, seed, step, device)
    model = run.model(seed, step, device=device)
    ckpt = run.checkpoint(seed, step)
    opt = optimizer_for(model, run, ckpt)
    batch = step_batch(run, seed, step).to(device)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    with deterministic_algorithms(run.config.train.deterministic, device):
        with _autocast(run.config):
            loss = model(batch, return_type="loss")
        loss.float().backward()
        opt.step()
    direction = {n: (p.detach() - theta[n]) for n, p in model.named_parameters()}
    return theta, direction, batch


def imported_update(run, seed: int, step: int, device: str) -> tuple[dict, dict, torch.Tensor]:
    """The real update of an imported run: theta_{t+1} - theta_t from two checkpoints one step apart."""
    from interp_ext.run import RunError

    if step + 1 not in run.steps_for(seed):
        raise RunError(
            f"the optimizer direction of imported run {run.path} needs the real update after step {step}, and its batches are unknown: "
            f"import a checkpoint at step {step + 1} too (checkpoints: {run.steps_for(seed)}), or use the sgd direction"
        )
    if step + 1 in run.duplicate_steps(seed):
        raise RunError(
            f"the checkpoint at step {step + 1} of imported run {run.path} holds the same weights as "
            f"step {step} (a duplicate found at import), so the real update after step {step} is "
            "unknown: use the sgd direction"
        )
    theta = {
        n: p.detach().clone() for n, p in run.model(seed, step, device=device).named_parameters()
    }
    after = dict(run.model(seed, step + 1, device=device).named_parameters())
    return (
        theta,
        {n: after[n].detach() - theta[n] for n in theta},
        run.probe_set()["lm"][0].to(device),
    )
