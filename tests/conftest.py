"""Shared test set-up: offline hub, tiny models built once per session, CUDA skips."""
from __future__ import annotations

import os

# Before anything imports huggingface_hub: never try the network from a test.
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import folo_edu  # noqa: E402, F401  (on CPU it turns on TRITON_INTERPRET before triton loads)

# Under pytest-xdist, each worker gets one torch thread: two workers with two threads
# each on a 2-core machine make every small op wait on spinning threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()
NO_CUDA_REASON = "needs a CUDA GPU, and torch.cuda.is_available() is False on this machine"


def pytest_report_header(config):
    return (f"folo_edu: torch {torch.__version__}, CUDA "
            f"{'available' if HAS_CUDA else 'not available (cuda-marked tests are skipped)'}")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir(name, dtype=torch.float32, **overrides) -> Path``.

    Builds a tiny random HF folder with folo_edu.models.tiny.make_tiny_model once per
    session for each (name, dtype, overrides) and returns the same folder afterwards.
    Treat it as read-only: copy it (shutil.copytree) before changing anything in it.
    """
    from folo_edu.models.tiny import make_tiny_model

    built: dict[tuple, Path] = {}

    def build(name: str = "llama-gqa2-tied", dtype: torch.dtype = torch.float32,
              **overrides) -> Path:
        key = (name, dtype, repr(sorted(overrides.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"{name}-{str(dtype).removeprefix('torch.')}")
            built[key] = make_tiny_model(folder, name, dtype=dtype, **overrides)
        return built[key]

    return build
