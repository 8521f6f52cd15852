"""M0: the project installs the way the README says, and notebooks are committed clean."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

import folo_edu

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and d.split("=")[0].strip() == "python"]
    assert len(pythons) == 1, deps
    version = pythons[0].split("=", 1)[1].lstrip("=").strip()
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    assert version in requires, f"environment.yml python={version} vs requires-python {requires}"
    assert "pip" in deps
    pip_deps = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-e .[dev]" in pip_deps
    assert "dev" in pyproject()["project"]["optional-dependencies"]


def test_dev_extra_has_the_test_tools():
    dev = " ".join(pyproject()["project"]["optional-dependencies"]["dev"])
    for tool in ("pytest", "pytest-xdist", "nbmake", "jupyterlab", "nbformat", "pyyaml"):
        assert tool in dev, tool


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(nb):
    data = json.loads(nb.read_text())
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(data["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{nb.name} cell {i} has outputs"
            assert cell.get("execution_count") is None, f"{nb.name} cell {i} has a count"


def test_there_are_notebooks():
    assert any(p.name == "01_config_and_requests.ipynb" for p in NOTEBOOKS)


def test_version():
    assert isinstance(folo_edu.__version__, str) and folo_edu.__version__.count(".") == 2
    assert md.version("folo_edu") == folo_edu.__version__


def test_console_script_is_installed():
    (entry,) = [e for e in md.entry_points(group="console_scripts") if e.name == "folo-edu"]
    assert entry.value == "folo_edu.cli:main"
    exe = Path(sys.executable).with_name("folo-edu")
    assert exe.exists(), f"{exe} missing: run `pip install -e .[dev]`"
    assert "folo_edu.cli" in exe.read_text()  # it runs (tests/integration/test_default_model.py)
    from folo_edu.cli import build_parser

    help_text = build_parser().format_help()
    assert all(cmd in help_text for cmd in ("download", "generate", "chat"))


def test_ci_script_runs_make_test():
    run = ROOT / ".ci" / "run"
    assert os.access(run, os.X_OK)
    text = run.read_text()
    assert "set -euo pipefail" in text and "make test" in text
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab:", "test:", "demo:", "download:", "clean:"):
        assert f"\n{target}" in makefile, target
