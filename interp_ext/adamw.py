"""AdamW, the run's optimizer, in one place: how the trainer builds it, the numerics it steps
under, and its update written out for the measurements that take it apart.

Everything that steps, replays or splits an AdamW update reads it from here: the optimizer
(:func:`adamw`, :func:`set_adamw_state`, :func:`optimizer_for`), the numerics of a step
(:func:`autocast`, :func:`deterministic_algorithms`), eps (:data:`EPS`), and the formula
(:func:`denominator`, :func:`moment`, :func:`stepped`, :func:`adamw_step`, :func:`update_from_moment`,
:func:`momentum_split`, :func:`adamw_update`, :func:`scaled_train`). With t the step count
after the step, m and v the moments after it:

    update = -lr wd theta - lr (m / (1 - beta1^t)) / D,   D = sqrt(v / (1 - beta2^t)) + eps,
    m = beta1 m_prev + (1 - beta1) g,   v = beta2 v_prev + (1 - beta2) g^2.

The formula functions take torch tensors or numpy arrays (the reference toy steps numpy).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import numpy as np
import torch

EPS = 1e-8  # torch.optim.AdamW's default eps, which the run's optimizer keeps


# --------------------------------------------------------------------------- the optimizer


def adamw(params, train) -> torch.optim.AdamW:
    """The run's optimizer: `torch.optim.AdamW` with the run's hyper-parameters (``train``: a
    :class:`~interp_ext.config.TrainConfig`).

    With ``train.fused_adamw`` (default) on a CPU or CUDA device it uses torch's fused
    kernels, one pass over each tensor instead of one per arithmetic op (on a 2-core
    CPU 8 ms instead of 57 ms per step of one paper-preset model); the update is
    AdamW's to float rounding.
    """
    params = list(params)
    fused = train.fused_adamw and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        params,
        lr=train.lr,
        betas=train.betas,
        weight_decay=train.weight_decay,
        eps=EPS,
        fused=fused or None,
    )


def set_adamw_state(
    opt: torch.optim.AdamW, states: list[tuple[float, torch.Tensor, torch.Tensor]]
) -> None:
    """Give ``opt`` saved state: one ``(step, exp_avg, exp_avg_sq)`` per parameter, in its order.

    The moments are copied, so stepping never changes the tensors passed in.
    """
    params = [p for group in opt.param_groups for p in group["params"]]
    if len(states) != len(params):
        raise ValueError(
            f"{len(states)} saved AdamW states for an optimizer over {len(params)} parameters"
        )
    sd = opt.state_dict()
    sd["state"] = {
        i: {
            "step": torch.tensor(float(step), dtype=torch.float32),
            "exp_avg": m.to(p.device, copy=True),
            "exp_avg_sq": v.to(p.device, copy=True),
        }
        for i, (p, (step, m, v)) in enumerate(zip(params, states))
    }
    opt.load_state_dict(sd)


def optimizer_for(model: torch.nn.Module, train, checkpoint: dict) -> torch.optim.AdamW:
    """The run's AdamW over ``model``'s parameters, holding a checkpoint's state (none saved:
    a fresh one)."""
    opt = adamw(model.parameters(), train)
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


def scaled_train(train, scale: int):
    """The run's AdamW at learning rate lr / scale, its time constants held fixed in units of
    lr x steps: 1 - beta scaled by 1 / scale (a replay at scale k takes k steps per real batch, so
    the same data and the same optimizer memory are spread over finer steps; as k grows the
    replay approaches the continuous-time flow of the same optimizer on the same batches)."""
    if scale == 1:
        return train
    b1, b2 = train.betas
    return replace(train, lr=train.lr / scale, betas=scaled_betas((b1, b2), scale))


def scaled_betas(betas: tuple[float, float], scale: int) -> tuple[float, float]:
    """(1 - (1 - beta1) / scale, 1 - (1 - beta2) / scale)."""
    b1, b2 = betas
    return 1 - (1 - b1) / scale, 1 - (1 - b2) / scale


# --------------------------------------------------------------------------- numerics


def autocast(cfg):
    """The step's autocast: bf16 on the training device when ``cfg.train.bf16``."""
    if not cfg.train.bf16:
        return nullcontext()
    return torch.autocast(device_type=torch.device(cfg.train.device).type, dtype=torch.bfloat16)


