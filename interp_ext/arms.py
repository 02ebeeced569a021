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

    def weights(self, n_rows: int, batch: int, mean_batches: int) -> torch.Tensor:
        """Per-row weights w with sum_r w_r L_r the arm's loss (L_r a row's mean token loss): 1 / MB
        on the M mean batches, +-c / (B sqrt 2) on xi's two batches (noise arms), 1 / B' on a
        batch arm's first B' rows; 0 elsewhere."""
        w = torch.zeros(n_rows)
        if self.arm.is_batch:
            w[: self.arm.rows] = 1 / self.arm.rows
            return w
        m = mean_batches * batch
        w[:m] = 1 / m
        if self.arm.c:
            w[m : m + batch] = self.arm.c / (batch * math.sqrt(2))
            w[m + batch : m + 2 * batch] = -self.arm.c / (batch * math.sqrt(2))
        return w

    def gradient(
        self, tokens: torch.Tensor, batch: int, mean_batches: int, cfg, chunk: int = 64
    ) -> dict[str, torch.Tensor]:
        """The arm's gradient: g_bar_M + c xi (noise arms) or the mean over its rows (batch arms),
        accumulated over chunks of ``chunk`` rows (one large batch is about twice as slow on a CPU)."""
        w = self.weights(tokens.shape[0], batch, mean_batches)
        rows = torch.nonzero(w).flatten()
        params = dict(self.model.named_parameters())
        out = {n: torch.zeros_like(params[n]) for n in self.names}
        for start in range(0, len(rows), chunk):
            idx = rows[start : start + chunk]
            with _autocast(cfg):
                per = self.model(tokens[idx], return_type="loss", loss_per_token=True)
            loss = (per.float().mean(-1) * w[idx].to(per.device)).sum()
            grads = torch.autograd.grad(loss, [params[n] for n in self.names])
            for n, g in zip(self.names, grads):
                out[n] += g.detach().to(params[n].dtype)
        return out

    def take(self, grad: dict[str, torch.Tensor], v_real: dict | None) -> Step:
        """Take the AdamW step with ``grad`` (the real run's ``v_real`` fed in for a ``fed`` arm)
        and return it as a :class:`~interp_ext.replay.Step`."""
        params = dict(self.model.named_parameters())
        theta = {n: params[n].detach().clone() for n in self.names}
        m_before = {n: self.m[n].clone() for n in self.names}
        v_before = {n: self.v[n].clone() for n in self.names}
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

    @property
    def step(self) -> int:
        """The next step the arm takes."""
        return self.state.step_index

    def take(self) -> Step:
        v_real = self.real.take().new_exp_avg_sq if self.real is not None else None
        tokens = step_tokens(self.run, self.seed, self.step, self.mean_batches)
        batch = self.run.config.train.batch_size
        grad = self.state.gradient(
            tokens.to(self.model.cfg.device), batch, self.mean_batches, self.run.config
        )
        return self.state.take(grad, v_real)

    def steps(self, stop: int) -> Iterator[Step]:
        while self.step < stop:
            yield self.take()

    def verify(self) -> None:
        raise ReplayError(
            f"arm {self.arm.name} is not the run's trajectory: it has no checkpoint to reproduce"
        )
