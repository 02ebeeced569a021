"""The notebook surface: model-level functions that need no run directory.

Each takes a `HookedTransformer` (any: trained here, imported, or loaded by
TransformerLens) and token batches, and returns numbers or tables; nothing is
written. A run directory adds checkpoints, the probe set and keyed rows on top
(:func:`interp_ext.open_run`, :func:`interp_ext.measure`); the few run-level helpers a
notebook needs sit here too (:func:`tutorial_run`, :func:`circuit_of`, :func:`real_update`,
:func:`branch`), with the corpus and tokenizer helpers an imported series is built with.

The README's "Use it from a notebook" runs every function here on a fresh model, as
written (a test extracts and runs it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Int
from transformer_lens import HookedTransformer

from circuits.circuit import Circuit
from circuits.discovery import discover_induction_circuit as discover_circuit
from circuits.induction import head_scores as induction_scores
from circuits.induction import repeated_batch
from circuits.patching import induction_task, patch_heads, path_patch, path_patch_attention
from interp_ext.adamw import preconditioner as adam_preconditioner
from interp_ext.branch import Interventions, branch
from interp_ext.data import build_compact_tokenizer, encode_text, gpt2_tokenizer, synthetic_corpus
from interp_ext.exporting import export_checkpoint, export_model
from interp_ext.geometry.dashboard import measure_checkpoint as gradient_dashboard
from interp_ext.sae_tracking.matching import match_features, similarity_matrix
from interp_ext.sae_tracking.train import SAESettings, encode, load_sae, sae_quality, train_sae
from interp_ext.stream3.energy import component_matrix


def optimizer_update(
    model: HookedTransformer,
    optimizer: torch.optim.Optimizer,
    batch: Int[torch.Tensor, "batch pos"],
) -> dict[str, torch.Tensor]:
    """theta_{t+1} - theta_t of the step ``optimizer`` would take on ``batch`` from its current
    state (the LM loss of ``batch``), per parameter name. The step is taken on copies: ``model``
    and ``optimizer`` are left as they were."""
    twin = copy.deepcopy(model)
    names = {id(p): n for n, p in model.named_parameters()}
    params = dict(twin.named_parameters())
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [params[names[id(p)]] for p in g["params"]],
        }
        for g in optimizer.param_groups
    ]
    step = type(optimizer)(groups)
    step.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.train()
    twin.zero_grad(set_to_none=True)
    twin(batch.to(model.cfg.device), return_type="loss").backward()
    step.step()
    return {n: params[n].detach() - p.detach() for n, p in model.named_parameters() if n in params}


def stream3_matrix(
    model: HookedTransformer,
    batches: Int[torch.Tensor, "n_batches batch pos"],
    circuit: Circuit | list[str],
    optimizer: torch.optim.Optimizer | None = None,
    batch: Int[torch.Tensor, "batch pos"] | None = None,
    update: dict[str, torch.Tensor] | None = None,
    include_rest: bool = True,
) -> pd.DataFrame:
    """K[A, B] = dE_A/d eps along B's part of an update, for the circuit's components and
    ``rest`` (SPEC section 6): along -gbar (plain gradient descent) by default; along the step
    ``optimizer`` takes on the training ``batch`` from its current state; or along a given
    ``update`` (theta_{t+1} - theta_t per parameter, e.g. :func:`real_update`)."""
    if optimizer is not None:
        if batch is None:
            raise ValueError(
                "stream3_matrix with an optimizer needs batch= (the tokens it steps on)"
            )
        update = optimizer_update(model, optimizer, batch)
    if update is None:
        return component_matrix(model, batches, circuit, "sgd", include_rest=include_rest)
    return component_matrix(model, batches, circuit, "optimizer", update, include_rest)


def member_matrix(
    model: HookedTransformer,
    probe_batches: Int[torch.Tensor, "n_batches batch pos"],
    fresh_batches: Int[torch.Tensor, "m batch pos"],
    members: list[str],
    optimizer: torch.optim.Optimizer,
    controls: list[str] | None = None,
    groups: int = 4,
) -> pd.DataFrame:
    """Who reinforces whom (``interp_ext.stream3.reinforcement``): S (the mean gradient's energy), N (the
    per-batch noise energy) and E = S + N of each member, and R^X[A, B] = grad_B X_A . u_B with u
    the expected step of ``optimizer`` (a ``torch.optim.AdamW`` that has stepped on ``model``'s
    parameters) per unit of lr x steps; ``fresh_batches`` (independent of ``probe_batches``) make
    its mean gradient. Rows per ``part``, ``A``, ``B`` ("" for the level), ``value``, ``se``
    (over ``groups`` independent groups of batches), ``n``; ``C`` is the members' union."""
    from interp_ext.adamw import denominators
    from interp_ext.stream3.reinforcement import member_matrix as matrix

    group = optimizer.param_groups[0]
    params = dict(model.named_parameters())
    states = {n: optimizer.state.get(p, {}) for n, p in params.items()}
    if not all("exp_avg_sq" in st for st in states.values()):
        raise ValueError(
            "member_matrix needs an AdamW optimizer that has taken a step on every parameter of "
            "the model (its second moment makes u's denominator)"
        )
    count = float(next(iter(states.values()))["step"])
    v = {n: st["exp_avg_sq"] for n, st in states.items()}
    denominator = denominators(v, count, group["betas"][1], group["eps"])
    rows = {m: [m] for m in members} | {c: [c] for c in controls or []}
    unions = {"C": list(members)} | ({"CTRL": list(controls)} if controls else {})
    return matrix(
        model,
        probe_batches,
        fresh_batches,
        rows,
        denominator,
        group["weight_decay"],
        groups,
        unions,
    )


