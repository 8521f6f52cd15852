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


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tiny_model_dir, tmp_path_factory):
    """Factory: ``tiny_chat_model_dir(dtype) -> str``, a tiny Llama named "tiny-chat" with
    SmolLM2's vocabulary size and the default model's tokenizer and chat template (for the
    server tests). Skips when the default model's tokenizer is not in the cache."""
    import shutil

    from folo_edu.models.default_model import default_model_dir

    built: dict[torch.dtype, str] = {}

    def build(dtype: torch.dtype) -> str:
        src = default_model_dir()
        if not (src / "tokenizer.json").is_file():
            pytest.skip("the default model's tokenizer is not in the cache: run folo-edu download")
        if dtype not in built:
            tiny = tiny_model_dir("llama-gqa2-tied", dtype=dtype, vocab_size=49152)
            path = tmp_path_factory.mktemp("serving") / "tiny-chat"
            shutil.copytree(tiny, path)
            for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
                if (src / name).is_file():
                    shutil.copy(src / name, path / name)
            built[dtype] = str(path)
        return built[dtype]

    return build
