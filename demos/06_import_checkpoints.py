# %% [markdown]
# # Bring your own checkpoints
#
# A run trained elsewhere (here: a small GPT-2 trained by the Hugging Face
# Trainer, saving checkpoints with its AdamW state) becomes a run directory that
# every measurement accepts: the dashboard, induction heads, patching, Stream 3.

# %%
import os
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from interp_ext import import_checkpoints, measure, write_report
from interp_ext.data import build_compact_tokenizer, encode_text, gpt2_tokenizer, synthetic_corpus
from interp_ext.families import GeometrySettings, InductionSettings

FAST = os.environ.get("DEMO_FAST") == "1"
work = Path(os.environ.get("DEMO_RUN", "runs/demo")).parent / "imported-demo"
work.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A Trainer run: copy-task sequences, checkpoints every 50 steps

# %%
corpus = synthetic_corpus(40_000)
base = gpt2_tokenizer()
tokenizer = build_compact_tokenizer(
    base, encode_text(base, corpus.train_text), 512, work / "tokenizer"
)
gen = torch.Generator().manual_seed(0)
seqs = torch.randint(1, 512, (2000, 32), generator=gen)
seqs[:, 16:] = seqs[:, 1:17]  # the second half repeats the first: induction pays


class Copies(torch.utils.data.Dataset):
    def __len__(self):
        return len(seqs)

    def __getitem__(self, i):
        return {"input_ids": seqs[i], "labels": seqs[i]}


model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=32, n_embd=32, n_layer=2, n_head=2))
args = TrainingArguments(
    output_dir=str(work / "trainer"),
    max_steps=100 if FAST else 600,
    save_steps=50 if FAST else 100,
    per_device_train_batch_size=16,
    learning_rate=1e-3,
    lr_scheduler_type="constant",
    report_to=[],
    use_cpu=True,
    logging_strategy="no",
    disable_tqdm=FAST,
)
Trainer(
    model=model,
    args=args,
    train_dataset=Copies(),
    processing_class=tokenizer,
    data_collator=default_data_collator,
).train()

# %% [markdown]
# ## Import: the checkpoints are referenced (hashed), not copied

# %%
text = work / "probe.txt"
text.write_text(corpus.heldout_text)
run = import_checkpoints(
    work / "trainer", work / "run", probe_text=text, probe_batches=8, probe_batch_size=4
)
print(run, "imported:", run.imported)
print(run.model(step=run.steps[-1]))  # a plain HookedTransformer, unprocessed

# %% [markdown]
# ## Measure it like any run

# %%
rows = measure(run, InductionSettings(), progress=not FAST)
print(
    rows[rows.metric == "best_induction_score"].pivot_table(index="step", values="value").round(3)
)
measure(run, GeometrySettings(k=4, lag=1), progress=not FAST)
print("report:", write_report(run))
