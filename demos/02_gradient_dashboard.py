# %% [markdown]
# # The gradient-geometry dashboard
#
# G = E[grad L grad L^T] over probe batches, measured without ever forming G:
# effective rank, participation ratio, top-k variance, subspace overlaps, Stream 1
# drift and Stream 2 cross-seed alignment. First on a plain model, then over a run.

# %%
import os

from interp_ext import measure, open_run, write_report
from interp_ext.api import gradient_dashboard
from interp_ext.families import BetaSettings, GeometrySettings, Stream2Settings

FAST = os.environ.get("DEMO_FAST") == "1"
run = open_run(os.environ.get("DEMO_RUN", "runs/demo"))  # made by 01_train_and_explore.py
probe = run.probe_set()

# %% [markdown]
# ## One checkpoint, any `HookedTransformer`

# %%
model = run.model(seed=0, step=run.steps[-1])
metrics = gradient_dashboard(model, probe["lm"], k=4, heldout=probe["heldout"], params="all")
for name, value in metrics.items():
    print(f"{name:>22}: {value:.4f}")

# %% [markdown]
# ## Over training (rows go to the run's metrics table, keyed by their settings)
#
# `measure` runs a family over every seed and checkpoint; re-running it with the
# same settings measures nothing, other settings add rows beside the old ones.

# %%
settings = GeometrySettings(k=4, lag=2 if FAST else 4)
measure(run, settings, progress=not FAST)
measure(run, Stream2Settings(), progress=not FAST)
measure(run, BetaSettings(), progress=not FAST)
geo = run.metrics("geometry", settings=settings)
print(
    geo[geo.component == ""].pivot_table(index="step", columns="metric", values="value")[
        ["effective_rank", "topk_variance", "overlap_prev"]
    ]
)

# %%
report = write_report(run)
print("figures in", report.parent)
