"""Learner copies of the notebooks: solution cells removed, outputs cleared.

The notebooks in ``notebooks/`` are the teacher copies: every lab has a cell tagged
``solution`` that solves it, so CI proves each lab is solvable. ``make student`` (or
``python -m folo_edu.labs.student``) writes copies without those cells and without
outputs, with nbconvert's own preprocessors (TagRemovePreprocessor,
ClearOutputPreprocessor), into ``student/`` at the repository root (git-ignored).
"""
from __future__ import annotations

import argparse
from pathlib import Path

SOLUTION_TAG = "solution"


def student_copy(notebook_path: str | Path):
    """The learner copy of one notebook, as an nbformat NotebookNode."""
    import nbformat
    from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

    nb = nbformat.read(str(notebook_path), as_version=4)
    resources: dict = {}
    nb, resources = TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}).preprocess(
        nb, resources)
    nb, resources = ClearOutputPreprocessor().preprocess(nb, resources)
    return nb


def write_student_copies(src: str | Path = "notebooks", out: str | Path = "student",
                         names: list[str] | None = None) -> list[Path]:
    """Write the learner copy of every ``*.ipynb`` in ``src`` (or of ``names`` there) to
    ``out``; return the written paths."""
    import nbformat

    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [src / n for n in names] if names else sorted(src.glob("*.ipynb"))
    written = []
    for path in paths:
        target = out / path.name
        nbformat.write(student_copy(path), str(target))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    parser.add_argument("--src", default="notebooks")
    parser.add_argument("--out", default="student")
    args = parser.parse_args(argv)
    for path in write_student_copies(args.src, args.out, args.names or None):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
