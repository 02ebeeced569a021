"""Replays whose gradient is not the minibatch's: the arms of the ``noise`` family.

An arm continues a seed's training from a checkpoint with its AdamW state, learning rate
and numerics, but each step's gradient is

    g = g_bar_M + c xi,   xi = (g_A - g_B) / sqrt(2),

g_bar_M the mean gradient of M real-size batches (the real batch and M - 1 fresh ones)
and g_A, g_B two more independent batches (a noise arm ``c<scale>/own`` or ``/fed``), or
the mean gradient of the first B of those sequences (a batch arm ``batch<B>``). A ``fed``
arm takes the real run's second moment v_tau at every step instead of its own. The AdamW
step is written out (:func:`adamw_step`, torch's single-tensor AdamW) so the second moment
can be fed; each step is returned as an :class:`interp_ext.replay.Step`, so everything that
reads real steps (the exact work ledger) reads an arm's steps the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from interp_ext.errors import ReplayError
from interp_ext.measurement.stream3 import MEAN_DRAWS
from interp_ext.optim_step import step_batch
from interp_ext.replay import Replay, Step
from interp_ext.training import _autocast

NOISE_DRAWS = 3000  # the two batches of xi: draws 3000 and 3001 of each step
EPS = 1e-8  # AdamW's eps (torch's default, the run's)
_NAME = re.compile(r"^(?:c(sqrt)?([0-9.]+)/(own|fed)|batch([0-9]+))$")


def parse_scales(text: str) -> list[float]:
    """``"0,1,sqrt2"`` -> [0.0, 1.0, 1.414...]; ``sqrt<x>`` is the square root of x."""
    out = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            value = math.sqrt(float(part[4:])) if part.startswith("sqrt") else float(part)
        except ValueError:
            raise ValueError(repr(part)) from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(repr(part))
        out.append(value)
    return out


@dataclass(frozen=True)
class Arm:
    """One replay: its name, what its gradient is made of, and its second moment."""

    name: str
    c: float = 0.0  # noise arms: the scale of xi
    fed: bool = False  # the real run's v_tau instead of its own
    rows: int = 0  # batch arms: sequences per step (0: a noise arm)

    @property
    def is_batch(self) -> bool:
        return self.rows > 0

    @classmethod
    def parse(cls, name: str) -> Arm:
        """``c0/own``, ``csqrt2/fed``, ``c1.5/own`` or ``batch64`` -> the arm."""
        m = _NAME.match(str(name).strip())
        if not m:
            raise ValueError(
                f"{name!r} is no arm; arms are c<scale>/own, c<scale>/fed (scale like 0, 1 or sqrt2) or batch<B>"
            )
        if m.group(4):
            return cls(name, rows=int(m.group(4)))
        c = math.sqrt(float(m.group(2))) if m.group(1) else float(m.group(2))
        return cls(name, c=c, fed=m.group(3) == "fed")


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


def step_tokens(run, seed: int, step: int, mean_batches: int) -> torch.Tensor:
    """The rows every arm of one step reads: the real batch, M - 1 fresh batches (draws
    ``MEAN_DRAWS`` ..), then xi's two batches (draws ``NOISE_DRAWS`` ..)."""
    parts = [step_batch(run, seed, step)]
    parts += [step_batch(run, seed, step, draw=MEAN_DRAWS + j) for j in range(mean_batches - 1)]
    parts += [step_batch(run, seed, step, draw=NOISE_DRAWS + j) for j in range(2)]
    return torch.cat(parts)


def batch_arm_tokens(tokens: torch.Tensor, batch: int, mean_batches: int) -> torch.Tensor:
    """A batch arm's rows: the real batch first, then the mean's fresh batches (never xi's)."""
    return tokens[: mean_batches * batch]


