"""Automatic checks for the notebook exercises, one module per notebook.

Each check prints a short pass message, says "not answered yet" for ``None``, and
raises AssertionError with a hint for a wrong answer.
"""
from __future__ import annotations

import math


def report_pass(what: str) -> bool:
    """Print the pass message every check uses; return True."""
    print(f"Correct: {what}")
    return True


def not_answered(what: str) -> bool:
    """Print what to do when an exercise still holds None; return False."""
    print(f"Not answered yet: set the answer for {what} and run the cell again.")
    return False


def require_number(what: str, answer) -> None:
    """Raise AssertionError unless ``answer`` is an int or a float."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise AssertionError(f"{what}: {answer!r} is not a number; answer with an int or float")


def hint(answer, hints, default: str, tol: float = 0.0) -> str:
    """The texts of the (value, text) hints whose value is the answer (within relative
    tolerance tol, for float answers), joined; ``default`` when none matches."""
    def near(value) -> bool:
        return answer == value or bool(tol and isinstance(answer, (int, float))
                                       and math.isclose(answer, value, rel_tol=tol))

    return "; or ".join(text for value, text in hints if near(value)) or default
