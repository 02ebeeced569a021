"""``patching``: activation and path patching on the induction task.

At each selected checkpoint (default: the last): the residual-stream sweep
(``resid_pre``, component ``L{layer}P{pos}``), the head-output sweep
(``head_out``, ``L{layer}H{head}``) and path patching from every head into every
later head's query, key and value input (``path_q``/``path_k``/``path_v``,
``L0H1->L1H2``), all as the normalised logit difference of
``circuits.patching`` (0 = corrupted run, 1 = clean run), and query and key paths
again with the receiver-attention metric (``path_q_attention``,
``path_k_attention``: the receiver's attention to its induction targets), the one
a key path can move under this corruption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuits.circuit import Head
from circuits.patching import induction_task, patch_heads, patch_residual, path_patch_matrix
from interp_ext.measurement.probes import repeated_probe
from interp_ext.measurement.runner import Checkpoint, Family, Settings, setting


@dataclass(frozen=True)
class PatchingSettings(Settings):
    family = "patching"

    corruption_seed: int = setting(
        0, "Seed of the fresh tokens that replace the first copy in the corrupted input."
    )


class Patching(Family):
    name = "patching"
    report_order = 30
    settings = PatchingSettings

    def default_steps(self, run, settings: PatchingSettings) -> list[int]:
        return run.steps[-1:]

    def checkpoint(self, ctx: Checkpoint, settings: PatchingSettings, state) -> pd.DataFrame:
        model = ctx.model
        task = induction_task(model, repeated_probe(ctx.run), seed=settings.corruption_seed)
        resid = patch_residual(model, task)
        heads = patch_heads(model, task)
        rows = [
            {"metric": "ld_clean", "component": "", "value": task.ld_clean},
            {"metric": "ld_corrupted", "component": "", "value": task.ld_corrupted},
        ]
        rows += [
            {"metric": "resid_pre", "component": f"L{l}P{p}", "value": float(resid[l, p])}
            for l in range(resid.shape[0])
            for p in range(resid.shape[1])
        ]
        rows += [
            {"metric": "head_out", "component": str(Head(l, h)), "value": float(heads[l, h])}
            for l in range(heads.shape[0])
            for h in range(heads.shape[1])
        ]
        paths = [(kind, "logit") for kind in "qkv"] + [(kind, "attention") for kind in "qk"]
        for kind, metric in paths:
            mat = path_patch_matrix(model, task, kind, metric)
            name = f"path_{kind}" + ("_attention" if metric == "attention" else "")
            for idx in zip(
                *np.where(np.isfinite(mat))
            ):  # NaN: not connected, or no induction head to restore
                sl, sh, rl, rh = (int(i) for i in idx)
                rows.append(
                    {
                        "metric": name,
                        "component": f"{Head(sl, sh)}->{Head(rl, rh)}",
                        "value": float(mat[idx]),
                    }
                )
        return pd.DataFrame(rows)

    def describe(self, rows: pd.DataFrame) -> list[str]:
        lines = []
        for (seed, step), d in rows.groupby(["seed", "step"]):
            top = d[d.metric == "head_out"].sort_values("value", ascending=False).head(3)
            path = d[d.metric == "path_k_attention"].sort_values("value", ascending=False).head(3)
            ld = d.set_index("metric").value
            lines.append(
                f"seed {seed} step {step}: LD clean {ld.get('ld_clean', float('nan')):.2f}, corrupted {ld.get('ld_corrupted', float('nan')):.2f}; "
                f"heads restoring most: {', '.join(f'{c} {v:.2f}' for c, v in zip(top.component, top.value))}; "
                f"strongest key paths (receiver-attention metric): {', '.join(f'{c} {v:.2f}' for c, v in zip(path.component, path.value))}"
            )
        return lines

    def report(self, page) -> list[str]:
        from interp_ext.families.patching.report import section

        return section(page)


__all__ = ["Patching", "PatchingSettings"]
