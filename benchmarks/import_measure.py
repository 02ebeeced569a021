"""Measuring an imported run vs the same weights stored natively, loading included.

A small GPT-2 is trained by the Hugging Face Trainer (checkpoints with AdamW state),
then imported twice: by reference (the Hugging Face checkpoints, converted on
load by TransformerLens' converter) and as native checkpoints (the converted
HookedTransformers copied into the run's own safetensors). Both runs get the same
probe text, so their probe sets are equal. The induction and geometry families
are measured on both, alternately, from fresh processes' caches.

Usage: python benchmarks/import_measure.py [--rounds 3] [--embd 128]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from _common import machine, timed

from interp_ext import measure
from interp_ext.data import build_compact_tokenizer, encode_text, gpt2_tokenizer, synthetic_corpus
from interp_ext.families import GeometrySettings, InductionSettings
from interp_ext.importing import import_checkpoints


def trainer_run(folder: Path, embd: int) -> None:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    corpus = synthetic_corpus(40_000)
    base = gpt2_tokenizer()
    tok = build_compact_tokenizer(base, encode_text(base, corpus.train_text), 512, folder / "tok")
    seqs = torch.randint(1, 512, (512, 64), generator=torch.Generator().manual_seed(0))

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(seqs)

        def __getitem__(self, i):
            return {"input_ids": seqs[i], "labels": seqs[i]}

    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=512, n_positions=64, n_embd=embd, n_layer=2, n_head=4)
    )
    args = TrainingArguments(
        output_dir=str(folder / "trainer"),
        max_steps=40,
        save_steps=10,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=Data(),
        processing_class=tok,
        data_collator=default_data_collator,
    ).train()
    (folder / "probe.txt").write_text(corpus.heldout_text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embd", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trainer_run(tmp, args.embd)
        kwargs = dict(probe_text=tmp / "probe.txt", probe_batches=8, probe_batch_size=8)
        imported = import_checkpoints(tmp / "trainer", tmp / "imported", **kwargs)
        models = {t: imported.model(0, t) for t in imported.steps}
        for m in models.values():
            m.set_tokenizer(imported.tokenizer())
        native = import_checkpoints(models, tmp / "native", **kwargs)
        times = {"imported": [], "native": []}
        for r in range(args.rounds):
            order = [("imported", imported), ("native", native)]
            for name, run in order if r % 2 == 0 else order[::-1]:
                shutil.rmtree(run.path / "metrics", ignore_errors=True)
                shutil.rmtree(run.path / "measurements", ignore_errors=True)
                from interp_ext.importing import _hf_model, _load_imported

                _hf_model.cache_clear()
                _load_imported.cache_clear()
                times[name].append(
                    timed(
                        lambda run=run: (
                            measure(run, InductionSettings(), progress=False),
                            measure(run, GeometrySettings(k=4, lag=1), progress=False),
                        )
                    )
                )
        med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {machine()}")
    print(
        f"GPT-2 of d_model {args.embd}, 2 layers, 4 checkpoints, probe set 8 x 8 x 64; induction + geometry families, loading included; {args.rounds} alternating rounds, medians"
    )
    print(
        f"imported (converted on load): {med['imported']:.2f} s; native safetensors: {med['native']:.2f} s -> ratio {med['imported'] / med['native']:.2f}"
    )


if __name__ == "__main__":
    main()
