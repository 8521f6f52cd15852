"""help(SamplingParams) documents every field: each dataclass field has its own line in
the class docstring (name, meaning, default), so a learner never has to read the code."""
from __future__ import annotations

import dataclasses
import re

from folo_edu import SamplingParams


def documented_fields() -> dict[str, str]:
    """field name -> its entry (first line and indented continuation) in the docstring."""
    doc = SamplingParams.__doc__ or ""
    entries = re.findall(r"^ {4}(\w+): (.+(?:\n {8}.+)*)", doc, re.M)
    return {name: " ".join(text.split()) for name, text in entries}


def test_every_field_is_documented():
    fields = [f.name for f in dataclasses.fields(SamplingParams)]
    documented = documented_fields()
    missing = [name for name in fields if name not in documented]
    assert not missing, f"SamplingParams docstring has no 'name: ...' line for {missing}"
    unknown = sorted(set(documented) - set(fields))
    assert not unknown, f"the docstring documents fields that do not exist: {unknown}"


def test_each_entry_states_the_default():
    documented = documented_fields()
    for f in dataclasses.fields(SamplingParams):
        assert re.search(r"\[[^\]]+\]\.?$", documented[f.name]), (
            f"the docstring entry of {f.name} should end with its default in brackets")
        if f.default is not dataclasses.MISSING and f.default is not None:
            shown = f.default.name if hasattr(f.default, "name") else repr(f.default)
            assert shown in documented[f.name], (f.name, f.default, documented[f.name])


def test_help_shows_the_fields():
    import pydoc

    text = pydoc.render_doc(SamplingParams, renderer=pydoc.plaintext)
    assert "temperature: divides the logits" in text
    assert "include_stop_str_in_output: keep the matched stop string" in text
