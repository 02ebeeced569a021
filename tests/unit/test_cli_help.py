"""The command line's help speaks to its users: every command and option says what it does in
a sentence, with no references into the spec, no RST markup and no notes for developers."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
from typer.main import get_command

from interp_ext.cli import _family_command, app
from interp_ext.measurement.runner import family_names, get_family

BAD = re.compile(r"SPEC section|Long because|``|:func:|:class:|:mod:|:meth:|:data:")


def problems(where: str, text: str, sentence: bool) -> list[str]:
    text = " ".join((text or "").split())
    out = [f"{where}: markup or a developer's note: {text[:90]}"] if BAD.search(text) else []
    if sentence and text and not (text[0].isupper() or text[0] in "'\"0123456789"):
        out.append(f"{where}: starts in lower case: {text[:60]}")
    if sentence and text and not text.endswith((".", ")", "?")):
        out.append(f"{where}: no full stop: {text[-60:]}")
    return out


def walk(command, path: str) -> list[str]:
    out = problems(path, command.help, sentence=False)
    for p in command.params:
        out += problems(f"{path} {p.name}", getattr(p, "help", "") or "", sentence=True)
    for name, sub in getattr(command, "commands", {}).items():
        out += walk(sub, f"{path} {name}")
    return out


def test_every_command_and_option_help_is_a_plain_sentence():
    assert walk(get_command(app), "interp-ext") == []


@pytest.mark.parametrize("name", family_names())
def test_every_family_command_reads_plainly_and_hides_resolved_settings(name):
    command = _family_command(name)
    out = problems(f"measure {name}", command.__doc__, sentence=False)
    settings = get_family(name).settings
    for f in fields(settings):
        out += problems(f"measure {name} --{f.name}", f.metadata.get("help", ""), sentence=True)
    assert out == []
    options = set(command.__signature__.parameters)
    resolved = {f.name for f in fields(settings) if f.metadata.get("resolved")}
    assert not options & resolved  # filled in from the run, recorded with the measurement
