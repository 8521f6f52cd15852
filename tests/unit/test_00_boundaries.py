"""The boundaries of ARCHITECTURE.md, checked on the source so they stay kept.

The scheduler never touches a tensor; the model runner never decides policy or holds a
request; the model never knows what a request is; configs are plain data that never
reach into the layers they configure. Each rule is checked on the direct imports of the
files (found with ast, so a lazy import inside a function counts too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "folo_edu"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def files(*parts: str) -> list[Path]:
    target = PACKAGE.joinpath(*parts)
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


# (files, forbidden module prefixes, why)
RULES = [
    (files("engine", "scheduler.py") + files("engine", "scheduler_output.py") + files("kv_cache"),
     ("torch", "numpy"), "the scheduler and the KV-cache bookkeeping never touch a tensor"),
    (files("models") + files("attention"), ("folo_edu.request", "folo_edu.engine"),
     "the model and the attention backends never know what a request is"),
    (files("config.py"), ("folo_edu.models", "folo_edu.attention", "folo_edu.engine"),
     "configs are plain data: they never open a checkpoint or load a backend"),
    (files("engine", "model_runner.py"), ("folo_edu.engine.scheduler", "folo_edu.request"),
     "the runner gets plain data (scheduler_output), never the scheduler or a Request"),
    (files("sample"), ("folo_edu.request", "folo_edu.engine"),
     "the sampler knows only logits and per-request parameters"),
]


@pytest.mark.parametrize("paths,forbidden,why", RULES, ids=[r[2][:40] for r in RULES])
def test_boundary(paths, forbidden, why):
    assert paths, "no files found: the rule checks nothing"
    broken = [f"{p.relative_to(PACKAGE.parent)} imports {m}"
              for p in paths for m in sorted(imported_modules(p))
              if m == "torch" and "torch" in forbidden
              or any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert not broken, f"{why}: " + "; ".join(broken)


def test_the_rules_can_fail(tmp_path):
    """A file that breaks a rule is caught (the check is not vacuous)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch\n    from folo_edu.engine import llm\n")
    assert {"torch", "folo_edu.engine", "folo_edu.engine.llm"} <= imported_modules(bad)