def sae_folder(run, settings, seed: int, step: int) -> Path:
    """The folder of the SAE the ``sae`` family trained with ``settings`` for one seed and
    checkpoint (``load_sae`` reads it)."""
    from interp_ext.families.sae import SAES

    return run.layout.artifact(SAES, settings.id, seed, step)


def circuit_of(run, seed: int, spec: str = "cause") -> Circuit:
    """The circuit a run's seed is followed with: ``cause`` (found by key-path patching; the
    ``circuit`` family's rows, or discovered now), ``induction`` (by scores), or heads like
    ``L1H2,L0H3``, as ``--circuit`` takes it on the command line."""
    from interp_ext.measurement.selection import resolve_circuit, seed_circuit

    resolved = resolve_circuit(run, spec)
    return seed_circuit(run, seed, resolved["circuit"], resolved["source"])


def real_update(run, seed: int, step: int) -> dict[str, torch.Tensor]:
    """theta_{t+1} - theta_t of the training step a run's seed took right after checkpoint
    ``step`` (replayed exactly: the same batch, AdamW state and autocast)."""
    from interp_ext.trajectory import real_step

    return real_step(run, seed, step)[1]


def llc_estimate(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "n pos"],
    heads: list[str] | None = None,
    **settings,
) -> dict:
    """devinterp's local learning coefficient of ``model`` on ``tokens`` (SGLD on the localised,
    tempered posterior), for the whole model or restricted to ``heads`` (like ``["L1H2"]``).

    ``settings`` are those of ``interp-ext measure llc`` (``lr``, ``localization``,
    ``num_chains``, ``num_draws``, ``num_burnin_steps``, ``batch_size``, ...). Returns the
    estimate ``llc``, its spread over chains, each chain's value and the trace diagnostics.
    """
    from datasets import Dataset
    from devinterp.slt.weight_restrictions import create_param_masks

    from circuits.circuit import Head
    from interp_ext.families.llc import LLCSettings
    from interp_ext.geometry.learning_coefficient import estimate

    chosen = LLCSettings(n_sequences=len(tokens), **settings)
    data = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    masks = None
    if heads:
        parsed = [Head.parse(h) for h in heads]
        masks = create_param_masks(model, [f"l{h.layer}h{h.head}" for h in parsed])
    return estimate(model, data, masks, chosen)


