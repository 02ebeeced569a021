"""Trajectories: the steps a seed's weights take from a checkpoint, as data.

A trajectory starts at a checkpoint (parameters, AdamW moments and step count) and takes
steps, each returned as a :class:`Step` (theta before it, the gradient, the moments before
and after, the count, the update). Three kinds:

* :class:`Replay`: the seed's real steps, rebuilt exactly as the trainer took them (the same
  batch, a pure function of seed and step; the same autocast, deterministic algorithms and
  AdamW; for a branch, the same interventions: ablations, scaled or frozen updates, a
  projection). :meth:`Replay.verify` compares the replayed state with the saved checkpoint,
  tensor by tensor, and refuses (:class:`~interp_ext.errors.ReplayError`) on any difference.
  With ``scale`` = k it replays the same batches at lr / k, k steps per real batch.
* :class:`ArmReplay`: an arm of the ``noise`` family, whose gradient is the mean of M
  batches plus c times a noise of one minibatch's covariance (or a batch of another size),
  with its own or the real run's second moment.
* :func:`real_step`: the one real step after a checkpoint (for an imported run, the
  difference to the checkpoint one step later).

:func:`walk` is the one loop over a trajectory: every step (every sub-step of a scaled
replay) up to a stop, each handed to a visitor, then the verification. The AdamW formula
itself lives in :mod:`interp_ext.adamw`.

On a CPU, a run trained with ``train.deterministic`` replays bit for bit with the same
thread count (``docs/benchmarks.md``; README "Bit for bit").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from interp_ext.adamw import (
    adamw,
    adamw_step,
    autocast,
    deterministic_algorithms,
    optimizer_for,
    scaled_train,
    set_adamw_state,
)
from interp_ext.data import MEAN_DRAWS, NOISE_DRAWS
from interp_ext.errors import ReplayError, RunError
from interp_ext.interventions import (
    Projection,
    ablation_hooks,
    apply_scaled_update,
    interventions_of,
    scaled_masks,
)


@dataclass
class Step:
    """One training step: everything before it and what it did."""

    step: int  # tau: the step taken from theta_tau
    theta: dict[str, torch.Tensor]  # theta_tau
    grad: dict[str, torch.Tensor]  # g_tau, the gradient the step took
    exp_avg: dict[str, torch.Tensor]  # m_{tau-1}
    exp_avg_sq: dict[str, torch.Tensor]  # v_{tau-1}
    count: float  # AdamW's step count before the step (t - 1)
    new_exp_avg_sq: dict[str, torch.Tensor]  # v_tau
    update: dict[str, torch.Tensor]  # theta_{tau+1} - theta_tau
    # a lockstep's arms: the step each arm took beside this real one (:class:`Lockstep`)
    arms: dict[str, Step] | None = None


class Trajectory(Protocol):
    """What :func:`walk` and the measurements read of a trajectory."""

    model: torch.nn.Module  # its parameters are the trajectory's current point
    names: list[str]
    train_cfg: object  # the AdamW hyper-parameters its steps take

    @property
    def step(self) -> int: ...  # the index of the next step

    def take(self) -> Step: ...

    def verify(self) -> None: ...  # raise ReplayError unless it reproduces the run's checkpoint


def walk(
    trajectory: Trajectory,
    stop: int,
    visit: Callable[[Step], None] | None = None,
    verify: bool = False,
    desc: str = "",
    progress: bool = False,
) -> None:
    """The one loop over a trajectory: take every step (every sub-step at a scale k) up to
    ``stop``, hand each to ``visit``, then, with ``verify``, check that it reproduced the
    run's checkpoint there (:class:`~interp_ext.errors.ReplayError` when not)."""
    bar = tqdm(total=max(stop - trajectory.step, 0), desc=desc, leave=False, disable=not progress)
    try:
        while trajectory.step < stop:
            taken = trajectory.take()
            bar.update(1)
            if visit is not None:
                visit(taken)
    finally:
        bar.close()
    if verify:
        trajectory.verify()


