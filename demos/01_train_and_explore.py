# %% [markdown]
# # Train a tiny run with hook recording, then explore it in plain TransformerLens
#
# Several seeds of a `HookedTransformer` train side by side; at every checkpoint the
# hooks we name are recorded on a fixed probe set. Afterwards `open_run` gives back
# ordinary `HookedTransformer`s, so the rest is TransformerLens as usual.
# Set `DEMO_FAST=1` for a seconds-long version.

# %%
import os

from interp_ext import get_preset, open_run, override, train

FAST = os.environ.get("DEMO_FAST") == "1"
RUN = os.environ.get("DEMO_RUN", "runs/demo")
DATA_DIR = os.environ.get(
    "DEMO_DATA_DIR"
)  # a folder with wiki.*.raw; None: hub or synthetic corpus

cfg = override(
    get_preset("tiny"),
    train__n_seeds=2,
    train__steps=20 if FAST else 3000,
    train__checkpoint_every=10 if FAST else 250,
    data__data_dir=DATA_DIR,
    record__hooks=["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"],
)
run = open_run(RUN) if os.path.exists(os.path.join(RUN, "config.json")) else train(cfg, RUN)
print(run)

# %% [markdown]
# ## What the run holds

# %%
print("seeds", run.seeds, "checkpoints", run.steps)
probe = run.probe_set()
print({name: tuple(t.shape) for name, t in probe.items()})
acts = run.activations(seed=0, step=run.steps[-1])
print({name: tuple(t.shape) for name, t in acts.items()})

# %% [markdown]
# ## A checkpoint is a plain `HookedTransformer`

# %%
model = run.model(seed=0, step=run.steps[-1])
tokens = probe["repeated"][0]  # [batch, 1 + 2S]: [BOS] r r
logits, cache = model.run_with_cache(tokens)
pattern = cache["pattern", 1]  # [batch, head_index, query_pos, key_pos]
print("layer-1 attention pattern", tuple(pattern.shape))
print(model.to_string(model.to_tokens("The history of")[0]))
loss_first, loss_second = (
    model(tokens, return_type="loss", loss_per_token=True)[:, s].mean().item()
    for s in (slice(1, 31), slice(31, 62))
)
print(f"loss on the first copy {loss_first:.2f}, on the second copy {loss_second:.2f}")

# %% [markdown]
# Recorded activations equal a fresh `run_with_cache` on the same checkpoint:

# %%
import torch

recorded = run.activations(0, run.steps[-1])["blocks.0.attn.hook_pattern"]
lm = probe["lm"][: run.config.record.n_batches].reshape(-1, probe["lm"].shape[-1])
_, fresh = model.run_with_cache(lm)
print("max difference:", (recorded - fresh["blocks.0.attn.hook_pattern"]).abs().max().item())
assert torch.allclose(recorded, fresh["blocks.0.attn.hook_pattern"], atol=1e-6)