@contextmanager
def deterministic_algorithms(enabled: bool, device: str = "cpu") -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` inside the block, the caller's setting restored after.

    On a CPU the only nondeterministic operation of a `HookedTransformer` step is the
    embedding backward (its parallel accumulation sums in thread order); the
    deterministic path costs about 1% of a tiny-preset step (docs/benchmarks.md).
    On CUDA, cuBLAS is deterministic only with a fixed workspace:
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set here if the environment has no value
    (it must be set before the process's first cuBLAS call to take effect).
    """
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if enabled and device.startswith("cuda") and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# --------------------------------------------------------------------------- the formula


def denominator(v, t: float, beta2: float, eps: float = EPS):
    """D = sqrt(v / (1 - beta2^t)) + eps, AdamW's denominator with second moment v after t
    steps (a tensor or a numpy array)."""
    if t < 1:
        raise ValueError("AdamW has no denominator before its first step (count = 0)")
    root = np.sqrt if isinstance(v, np.ndarray) else torch.sqrt
    return root(v / (1 - beta2**t)) + eps


def step_size(v, t: float, lr: float, betas: tuple[float, float]):
    """lr / ((1 - beta1^t) D): what multiplies the first moment in the update."""
    return lr / ((1 - betas[0] ** t) * denominator(v, t, betas[1]))


def moment(m, g, beta1: float):
    """beta1 m + (1 - beta1) g: a first moment's step (the shadow moment's too)."""
    return beta1 * m + (1 - beta1) * g


def second_moment(v, g, beta2: float):
    """beta2 v + (1 - beta2) g^2."""
    return beta2 * v + (1 - beta2) * g * g


def stepped(theta, m, v, t: float, lr: float, betas: tuple[float, float], weight_decay: float):
    """theta after the step: theta - lr wd theta - lr (m / (1 - beta1^t)) / D, in that order."""
    return (
        theta
        - lr * weight_decay * theta
        - lr * (m / (1 - betas[0] ** t)) / denominator(v, t, betas[1])
    )


def parts(theta, m_prev, g, v, t: float, lr: float, betas: tuple[float, float], wd: float):
    """The update split with its denominator held fixed: (inherited, fresh, decay), summing to
    it up to rounding: -s beta1 m_prev, -s (1 - beta1) g, -lr wd theta, s = :func:`step_size`."""
    s = step_size(v, t, lr, betas)
    return -s * betas[0] * m_prev, -s * (1 - betas[0]) * g, -lr * wd * theta


def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    count: float,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    v_fed: torch.Tensor | None = None,
) -> None:
    """One AdamW step in place (torch's single-tensor AdamW, written out): decoupled decay, then
    m <- beta1 m + (1 - beta1) g, v <- beta2 v + (1 - beta2) g^2 (or ``v_fed``), and
    theta <- theta - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps), t = count + 1."""
    b1, b2 = betas
    t = count + 1
    param.mul_(1 - lr * weight_decay)
    m.lerp_(grad, 1 - b1)
    if v_fed is None:
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    else:
        v.copy_(v_fed)
    denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(EPS)
    param.addcdiv_(m, denom, value=-lr / (1 - b1**t))


def update_from_moment(step, first_moment: dict[str, torch.Tensor], train) -> dict:
    """AdamW's update from a step's state (a :class:`~interp_ext.trajectory.Step`) with the first
    moment after the step given (m_tau) and the real second moment v_tau, in float64. With the
    real m_tau this is the real update up to float rounding."""
    t = step.count + 1
    lr, wd, (b1, b2) = train.lr, train.weight_decay, train.betas
    out = {}
    for n, theta in step.theta.items():
        denom = denominator(step.new_exp_avg_sq[n].double(), t, b2)
        out[n] = -lr * (first_moment[n].double() / (1 - b1**t)) / denom - lr * wd * theta.double()
    return out


def momentum_split(step, train) -> dict[str, dict[str, torch.Tensor]]:
    """A step's update split with AdamW's denominator of this step held fixed (:func:`parts`):

    * ``inherited``: -lr beta1 m_{tau-1} / ((1 - beta1^t) D), the momentum carried in,
    * ``fresh``: -lr (1 - beta1) g_tau / ((1 - beta1^t) D), this step's gradient,
    * ``decay``: -lr wd theta_tau, the decoupled weight decay,

    equal to the real update up to float rounding.
    """
    out: dict[str, dict[str, torch.Tensor]] = {"inherited": {}, "fresh": {}, "decay": {}}
    t = step.count + 1
    for n, theta in step.theta.items():
        split = parts(
            theta,
            step.exp_avg[n],
            step.grad[n],
            step.new_exp_avg_sq[n],
            t,
            train.lr,
            train.betas,
            train.weight_decay,
        )
        for key, value in zip(("inherited", "fresh", "decay"), split):
            out[key][n] = value
    return out


def adamw_update(step, grad: dict[str, torch.Tensor], train) -> dict[str, torch.Tensor]:
    """The update the run's AdamW would make from a step's state (theta_tau, m, v, count) with
    ``grad`` in place of the minibatch gradient."""
    params = [torch.nn.Parameter(step.theta[n].clone()) for n in step.theta]
    opt = adamw(params, train)
    if step.count > 0:
        set_adamw_state(
            opt, [(step.count, step.exp_avg[n], step.exp_avg_sq[n]) for n in step.theta]
        )
    for p, n in zip(params, step.theta):
        # in the parameter's own layout: torch's fused CPU AdamW reads a gradient whose strides
        # differ from its parameter's (torch.func.grad returns transposed layouts for matmul
        # weights) in the wrong element order, silently
        p.grad = torch.empty_like(p).copy_(grad[n])
    opt.step()
    return {n: p.detach() - step.theta[n] for p, n in zip(params, step.theta)}


def step_norms(step, train) -> tuple[float, float]:
    """(|update|, mean over coordinates of 1 / D) of one step."""
    t = step.count + 1
    sq = sum(float(u.double().pow(2).sum()) for u in step.update.values())
    inv = sum(
        float((1 / denominator(v.double(), t, train.betas[1])).sum())
        for v in step.new_exp_avg_sq.values()
    )
    size = sum(v.numel() for v in step.new_exp_avg_sq.values())
    return math.sqrt(sq), inv / size


def denominators(
    exp_avg_sq: dict[str, torch.Tensor], count: float, beta2: float, eps: float = EPS
) -> dict[str, torch.Tensor]:
    """D per parameter (float64) from AdamW's second moments after ``count`` >= 1 steps."""
    return {n: denominator(v.double(), count, beta2, eps) for n, v in exp_avg_sq.items()}


def preconditioner(
    exp_avg_sq: dict[str, torch.Tensor], count: float, betas, eps: float = EPS
) -> dict[str, torch.Tensor]:
    """P^-1 = 1 / ((1 - beta1^t) D) per parameter: AdamW's step per unit gradient after
    ``count`` >= 1 steps (bias corrections and eps included)."""
    if count < 1:
        raise ValueError("AdamW has no preconditioner before its first step (count = 0)")
    c1 = 1.0 - betas[0] ** count
    return {n: 1.0 / (c1 * denominator(v, count, betas[1], eps)) for n, v in exp_avg_sq.items()}