def _start(run, seed: int, start: int, what: str) -> dict:
    ckpt = run.checkpoint(seed, start)
    if start > 0 and not ckpt["exp_avg"]:
        raise ReplayError(
            f"the checkpoint of seed {seed} at step {start} holds no AdamW moments: {what}"
        )
    return ckpt


# --------------------------------------------------------------------------- the real steps


class Replay:
    """The real steps of one seed from checkpoint ``start``.

    Args:
        run: an opened run.
        seed: the seed to replay.
        start: a checkpoint step of that seed holding AdamW moments (any but step 0
            of a run saved without them is refused).
        device: where to replay (default: the run's measurement device).
        scale: k > 1 replays the same batches at lr / k, k steps per real batch
            (:func:`~interp_ext.adamw.scaled_train`); it has no checkpoint to verify.

    A branch (``interp-ext branch``) replays with its interventions, so it verifies against its
    own checkpoints; a step's ``update`` is then the intervened one (a frozen member's part is
    zero), and AdamW's momentum split describes its unscaled part only.
    """

    def __init__(self, run, seed: int, start: int, device: str | None = None, scale: int = 1):
        self.run, self.seed, self.start, self.scale = run, seed, start, scale
        self.device = device or run.device
        ckpt = _start(run, seed, start, "its steps cannot be replayed")
        run.train_tokens()  # refuses a run without its training data
        self.model = run.model(seed, start, device=self.device)
        self.model.train()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.train_cfg = scaled_train(run.config.train, scale)
        # a branch's interventions, applied as its training applied them (none for a plain run)
        self.interventions = interventions_of(run.path)
        self.scaled = scaled_masks(self.interventions, self.model)
        # on during the step's own passes only: a measurement of the replayed weights sees the
        # network without them, as it does at the branch's checkpoints
        self.ablations = ablation_hooks(self.interventions)
        self.projection = (
            Projection(self.interventions, self.model, seed, None)
            if self.interventions.project_out
            else None
        )
        if self.interventions and scale != 1:
            raise ReplayError(
                f"{run.path} is a branch with interventions: its steps replay at their own "
                "learning rate only (scale 1)"
            )
        if scale == 1:
            self.optimizer = optimizer_for(self.model, self.train_cfg, ckpt)
        else:
            self.optimizer = adamw(self.model.parameters(), self.train_cfg)
            params = dict(self.model.named_parameters())
            if ckpt["exp_avg"]:
                set_adamw_state(
                    self.optimizer,
                    [
                        (scale * ckpt["adam_step"], ckpt["exp_avg"][n], ckpt["exp_avg_sq"][n])
                        for n in params
                    ],
                )
        self.step = start

    def batch_of(self, j: int) -> torch.Tensor:
        """The batch step ``j`` trains on (at a scale k, the real batch of its real step)."""
        return self.run.batch(self.seed, self.start + (j - self.start) // self.scale)

    def _state(self) -> tuple[float, dict, dict]:
        params = dict(self.model.named_parameters())
        states = [self.optimizer.state.get(params[n], {}) for n in self.names]
        if not states[0]:
            zeros = {n: torch.zeros_like(params[n]) for n in self.names}
            return 0.0, zeros, {n: z.clone() for n, z in zeros.items()}
        count = float(states[0]["step"])
        return (
            count,
            {n: s["exp_avg"].clone() for n, s in zip(self.names, states)},
            {n: s["exp_avg_sq"].clone() for n, s in zip(self.names, states)},
        )

    def moments(self) -> dict[str, torch.Tensor]:
        """The first moment m before the next step (zeros before the first)."""
        return self._state()[1]

    def take(self) -> Step:
        """Take the next real step and return it."""
        cfg = self.run.config
        params = dict(self.model.named_parameters())
        theta = {n: p.detach().clone() for n, p in params.items()}
        count, m, v = self._state()
        batch = self.batch_of(self.step).to(self.device)
        with (
            deterministic_algorithms(cfg.train.deterministic, self.device),
            self.model.hooks(fwd_hooks=self.ablations),
        ):
            if self.projection is not None:
                self.projection.prepare(self.model, batch, self.step, lambda: autocast(cfg))
            with autocast(cfg):
                loss = self.model(batch, return_type="loss")
            loss.float().backward()
            grad = {n: params[n].grad.detach().clone() for n in self.names}
            if self.scaled:
                apply_scaled_update(self.optimizer, params, self.scaled, self.interventions.moments)
            else:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if self.projection is not None:
                self.projection.apply(self.model)
        _, _, v_new = self._state()
        update = {n: params[n].detach() - theta[n] for n in self.names}
        out = Step(self.step, theta, grad, m, v, count, v_new, update)
        self.step += 1
        return out

    def verify(self) -> None:
        """Compare the replayed state with the saved checkpoint at the current step; raise on any difference."""
        if self.scale != 1:
            raise ReplayError(
                "a replay at a scaled learning rate is not the run's: it has no checkpoint to reproduce"
            )
        saved = self.run.checkpoint(self.seed, self.step)
        params = dict(self.model.named_parameters())
        count, m, v = self._state()
        checks = [("params", n, params[n].detach(), saved["params"][n]) for n in self.names]
        checks += [("exp_avg", n, m[n], saved["exp_avg"][n]) for n in self.names]
        checks += [("exp_avg_sq", n, v[n], saved["exp_avg_sq"][n]) for n in self.names]
        bad = [f"{kind} {n}" for kind, n, a, b in checks if not torch.equal(a.cpu(), b)]
        if bad or count != saved["adam_step"]:
            raise ReplayError(
                f"replaying seed {self.seed} from step {self.start} does not reproduce its checkpoint at step {self.step}: "
                f"{len(bad)} tensors differ ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}); "
                "replays are bit for bit only with the training's deterministic setting, device type and thread count "
                f"(recorded in {self.run.path / 'config.json'}, provenance.numerics)"
            )


def real_step(
    run, seed: int, step: int, device: str | None = None
) -> tuple[dict, dict, torch.Tensor]:
    """(theta_t, d = theta_{t+1} - theta_t, batch) for the real step after checkpoint ``step``:
    the optimizer's actual update, which function-space alignment and Stream 3's ``optimizer``
    direction read.

    The step reproduces training exactly (same batch, AdamW state and autocast). For an
    imported run, whose batches are unknown, the real update is the difference to a
    checkpoint one step later (batch: a probe batch), or an error says what is missing.
    """
    device = device or run.device
    if run.imported:
        return imported_update(run, seed, step, device)
    if interventions_of(run.path):  # a branch's step, its interventions applied
        taken = Replay(run, seed, step, device).take()
        return taken.theta, taken.update, run.batch(seed, step).to(device)
    model = run.model(seed, step, device=device)
    opt = optimizer_for(model, run.config.train, run.checkpoint(seed, step))
    batch = run.batch(seed, step).to(device)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    with deterministic_algorithms(run.config.train.deterministic, device):
        with autocast(run.config):
            loss = model(batch, return_type="loss")
        loss.float().backward()
        opt.step()
    direction = {n: (p.detach() - theta[n]) for n, p in model.named_parameters()}
    return theta, direction, batch


def imported_update(run, seed: int, step: int, device: str) -> tuple[dict, dict, torch.Tensor]:
    """The real update of an imported run: theta_{t+1} - theta_t from two checkpoints one step apart."""
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


# --------------------------------------------------------------------------- the noise family's arms

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


def step_tokens(run, seed: int, step: int, mean_batches: int) -> torch.Tensor:
    """The rows every arm of one step reads: the real batch, M - 1 fresh batches (draws
    ``MEAN_DRAWS`` ..), then xi's two batches (draws ``NOISE_DRAWS`` ..)."""
    parts = [run.batch(seed, step)]
    parts += [run.batch(seed, step, draw=MEAN_DRAWS + j) for j in range(mean_batches - 1)]
    parts += [run.batch(seed, step, draw=NOISE_DRAWS + j) for j in range(2)]
    return torch.cat(parts)


class ArmState:
    """A model at a checkpoint with its own AdamW moments, stepped by
    :func:`~interp_ext.adamw.adamw_step`."""

    def __init__(self, run, seed: int, start: int, arm: Arm):
        ckpt = _start(run, seed, start, "no arm can start there")
        if interventions_of(run.path):
            raise ReplayError(
                f"{run.path} is a branch with interventions, which the noise arms do not apply: "
                "measure the arms on the run it branched from"
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
            with autocast(cfg):
                per = self.model(tokens[idx], return_type="loss", loss_per_token=True)
            loss = (per.float().mean(-1) * w[idx].to(per.device)).sum()
            grads = torch.autograd.grad(loss, [params[n] for n in self.names])
            for n, g in zip(self.names, grads):
                out[n] += g.detach().to(params[n].dtype)
        return out

    def take(self, grad: dict[str, torch.Tensor], v_real: dict | None) -> Step:
        """Take the AdamW step with ``grad`` (the real run's ``v_real`` fed in for a ``fed`` arm)
        and return it as a :class:`Step`."""
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


class ArmReplay:
    """One arm's steps from checkpoint ``start``, read like :class:`Replay`'s
    (``model``, ``names``, ``train_cfg``, ``step``, ``take``); a fed arm runs the real replay in
    lockstep.
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

    def verify(self) -> None:
        raise ReplayError(
            f"arm {self.arm.name} is not the run's trajectory: it has no checkpoint to reproduce"
        )


class Lockstep:
    """The real steps with arms beside them, every arm on the same rows each step (the real
    batch, M - 1 fresh ones and xi's two: :func:`step_tokens`), a ``fed`` arm on the real
    run's v_tau of that step. :meth:`take` returns the real step with each arm's in
    ``arms``; :meth:`drop` stops an arm. It verifies as the real replay does."""

    def __init__(self, run, seed: int, start: int, arms: list[Arm], mean_batches: int):
        self.run, self.seed, self.mean_batches = run, seed, mean_batches
        self.real = Replay(run, seed, start)
        self.model, self.names, self.train_cfg = (
            self.real.model,
            self.real.names,
            self.real.train_cfg,
        )
        self.device = self.real.device
        self.states = [ArmState(run, seed, start, arm) for arm in arms]

    @property
    def step(self) -> int:
        return self.real.step

    def take(self) -> Step:
        taken = self.real.take()
        tokens = step_tokens(self.run, self.seed, taken.step, self.mean_batches).to(self.device)
        batch, cfg = self.run.config.train.batch_size, self.run.config
        taken.arms = {
            a.arm.name: a.take(
                a.gradient(tokens, batch, self.mean_batches, cfg), taken.new_exp_avg_sq
            )
            for a in self.states
        }
        return taken

    def drop(self, name: str) -> None:
        self.states = [a for a in self.states if a.arm.name != name]

    def verify(self) -> None:
        self.real.verify()


def build(
    run,
    seed: int,
    start: int,
    scale: int = 1,
    arm: str = "",
    arms: tuple[Arm, ...] = (),
    mean_batches: int = 0,
):
    """The trajectory a measurement asks for from checkpoint ``start``: the real steps (at lr /
    ``scale``), one ``arm`` of the noise family, or the real steps with ``arms`` in lockstep
    (``mean_batches``: M, the batches of an arm's mean gradient)."""
    if arms:
        return Lockstep(run, seed, start, list(arms), mean_batches)
    if arm:
        return ArmReplay(run, seed, start, Arm.parse(arm), mean_batches)
    return Replay(run, seed, start, scale=scale)
