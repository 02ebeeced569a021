# %% [markdown]
# # Stream 3: is the induction circuit autocatalytic?
#
# K[A, B] = d/d eps E_A(theta + eps d_B): how component B's own update changes the
# gradient energy E_A = sum_{i in A} G_ii. K[C, C] > 0 means the circuit's descent
# step raises its own gradient energy (self-reinforcement).

# %%
import os

from interp_ext import api, measure, open_run
from interp_ext.families import AutocatalysisSettings

FAST = os.environ.get("DEMO_FAST") == "1"
run = open_run(os.environ.get("DEMO_RUN", "runs/demo"))
lm = run.probe_set()["lm"]

# %% [markdown]
# ## On one checkpoint (a plain `HookedTransformer`)

# %%
step = run.steps[len(run.steps) // 2]
model = run.model(seed=0, step=step)
circuit = api.circuit_of(run, seed=0, spec="induction")
print(api.stream3_matrix(model, lm, circuit).round(5))  # along -gbar
# along the real AdamW step the run took after this checkpoint (replayed exactly):
update = api.real_update(run, seed=0, step=step)
print(api.stream3_matrix(model, lm, circuit, update=update).round(5))

# %% [markdown]
# ## Over training, with controls (random heads, a non-circuit group) and the energy budget

# %%
steps = run.steps[-2:] if FAST else run.steps
rows = measure(
    run,
    AutocatalysisSettings(rows=4 if FAST else 16, controls=1 if FAST else 3),
    steps=steps,
    progress=not FAST,
)
cc = rows[(rows.metric == "K_norm") & (rows.component == "C|C") & (rows.seed >= 0)]
print(cc.pivot_table(index="step", columns=["direction", "circuit"], values="value").round(4))
print(
    "budget error (median over seeds and checkpoints):",
    rows[rows.metric == "budget_error/median"].value.round(4).tolist(),
)
