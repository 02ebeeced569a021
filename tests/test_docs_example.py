"""The family written in docs/adding_a_measurement.md plugs in as the document says."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from typer.testing import CliRunner

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_measurement.md"


def test_the_documented_family_runs_from_python_and_the_command_line(micro_run):
    from interp_ext import measure
    from interp_ext.cli import app
    from interp_ext.measurement.runner import get_family

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict = {"__name__": "docs_example"}
    code = compile("\n".join(blocks[:2]), str(DOC), "exec", dont_inherit=True)
    exec(code, namespace)  # the settings and the family
    settings = namespace["AttentionEntropySettings"](layer=1)
    rows = measure(micro_run, settings, progress=False)
    assert get_family("attention_entropy").settings is namespace["AttentionEntropySettings"]
    per_seed = rows[(rows.metric == "entropy") & (rows.seed >= 0)]
    assert (
        len(per_seed)
        == len(micro_run.seeds) * len(micro_run.steps) * micro_run.config.model.n_heads
    )
    # the entropy of a head's attention lies between 0 and log(number of keys)
    assert (per_seed.value >= 0).all() and (
        per_seed.value <= torch.log(torch.tensor(32.0)).item()
    ).all()
    assert {"entropy/seed_mean", "entropy/seed_lo"} <= set(rows.metric)
    result = CliRunner().invoke(
        app, ["measure", "attention_entropy", str(micro_run.path), "--layer", "1", "--quiet"]
    )
    assert result.exit_code == 0 and "0 units measured now" in result.output, result.output
    bad = CliRunner().invoke(
        app, ["measure", "attention_entropy", str(micro_run.path), "--layer", "5"]
    )
    assert bad.exit_code == 2 and "layer=5" in bad.stderr
