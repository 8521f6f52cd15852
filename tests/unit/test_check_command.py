"""`folo-edu check NOTEBOOK`: runs a learner's notebook and reports each lab check
(Correct / Not answered yet / Not right yet: hint), exit code 0 only if all are correct.
On a tiny generated notebook (no model), and on the student copy of notebook 01."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from folo_edu import cli
from folo_edu.labs.grading import (CORRECT, DID_NOT_RUN, NOT_ANSWERED, NOT_RIGHT,
                                   grade_cells)

ROOT = Path(__file__).resolve().parents[2]

CHECKS = '''
from folo_edu.labs import LabCheckFailed, not_answered, report_pass

def check_answer(answer, expected=3):
    if answer is None:
        return not_answered("answer")
    if answer != expected:
        raise LabCheckFailed(f"answer={answer}: off by {answer - expected}")
    return report_pass(f"answer = {answer}")
'''


def write_notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (CHECKS, *sources)]
    nbformat.write(nb, str(path))
    return path


def rows(text: str) -> dict[str, str]:
    """check name -> the rest of its report line."""
    return dict(re.findall(r"^  (check_\w+)\s+\(cell \d+\)\s+(.*)$", text, re.M))


def test_check_reports_each_result_and_fails(tmp_path, capsys):
    path = write_notebook(
        tmp_path / "learner.ipynb",
        "check_answer(3)",
        "check_missing = check_answer\ncheck_missing(None)",
        "check_wrong = check_answer\ncheck_wrong(4)",
        "print('after a wrong answer the notebook goes on')",
        "check_first = check_second = check_answer\ncheck_first(5)  # stops the cell\n"
        "check_second(3)",
        "check_retried = check_answer\ncheck_retried(None)",
        "check_retried(3)  # a second try counts")
    assert cli.main(["check", str(path), "--timeout", "60"]) == 1
    out = capsys.readouterr().out
    got = rows(out)
    assert got["check_answer"] == "Correct: answer = 3"
    assert got["check_missing"].startswith("Not answered yet: set the answer for answer")
    assert got["check_wrong"] == "Not right yet: answer=4: off by 1"
    assert got["check_first"] == "Not right yet: answer=5: off by 2"
    assert got["check_second"] == "Did not run"
    assert got["check_retried"] == "Correct: answer = 3"
    assert "2 of 6 checks correct" in out
    assert "\x1b[" not in out  # no terminal colour codes from the traceback
    assert not (tmp_path / "learner.ipynb").read_text().count('"output_type"')  # unchanged


def test_check_passes_when_every_check_is_correct(tmp_path, capsys):
    path = write_notebook(tmp_path / "done.ipynb", "check_answer(3)",
                          "check_other = check_answer\ncheck_other(4, expected=4)")
    saved = tmp_path / "graded.ipynb"
    assert cli.main(["check", str(path), "--output", str(saved)]) == 0
    assert "2 of 2 checks correct" in capsys.readouterr().out
    assert "Correct: answer = 4" in saved.read_text()


def test_a_notebook_without_checks_does_not_pass():
    cells = [{"cell_type": "code", "source": CHECKS, "outputs": []},  # a definition only
             {"cell_type": "code", "source": "%matplotlib inline\nx = 1  # check_x(x)",
              "outputs": []}]
    grade = grade_cells(cells, "none.ipynb")
    assert grade.results == [] and not grade.passed
    assert "no lab check found" in grade.report()


def test_usage_errors(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "missing.ipynb")]) == 2
    path = write_notebook(tmp_path / "x.ipynb", "x = 1")
    assert cli.main(["check", str(path), "--timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert "no such notebook" in err and "--timeout=0" in err


def test_grade_cells_reads_outputs_without_a_kernel():
    """The teacher copy's pattern: the exercise says not answered, the solution cell
    (a later call of the same check) says correct: the later result counts."""
    stream = lambda text: {"output_type": "stream", "name": "stdout", "text": text}  # noqa: E731
    cells = [
        {"cell_type": "markdown", "source": "check_nothing(1) in a markdown cell"},
        {"cell_type": "code", "source": "check_a(None)",
         "outputs": [stream("Not answered yet: set the answer for a and run the cell again.\n")]},
        {"cell_type": "code", "source": ["check_a(1)\n", "check_b(2)"],
         "outputs": [stream("Correct: a is 1\n"),
                     {"output_type": "error", "ename": "LabCheckFailed",
                      "evalue": "b: off", "traceback": ["\x1b[31mNot right yet\x1b[0m: b: off"]}]},
        {"cell_type": "code", "source": "check_c(x)",
         "outputs": [{"output_type": "error", "ename": "NameError",
                      "evalue": "name 'x' is not defined", "traceback": []}]},
        {"cell_type": "code", "source": "if False:\n    check_d(1)", "outputs": []},
    ]
    grade = grade_cells(cells, "t.ipynb")
    got = {r.check: (r.status, r.message, r.cell) for r in grade.results}
    assert got == {"check_a": (CORRECT, "a is 1", 2), "check_b": (NOT_RIGHT, "b: off", 2),
                   "check_c": (NOT_RIGHT, "NameError: name 'x' is not defined", 3),
                   "check_d": (DID_NOT_RUN, "", 4)}
    assert not grade.passed
    assert NOT_ANSWERED not in {s for s, _, _ in got.values()}


def test_student_copy_of_notebook_01_is_not_answered(tmp_path, capsys):
    from folo_edu.labs.student import write_student_copies

    path, = write_student_copies(ROOT / "notebooks", tmp_path, ["01_config_and_requests.ipynb"])
    assert cli.main(["check", str(path), "--timeout", "300"]) == 1
    out = capsys.readouterr().out
    got = rows(out)
    assert set(got) == {"check_kv_bytes_per_token", "check_crossover_context"}, out
    assert all(v.startswith("Not answered yet") for v in got.values()), out
