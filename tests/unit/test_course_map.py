"""The course map has one source of truth, folo_edu/course.py, and everything that shows
it agrees with the notebooks that exist: the README's and the overview's tables (generated
from it), notebook 00 (which displays it), and every notebook's "What's next" cell.

When a milestone's notebook lands, set its status to "built" in folo_edu/course.py and
run `python -m folo_edu.course --write`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from folo_edu import course

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
FIX = "set its status in folo_edu/course.py, then run `python -m folo_edu.course --write`"


def existing_notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]


def test_built_milestones_are_the_notebooks_that_exist():
    built, exist = set(course.built_notebooks()), set(existing_notebooks())
    assert built == exist, (
        f"in notebooks/ but not marked built in folo_edu/course.py: {sorted(exist - built)}; "
        f"marked built but missing: {sorted(built - exist)}. " + FIX)
    for nb in existing_notebooks():
        assert course.milestone_of(nb) is not None, f"{nb} is in no milestone of course.py"


def test_milestones_are_well_formed():
    names = [m.name for m in course.MILESTONES]
    assert len(set(names)) == len(names)
    listed = [nb for m in course.MILESTONES for nb in m.notebooks]
    assert len(set(listed)) == len(listed), "a notebook is listed under two milestones"
    for m in course.MILESTONES:
        assert m.status in (course.BUILT, course.PLANNED), m
        assert all(re.fullmatch(r"\d\d_[a-z0-9_]+", nb) for nb in m.notebooks), m


@pytest.mark.parametrize("m", [m for m in course.MILESTONES if m.status == course.BUILT],
                         ids=lambda m: m.name)
def test_built_milestones_have_their_docs(m):
    missing = [d for d in m.docs if not (ROOT / "docs" / d).exists()]
    assert not missing, f"{m.name} is built but docs/{missing} do not exist"


@pytest.mark.parametrize("name", sorted(course.GENERATED))
def test_generated_tables_match_course_py(name):
    text = (ROOT / name).read_text()
    assert course.current_block(text) is not None, f"{name} lost its course-map block"
    assert name not in course.stale_files(ROOT), (
        f"{name}'s course map differs from folo_edu/course.py: run "
        "`python -m folo_edu.course --write`")
    # no second, hand-written map elsewhere in the file
    assert text.count("| milestone |") == 1, f"{name} has another milestone table"


def test_notebook_00_displays_the_map_from_course_py():
    sources = [("".join(c["source"]), c["cell_type"]) for c in cells("00_quickstart")]
    assert any(t == "code" and "course_map()" in s and "folo_edu.course" in s
               for s, t in sources), "notebook 00 should display folo_edu.course.course_map()"
    assert not any("| M0 |" in s or "| milestone |" in s for s, _ in sources), (
        "notebook 00 has a hand-written course map; display course_map() instead")


def test_course_map_renders_every_milestone():
    shown = course.course_map()
    for m in course.MILESTONES:
        assert f"| {m.name} |" in shown._repr_markdown_()
        assert m.name in repr(shown)


def whats_next_mentions():
    """(notebook, mentioned notebook, marked planned?) for every notebook name in every
    "What's next" cell."""
    found = []
    for nb in existing_notebooks():
        for c in cells(nb):
            text = "".join(c["source"])
            if c["cell_type"] == "markdown" and text.lstrip().startswith("## What's next"):
                for m in re.finditer(r"\b(\d\d_[a-z0-9_]+)\b`?( \(planned\))?", text):
                    found.append((nb, m.group(1), bool(m.group(2))))
    return found


def test_whats_next_links_point_at_notebooks_that_exist():
    """A "What's next" cell names a notebook that exists, or a planned one marked
    "(planned)" right after its name; never a notebook unknown to the course map."""
    assert whats_next_mentions(), "no notebook has a What's next cell"
    exists = set(existing_notebooks())
    for nb, target, marked in whats_next_mentions():
        milestone = course.milestone_of(target)
        assert milestone is not None, f"{nb}: What's next names {target}, not in the course map"
        if target in exists:
            assert not marked, f"{nb}: What's next says {target} is planned, but it exists"
        else:
            assert marked, (f"{nb}: What's next points at {target}, which does not exist; "
                            "write `(planned)` after its name or drop it")
