"""Replaying a seed's real training steps between two checkpoints, bit for bit.

From a checkpoint (parameters, AdamW moments and step count) the replay rebuilds
each step exactly as the trainer took it: the same batch (a pure function of
seed and step), the same autocast, deterministic algorithms and the run's AdamW
(``interp_ext.training.adamw``). At every step it exposes what the Stream 3
ledger needs: the parameters before the step, the minibatch gradient, the AdamW
state before and after, and the update. :meth:`Replay.verify` compares the
replayed end state with the saved checkpoint, tensor by tensor, and refuses
(:class:`ReplayError`) on any difference: a ledger is only as good as its replay.

On a CPU, a run trained with ``train.deterministic`` replays bit for bit with the
same thread count (``docs/benchmarks.md``; README "Bit for bit").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from interp_ext.errors import ReplayError
from interp_ext.optim_step import optimizer_for, step_batch
from interp_ext.training import _autocast, adamw, deterministic_algorithms, set_adamw_state


@dataclass
class Step:
    """One real training step: everything before it and what it did."""

    step: int  # tau: the step taken from theta_tau
    theta: dict[str, torch.Tensor]  # theta_tau
    grad: dict[str, torch.Tensor]  # g_tau, the minibatch gradient
    exp_avg: dict[str, torch.Tensor]  # m_{tau-1}
    exp_avg_sq: dict[str, torch.Tensor]  # v_{tau-1}
    count: float  # AdamW's step count before the step (t - 1)
    new_exp_avg_sq: dict[str, torch.Tensor]  # v_tau
    update: dict[str, torch.Tensor]  # theta_{tau+1} - theta_tau


class Replay:
    """The real steps of one seed from checkpoint ``start``.

    Args:
        run: an opened run.
        seed: the seed to replay.
        start: a checkpoint step of that seed holding AdamW moments (any but step 0
            of a run saved without them is refused).
        device: where to replay (default: the run's measurement device).
        batch_of: a counterfactual: the batch each step trains on (default: the real
            one, ``step_batch(run, seed, step)``); everything else (state, learning
            rate, numerics) stays the run's.
    """

    def __init__(
        self, run, seed: int, start: int, device: str | None = None, batch_of=None, scale: int = 1
    ):
        self.run, self.seed, self.start, self.scale = run, seed, start, scale
        real_batch = batch_of or (lambda step: step_batch(run, seed, step))
        self.batch_of = lambda j: real_batch(start + (j - start) // scale)
        self.device = device or run.device
        ckpt = run.checkpoint(seed, start)
        if start > 0 and not ckpt["exp_avg"]:
            raise ReplayError(
                f"the checkpoint of seed {seed} at step {start} holds no AdamW moments: its steps cannot be replayed"
            )
        run.train_tokens()  # refuses a run without its training data
        self.model = run.model(seed, start, device=self.device)
        self.model.train()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.train_cfg = scaled_train(run.config.train, scale)
        if scale == 1:
            self.optimizer = optimizer_for(self.model, run, ckpt)
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
        with deterministic_algorithms(cfg.train.deterministic, self.device):
            with _autocast(cfg):
                loss = self.model(batch, return_type="loss")
            loss.float().backward()
            grad = {n: params[n].grad.detach().clone() for n in self.names}
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        _, _, v_new = self._state()
        update = {n: params[n].detach() - theta[n] for n in self.names}
        out = Step(self.step, theta, grad, m, v, count, v_new, update)
        self.step += 1
        return out

    def steps(self, stop: int) -> Iterator[Step]:
        """Every real step from the current one up to (not including) ``stop``."""
        while self.step < stop:
            yield self.take()

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


def polyak_average(run, seed: int, step: int, width: int) -> dict[str, torch.Tensor]:
    """The slow weights at checkpoint ``step``: the mean (float64) of the real trajectory's
    parameters theta_tau over the ``width`` steps tau = step - width + 1 .. step, replayed bit for
    bit from the last checkpoint at or before the first of them and verified against the saved
    checkpoint at ``step`` (:class:`ReplayError` when it does not reproduce it)."""
    first = step - width + 1
    earlier = [s for s in run.steps_for(seed) if s <= first]
    if width < 1 or not earlier or step not in run.steps_for(seed):
        raise ReplayError(
            f"seed {seed}: no checkpoint at or before step {first} to average the {width} steps "
            f"up to checkpoint {step} (width must be >= 1 and fit after the run's first checkpoint)"
        )
    replay = Replay(run, seed, earlier[-1])
    total: dict[str, torch.Tensor] = {}
    for taken in replay.steps(step):
        if taken.step >= first:
            for n, t in taken.theta.items():
                total[n] = total.get(n, 0) + t.double()
    for n, p in replay.model.named_parameters():
        total[n] = total.get(n, 0) + p.detach().double()
    replay.verify()
    return {n: t / width for n, t in total.items()}


def scaled_train(train_cfg, scale: int):
    """The run's AdamW at learning rate lr / scale, its time constants held fixed in units of
    lr x steps: 1 - beta scaled by 1 / scale (a replay at scale k takes k steps per real batch, so
    the same data and the same optimizer memory are spread over finer steps; as k grows the
    replay approaches the continuous-time flow of the same optimizer on the same batches)."""
    if scale == 1:
        return train_cfg
    from dataclasses import replace

    b1, b2 = train_cfg.betas
    return replace(
        train_cfg, lr=train_cfg.lr / scale, betas=(1 - (1 - b1) / scale, 1 - (1 - b2) / scale)
    )


def update_from_moment(
    step: Step, moment: dict[str, torch.Tensor], train_cfg
) -> dict[str, torch.Tensor]:
    """AdamW's update from the step's state with the first moment after the step given (m_tau)
    and the real second moment v_tau: -lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    - lr wd theta (float64). With the real m_tau this is the real update up to float rounding."""
    lr, wd, (b1, b2), eps = train_cfg.lr, train_cfg.weight_decay, train_cfg.betas, 1e-8
    t = step.count + 1
    out = {}
    for n, theta in step.theta.items():
        denom = (step.new_exp_avg_sq[n].double() / (1 - b2**t)).sqrt() + eps
        out[n] = -lr * (moment[n].double() / (1 - b1**t)) / denom - lr * wd * theta.double()
    return out


def adamw_update(step: Step, grad: dict[str, torch.Tensor], train_cfg) -> dict[str, torch.Tensor]:
    """The update the run's AdamW would make from the step's state (theta_tau, m, v, count) with ``grad``
    in place of the minibatch gradient."""
    params = [torch.nn.Parameter(step.theta[n].clone()) for n in step.theta]
    opt = adamw(params, train_cfg)
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


def momentum_split(step: Step, train_cfg) -> dict[str, dict[str, torch.Tensor]]:
    """The update split with AdamW's denominator of this step held fixed.

    With t = count + 1, mhat = m_tau / (1 - beta1^t), vhat = v_tau / (1 - beta2^t) and
    D = sqrt(vhat) + eps, AdamW's update is -lr wd theta - lr mhat / D, and
    m_tau = beta1 m_{tau-1} + (1 - beta1) g_tau. So the update is the sum of

    * ``inherited``: -lr beta1 m_{tau-1} / ((1 - beta1^t) D), the momentum carried in,
    * ``fresh``: -lr (1 - beta1) g_tau / ((1 - beta1^t) D), this step's gradient,
    * ``decay``: -lr wd theta_tau, the decoupled weight decay,

    equal to the real update up to float rounding.
    """
    lr, wd, (b1, b2), eps = train_cfg.lr, train_cfg.weight_decay, train_cfg.betas, 1e-8
    t = step.count + 1
    out: dict[str, dict[str, torch.Tensor]] = {"inherited": {}, "fresh": {}, "decay": {}}
    for n, theta in step.theta.items():
        denom = (step.new_exp_avg_sq[n] / (1 - b2**t)).sqrt() + eps
        scale = lr / ((1 - b1**t) * denom)
        out["inherited"][n] = -scale * b1 * step.exp_avg[n]
        out["fresh"][n] = -scale * (1 - b1) * step.grad[n]
        out["decay"][n] = -lr * wd * theta
    return out