TUTORIAL_HOOKS = [
    "blocks.0.attn.hook_pattern",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_resid_post",
]


def hessian_operator(model, batches, names: list[str] | None = None):
    """Hessian-vector products of the mean next-token loss over token ``batches``
    [n_batches, batch, pos] at ``model``'s parameters (all, or ``names``), and Lanczos on them:
    ``op.top()`` is lambda_1(H); ``op.top(preconditioner=adam_preconditioner(...))`` is AdamW's
    lambda_1(P^-1 H) (:mod:`interp_ext.geometry.curvature`)."""
    from interp_ext.geometry.curvature import model_hessian

    return model_hessian(model, batches, names)


def default_tutorial_folder():
    """``runs/tutorial`` beside the package's repository (an editable install), else in the
    working folder."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return (root if (root / "pyproject.toml").exists() else Path.cwd()) / "runs" / "tutorial"


def tutorial_run(
    out: str | None = None,
    fast: bool = False,
    data_dir: str | None = None,
    progress: bool = True,
):
    """The run the tutorials use: ``out`` opened if it holds a finished run, else trained there
    (default: ``runs/tutorial`` of the repository the package is installed from, wherever the
    notebook server started; else of the working folder).

    The ``tiny`` preset (2 seeds, 4,000 steps, checkpoints every 250, a few minutes on a
    laptop CPU) with three hooks recorded; ``fast`` trains 60 steps (seconds, nothing forms),
    enough to run every cell. ``data_dir``: a folder with WikiText-2's ``wiki.*.raw``; without
    one, the hub's WikiText-2 when it is reachable, else a synthetic corpus. A run cut short
    is resumed from its last checkpoint.
    """
    import os

    from interp_ext.config import get_preset, override
    from interp_ext.run import open_run
    from interp_ext.training import last_complete_step, train

    cfg = override(
        get_preset("tiny"),
        data__data_dir=data_dir,
        record__hooks=TUTORIAL_HOOKS,
        **(dict(train__steps=60, train__checkpoint_every=20) if fast else {}),
    )
    out = str(out or default_tutorial_folder())
    exists = os.path.exists(os.path.join(out, "config.json"))
    if exists:
        run = open_run(out)
        if run.config.train.steps != cfg.train.steps:
            mode = "a fast-mode" if run.config.train.steps < cfg.train.steps else "a full"
            raise ValueError(
                f"{out} holds {mode} tutorial run ({run.config.train.steps} steps), not the "
                f"{cfg.train.steps} steps asked for; remove the folder or give another out"
            )
        if last_complete_step(out, run.seeds) == run.config.train.steps:
            return run
        cfg = run.config  # resume what is there, with the settings it was started with
    return train(cfg, out, resume=exists, progress=progress)


__all__ = [
    "Interventions",
    "SAESettings",
    "adam_preconditioner",
    "branch",
    "build_compact_tokenizer",
    "circuit_of",
    "default_tutorial_folder",
    "discover_circuit",
    "encode",
    "encode_text",
    "export_checkpoint",
    "export_model",
    "gpt2_tokenizer",
    "gradient_dashboard",
    "hessian_operator",
    "induction_scores",
    "induction_task",
    "llc_estimate",
    "load_sae",
    "sae_folder",
    "match_features",
    "member_matrix",
    "optimizer_update",
    "patch_heads",
    "path_patch",
    "path_patch_attention",
    "real_update",
    "repeated_batch",
    "sae_quality",
    "similarity_matrix",
    "stream3_matrix",
    "synthetic_corpus",
    "train_sae",
    "tutorial_run",
]
