"""Per-head susceptibilities to the two parts of the training mix (devinterp).

devinterp's ``susceptibilities`` (Baker et al. 2025, "Structural inference: interpreting small
language models with susceptibilities", appendix C.4) samples the localised, tempered posterior
once for the whole model and once restricted to each head's weights, evaluating at every draw the
per-token loss on fixed sequences of each observed data set. For a head C and a token x of a data
part it returns

    chi_C(x) = E_C[phi (L_train - l_x)] - E_C[phi] E_full[L_train - l_x],   phi = L_train - L_train(w*)

(E_C: the draws of C's chains; L_train: the sampled data's mean loss; l_x: the token's loss): the
covariance, under C's posterior, of the sampled loss's rise with the gap between the sampled loss
and that token's loss, centred on the whole model's gap. Where C's mean gap is the whole model's,
chi_C(x) = Var_C(L_train) - Cov_C(L_train, l_x): a token whose loss moves with the sampled loss
as C's weights move has a smaller chi, one C's weights leave untouched a chi near the sampled
loss's own variance under C. The parts are the training mix's uniform-random rows and its
corpus-text rows (both carry the copied span): the question the data-refined LLC asked (results
7) of which data a head specialises to.

Rows (component: the head; ``susceptibility_role`` 1 for a circuit member, 0 for its
layer-matched control, :func:`interp_ext.measurement.selection.member_controls`):
``susceptibility/<part>`` the mean of chi_C(x) over the part's observed tokens, and
``susceptibility_se/<part>`` its standard error over the observed sequences (each sequence's
mean a unit: tokens of one sequence are not independent); ``susceptibility_gap`` = text - random
with ``susceptibility_gap_se`` (the parts hold different sequences: the two errors add in
quadrature); for each member with a control, ``susceptibility_vs_control/<part>`` (member -
control, paired by sequence: every head reads the same observed sequences) and its
``susceptibility_vs_control_se/<part>``. The errors are over the observed sequences at fixed
chains; the chains' own Monte Carlo error is not in them.
"""

from __future__ import annotations

import tempfile

import numpy as np

from circuits.circuit import Head

PARTS = ("random", "text")
SUSCEPTIBILITY_DRAW = 7000  # training-distribution draws the observed sequences come from


def observed_parts(run, seed: int, n: int) -> dict:
    """``n`` random rows and ``n`` text rows of the training distribution (HF datasets)."""
    import torch
    from datasets import Dataset

    from interp_ext.measurement.probes import rows_by_part

    rand, text = rows_by_part(run, seed, SUSCEPTIBILITY_DRAW, n, n)
    return {
        part: Dataset.from_dict({"input_ids": torch.stack(rows).tolist()}).with_format("torch")
        for part, rows in zip(PARTS, (rand, text))
    }


def susceptibility_rows(
    model, data, parts: dict, controls: dict[str, str | None], kwargs: dict, quiet
) -> list[dict]:
    """The rows of one checkpoint: ``controls`` maps each circuit head (``L1H2``) to its control
    head (or None); ``data`` is the sampled data set, ``parts`` the observed ones, ``kwargs``
    devinterp ``sample`` arguments (the LLC's sampler settings; ``param_masks`` is set per head
    here), ``quiet`` the context that silences its sampler. The sampled loss phi reads is
    observed on the first sequences of ``data``, as many as each part has."""
    from devinterp.slt.susceptibilities import susceptibilities
    from devinterp.slt.weight_restrictions import create_param_masks

    kwargs = {k: v for k, v in kwargs.items() if k != "param_masks"}
    size = kwargs["batch_size"]
    heads = [*controls, *(c for c in controls.values() if c)]
    restrictions = {"full": None}
    for head in heads:
        h = Head.parse(head)
        restrictions[head] = create_param_masks(model, f"l{h.layer}h{h.head}")
    n = len(next(iter(parts.values())))
    observed = {"train": data.select(range(min(n, len(data)))), **parts}
    # each observed set whole batches (devinterp evaluates batch_size x batches_per_draw rows)
    observables = {name: (ds, len(ds) // size) for name, ds in observed.items()}
    with quiet(), tempfile.TemporaryDirectory(prefix="interp-ext-sus-") as tmp:
        tree = susceptibilities(
            model,
            data,
            observables,
            restrictions,
            sampling_task="train",
            output_path=f"{tmp}/samples.zarr",
            **kwargs,
        )
    return read_rows(tree["susceptibilities"].dataset, controls)


def read_rows(sus, controls: dict[str, str | None]) -> list[dict]:
    """Per head and part: the mean over observed sequences of the head's per-token chi and its
    standard error; per member with a control, the same for the difference member - control,
    paired by sequence (both read the same observed sequences)."""
    names = list(sus.attrs["dataset_id_to_name"])
    dataset_id = np.asarray(sus["dataset_id"].values)
    batch = np.asarray(sus["batch"].values)

    def per_sequence(head: str, part: str) -> np.ndarray:
        chi = np.asarray(sus["sus"].sel(wr=head).values)
        at = dataset_id == names.index(part)
        return np.array([chi[at & (batch == b)].mean() for b in np.unique(batch[at])])

    def mean_se(x: np.ndarray) -> tuple[float, float]:
        return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))

    roles = {**{c: 0.0 for c in controls.values() if c}, **{m: 1.0 for m in controls}}
    rows = []
    for head, role in roles.items():
        seqs = {part: per_sequence(head, part) for part in PARTS}
        for part in PARTS:
            m, se = mean_se(seqs[part])
            rows += [
                {"metric": f"susceptibility/{part}", "component": head, "value": m},
                {"metric": f"susceptibility_se/{part}", "component": head, "value": se},
            ]
        gap = seqs["text"].mean() - seqs["random"].mean()
        gap_se = np.hypot(mean_se(seqs["text"])[1], mean_se(seqs["random"])[1])
        rows += [
            {"metric": "susceptibility_gap", "component": head, "value": float(gap)},
            {"metric": "susceptibility_gap_se", "component": head, "value": float(gap_se)},
            {"metric": "susceptibility_role", "component": head, "value": role},
        ]
        control = controls.get(head) if role else None
        for part in PARTS if control else ():
            m, se = mean_se(seqs[part] - per_sequence(control, part))
            rows += [
                {"metric": f"susceptibility_vs_control/{part}", "component": head, "value": m},
                {"metric": f"susceptibility_vs_control_se/{part}", "component": head, "value": se},
            ]
    return rows