class ArmState:
    """A model at a checkpoint with its own AdamW moments, stepped by :func:`adamw_step`."""

    def __init__(self, run, seed: int, start: int, arm: Arm):
        ckpt = run.checkpoint(seed, start)
        if start > 0 and not ckpt["exp_avg"]:
            raise ReplayError(
                f"the checkpoint of seed {seed} at step {start} holds no AdamW moments: no arm can start there"
            )
        self.arm, self.model = arm, run.model(seed, start)
        self.model.train()
        self.names = [n for n, _ in self.model.named_parameters()]
        zeros = {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}
        self.m = {n: ckpt["exp_avg"].get(n, zeros[n]).clone() for n in self.names}
        self.v = {n: ckpt["exp_avg_sq"].get(n, zeros[n]).clone() for n in self.names}
        self.count = float(ckpt["adam_step"])
        self.train = run.config.train
        self.step_index = start

    def loss(self, tokens: torch.Tensor, batch: int, mean_batches: int, cfg) -> torch.Tensor:
        """The loss whose gradient is the arm's: rows of ``tokens`` are the M mean batches, then
        xi's two batches (noise arms), or the arm's own rows (batch arms)."""
        arm = self.arm
        rows = tokens[: arm.rows] if arm.is_batch else tokens
        if not arm.is_batch and arm.c == 0:
            rows = tokens[: mean_batches * batch]
        with _autocast(cfg):
            per = self.model(rows, return_type="loss", loss_per_token=True).float().mean(-1)
        if arm.is_batch:
            return per.mean()
        mean = per[: mean_batches * batch].mean()
        if arm.c == 0:
            return mean
        a = per[mean_batches * batch : (mean_batches + 1) * batch].mean()
        b = per[(mean_batches + 1) * batch :].mean()
        return mean + arm.c * (a - b) / math.sqrt(2)

    def take(self, loss: torch.Tensor, v_real: dict | None) -> Step:
        """Back-propagate ``loss``, take the AdamW step (the real run's ``v_real`` fed in for a
        ``fed`` arm) and return it as a :class:`~interp_ext.replay.Step`."""
        params = dict(self.model.named_parameters())
        grads = torch.autograd.grad(loss, [params[n] for n in self.names])
        theta = {n: params[n].detach().clone() for n in self.names}
        m_before = {n: self.m[n].clone() for n in self.names}
        v_before = {n: self.v[n].clone() for n in self.names}
        grad = {n: g.detach().to(params[n].dtype) for n, g in zip(self.names, grads)}
        if self.arm.fed and v_real is None:
            raise ReplayError(f"arm {self.arm.name} needs the real run's second moment")
        with torch.no_grad():
            for n in self.names:
                adamw_step(
                    params[n].data,
                    grad[n],
                    self.m[n],
                    self.v[n],
                    self.count,
                    self.train.lr,
                    tuple(self.train.betas),
                    self.train.weight_decay,
                    v_real[n] if self.arm.fed else None,
                )
        out = Step(
            self.step_index,
            theta,
            grad,
            m_before,
            v_before,
            self.count,
            {n: self.v[n].clone() for n in self.names},
            {n: params[n].detach() - theta[n] for n in self.names},
        )
        self.count += 1
        self.step_index += 1
        return out


def step_norms(step: Step, train_cfg) -> tuple[float, float]:
    """(|update|, mean over coordinates of 1 / (sqrt(v_hat) + eps)) of one step."""
    b2 = train_cfg.betas[1]
    t = step.count + 1
    sq = sum(float(u.double().pow(2).sum()) for u in step.update.values())
    inv = sum(
        float((1 / ((v.double() / (1 - b2**t)).sqrt() + EPS)).sum())
        for v in step.new_exp_avg_sq.values()
    )
    size = sum(v.numel() for v in step.new_exp_avg_sq.values())
    return math.sqrt(sq), inv / size


class ArmReplay:
    """One arm's steps from checkpoint ``start``, read like :class:`~interp_ext.replay.Replay`'s
    (``model``, ``names``, ``train_cfg``, ``steps``); a fed arm runs the real replay in lockstep.
    An arm has no checkpoint to reproduce: :meth:`verify` refuses."""

    def __init__(self, run, seed: int, start: int, arm: Arm, mean_batches: int):
        self.run, self.seed, self.arm, self.mean_batches = run, seed, arm, mean_batches
        self.state = ArmState(run, seed, start, arm)
        self.model, self.names = self.state.model, self.state.names
        self.train_cfg = run.config.train
        self.real = Replay(run, seed, start) if arm.fed else None
        self.step = start

    def take(self) -> Step:
        v_real = self.real.take().new_exp_avg_sq if self.real is not None else None
        tokens = step_tokens(self.run, self.seed, self.step, self.mean_batches)
        batch = self.run.config.train.batch_size
        if self.arm.is_batch:
            tokens = batch_arm_tokens(tokens, batch, self.mean_batches)
        loss = self.state.loss(
            tokens.to(self.model.cfg.device), batch, self.mean_batches, self.run.config
        )
        out = self.state.take(loss, v_real)
        self.step += 1
        return out

    def steps(self, stop: int) -> Iterator[Step]:
        while self.step < stop:
            yield self.take()

    def verify(self) -> None:
        raise ReplayError(
            f"arm {self.arm.name} is not the run's trajectory: it has no checkpoint to reproduce"
        )
