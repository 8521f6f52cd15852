"""Automatic checks for the notebook exercises, one module per notebook.

Each check prints a short pass message, says "not answered yet" for ``None``, and
raises ``LabCheckFailed`` (an AssertionError) with a hint for a wrong answer.

No spoilers: a pass message only repeats what the learner gave (or a fact that holds
for every right answer), never a value they have not computed; and a wrong answer shows
one short message in Jupyter, not a traceback through the checker's source. The cell
still fails, so a teacher copy whose check fails still fails under nbmake.
"""
from __future__ import annotations

import math


class LabCheckFailed(AssertionError):
    """A wrong answer to a lab check. In IPython/Jupyter it prints as one short message:
    IPython asks an exception for ``_render_traceback_()`` before formatting a traceback,
    and we give it just the hint. Outside IPython (pytest, scripts) it is an ordinary
    AssertionError with the full traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31mNot right yet\x1b[0m: {self}"]


def report_pass(what: str) -> bool:
    """Print the pass message every check uses; return True."""
    print(f"Correct: {what}")
    return True


def not_answered(what: str) -> bool:
    """Print what to do when an exercise still holds None; return False."""
    print(f"Not answered yet: set the answer for {what} and run the cell again.")
    return False


def require_number(what: str, answer) -> None:
    """Raise LabCheckFailed unless ``answer`` is an int or a float."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise LabCheckFailed(f"{what}: {answer!r} is not a number; answer with an int or float")


def hint(answer, hints, default: str, tol: float = 0.0) -> str:
    """The texts of the (value, text) hints whose value is the answer (within relative
    tolerance tol, for float answers), joined; ``default`` when none matches."""
    def near(value) -> bool:
        return answer == value or bool(tol and isinstance(answer, (int, float))
                                       and math.isclose(answer, value, rel_tol=tol))

    return "; or ".join(text for value, text in hints if near(value)) or default
