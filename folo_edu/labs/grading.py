"""Grading a learner's notebook: run it top to bottom, then read what every lab check said.

``folo-edu check NOTEBOOK`` uses this. The notebook runs in a fresh ``python3`` kernel
(nbclient) with errors allowed, so one wrong answer does not hide the checks after it.
Every code cell that calls a ``check_*`` function is then read:

- a line ``Correct: ...`` -> correct;
- a line ``Not answered yet: ...`` -> not answered;
- an error ``LabCheckFailed`` (what a check raises for a wrong answer) -> not right,
  with its hint; any other error in the cell -> not right, with the exception;
- a call that printed nothing (the cell stopped before it, or skipped it) -> did not run.

The results of a cell are matched to its check calls in order. A check called again in a
later cell (the teacher copy's solution cell, or a learner's second try) counts with its
last result.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CORRECT, NOT_ANSWERED, NOT_RIGHT, DID_NOT_RUN = (
    "Correct", "Not answered yet", "Not right yet", "Did not run")
_RESULT_LINE = re.compile(r"^(Correct|Not answered yet|Not right yet): ?(.*)$", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class CheckResult:
    check: str  # the check function's name, e.g. check_top_p_filter
    cell: int  # index of the cell whose result counts
    status: str  # CORRECT, NOT_ANSWERED, NOT_RIGHT or DID_NOT_RUN
    message: str = ""


@dataclass
class Grade:
    notebook: str
    results: list[CheckResult]
    stopped: str = ""  # why the run stopped early (a timeout, a dead kernel), if it did

    @property
    def passed(self) -> bool:
        return bool(self.results) and not self.stopped and all(
            r.status == CORRECT for r in self.results)

    def report(self) -> str:
        lines = []
        n_ok = sum(r.status == CORRECT for r in self.results)
        lines.append(f"{self.notebook}: {n_ok} of {len(self.results)} checks correct")
        width = max((len(r.check) for r in self.results), default=0)
        for r in self.results:
            text = f"  {r.check:{width}}  (cell {r.cell})  {r.status}"
            lines.append(text + (f": {r.message}" if r.message else ""))
        if not self.results:
            lines.append("  no lab check found: no code cell calls a check_* function")
        if self.stopped:
            lines.append(f"  the run stopped early: {self.stopped}")
        return "\n".join(lines)


def _plain(text: str) -> str:
    return _ANSI.sub("", text).strip()


def cell_results(cell) -> list[tuple[str, str]]:
    """(status, message) for every check result a code cell's outputs show, in order."""
    found = []
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream" and out.get("name") == "stdout":
            found += [(s, _plain(m)) for s, m in _RESULT_LINE.findall(out.get("text", ""))]
        elif kind in ("display_data", "execute_result"):
            text = out.get("data", {}).get("text/plain", "")
            found += [(s, _plain(m)) for s, m in _RESULT_LINE.findall(text)]
        elif kind == "error":
            message = _plain(out.get("evalue", ""))
            if out.get("ename") != "LabCheckFailed":
                message = f"{out.get('ename')}: {message}"
            found.append((NOT_RIGHT, message))
    return found


def check_calls(source: str) -> list[str]:
    """The names of the ``check_*`` functions a cell's code calls, in the order written
    (definitions and comments do not count)."""
    import ast

    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())  # IPython magics and shell lines
    try:
        tree = ast.parse(code)
    except SyntaxError:  # not plain Python: fall back to the text
        code = "\n".join(line.split("#", 1)[0] for line in code.splitlines())
        return re.findall(r"(?<!def )\b(check_\w+)\s*\(", code)
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name and name.startswith("check_"):
                calls.append((node.lineno, node.col_offset, name))
    return [name for *_, name in sorted(calls)]


def grade_cells(cells, name: str = "notebook", stopped: str = "") -> Grade:
    """Read the check results out of executed cells (nbformat cells or plain dicts)."""
    latest: dict[str, CheckResult] = {}
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        calls = check_calls(source)
        if not calls:
            continue
        results = cell_results(cell)
        for i, check in enumerate(calls):
            if i < len(results):
                status, message = results[i]
            elif check in latest:  # this call never ran: keep what an earlier cell said
                continue
            else:
                status, message = DID_NOT_RUN, ""
            latest[check] = CheckResult(check, index, status, message)
    return Grade(name, list(latest.values()), stopped)


def execute(path: str | Path, timeout: int = 600, kernel_name: str = "python3"):
    """Run a notebook in a fresh kernel, errors allowed. Returns (nb, why it stopped or "")."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    try:
        client.execute()
    except Exception as e:  # a cell over the timeout, a dead kernel: grade what ran
        return nb, f"{type(e).__name__}: {_plain(str(e)).splitlines()[0][:300]}"
    return nb, ""


def grade_notebook(path: str | Path, timeout: int = 600, kernel_name: str = "python3",
                   output: str | Path | None = None) -> Grade:
    """Run the notebook at ``path`` and grade its checks; save the run to ``output``."""
    nb, stopped = execute(path, timeout, kernel_name)
    if output:
        import nbformat

        nbformat.write(nb, str(output))
    return grade_cells(nb.cells, Path(path).name, stopped)
