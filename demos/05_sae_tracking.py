# %% [markdown]
# # SAE features across checkpoints (sae-lens)
#
# One TopK SAE per checkpoint at a recorded hook; features matched between
# consecutive checkpoints into a lineage, and related to "this token appeared earlier".

# %%
import os

from interp_ext import measure, open_run
from interp_ext.api import load_sae
from interp_ext.families import SAETrackingSettings

FAST = os.environ.get("DEMO_FAST") == "1"
run = open_run(os.environ.get("DEMO_RUN", "runs/demo"))
hook = "blocks.0.hook_resid_post"

# %%
steps = run.steps[:: max(1, len(run.steps) // 4)]
settings = SAETrackingSettings(
    hook=hook, width=32 if FAST else 128, k=4, n_tokens=4096 if FAST else 32768
)
rows = measure(run, settings, steps=steps, progress=not FAST)
rows = rows[rows.seed >= 0]
print(
    rows[rows.metric.isin(["l0", "explained_variance", "ce_recovered", "induction_feature_corr"])]
    .pivot_table(index="step", columns="metric", values="value")
    .round(3)
)
print(
    rows[rows.metric.str.startswith("n_")].pivot_table(
        index="step", columns="metric", values="value"
    )
)

# %% [markdown]
# Each SAE is saved in sae-lens' own format and loads with sae-lens:

# %%
sae = load_sae(run.layout.saes(settings.id, run.seeds[0], steps[-1]))
print(type(sae).__name__, sae.cfg.d_in, "->", sae.cfg.d_sae)
