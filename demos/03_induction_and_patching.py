# %% [markdown]
# # Induction heads over training, ablation and patching

# %%
import os

from interp_ext import api, measure, open_run
from interp_ext.api import induction_task, patch_heads, path_patch
from interp_ext.families import InductionSettings

FAST = os.environ.get("DEMO_FAST") == "1"
run = open_run(os.environ.get("DEMO_RUN", "runs/demo"))
repeated = run.probe_set()["repeated"].reshape(-1, run.probe_set()["repeated"].shape[-1])

# %% [markdown]
# ## Scores of every head on one checkpoint (a plain `HookedTransformer`)

# %%
model = run.model(seed=0, step=run.steps[-1])
scores = api.induction_scores(model, repeated)
print(scores.pivot_table(index="component", columns="metric", values="value").dropna().round(3))

# %% [markdown]
# ## Over training: detection, formation step, ablation

# %%
rows = measure(run, InductionSettings(), progress=not FAST)
best = rows[rows.metric == "best_induction_score"].pivot_table(
    index="step", columns="seed", values="value"
)
print(best.round(3))
circuit = api.circuit_of(run, seed=0, spec="induction")
print("seed 0 circuit:", circuit.components, circuit.roles)

# %% [markdown]
# ## Activation patching and path patching (TransformerLens' patching underneath)

# %%
task = induction_task(model, repeated[:16])
print(
    "head-output patching (0 = corrupted, 1 = clean):\n", patch_heads(model, task).round(decimals=2)
)
heads = [c for c in circuit.components if circuit.roles.get(c) == "induction"]
prevs = [c for c in circuit.components if circuit.roles.get(c) == "prev_token"]
if heads and prevs:
    print(
        f"path {prevs[0]} -> {heads[0]} key:",
        round(path_patch(model, task, prevs[0], [(heads[0], "k")]), 3),
    )
