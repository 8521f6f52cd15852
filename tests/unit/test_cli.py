"""The folo-edu command without a model: help, flag errors, streamed-text errors, Ctrl-C,
bench's output path. The model loader is replaced by one that fails the test, so a bad
flag must be reported before anything loads.

(tests/integration/test_default_model.py runs `folo-edu download` for real;
tests/unit/test_00_packaging.py checks the console script is installed.)
"""
from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from folo_edu import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    def load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "_load_llm", load)


def subparsers(parser=None):
    parser = parser or cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


# ---- help ------------------------------------------------------------------------------
def test_every_flag_has_help_and_shows_its_default():
    for name, p in subparsers().items():
        fmt = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[-1]} has no help"
            assert "default" in fmt._get_help_string(action), (name, action.option_strings)
        if len(p._actions) > 1:  # more than -h
            assert "(default: " in p.format_help()


def test_help_has_no_restructuredtext_markup():
    parser = cli.build_parser()
    for text in [parser.format_help(), *(p.format_help() for p in subparsers(parser).values())]:
        assert not re.search(r"``|:class:|:func:|:meth:|\.\. ", text), text


# ---- bad flags fail before the model loads ----------------------------------------------
BAD_FLAGS = [
    (["generate", "hi", "--max-tokens=-3"], "--max-tokens=-3: expected an int >= 1"),
    (["generate", "hi", "--max-tokens", "0"], "--max-tokens=0: expected an int >= 1"),
    (["generate", "hi", "--temperature=-1"], "--temperature=-1.0: expected a float >= 0"),
    (["generate", "hi", "--temperature", "nan"], "--temperature=nan: expected a float >= 0"),
    (["generate", "hi", "--top-p", "1.5"], "--top-p=1.5: expected a float in (0, 1]"),
    (["generate", "hi", "--top-p", "0"], "--top-p=0.0: expected a float in (0, 1]"),
    (["generate", "hi", "--max-model-len", "0"], "--max-model-len=0: expected an int >= 1"),
    (["chat", "--seed=-1"], "--seed=-1: expected an int >= 0"),
    (["bench", "--threads", "0"], "--threads=0: expected an int >= 1"),
    (["bench", "--min-len", "50", "--max-len", "10"], "--min-len=50: expected <= --max-len=10"),
    (["bench", "--hf-single-sample=-1"], "--hf-single-sample=-1: expected an int >= 0"),
    (["quantize", "--out", "x", "--group-size", "0"],
     "--group-size=0: expected an int >= 1, or -1"),
    (["quantize", "--out", "x", "--num-samples", "0"], "--num-samples=0: expected an int >= 1"),
    (["quantize", "--out", "x", "--seq-len", "1"], "--seq-len=1: expected an int >= 2"),
    (["quantize", "--out", "x", "--damp-percent", "1.5"],
     "--damp-percent=1.5: expected a float in (0, 1)"),
    (["serve", "--max-num-batched-tokens", "0"], "--max-num-batched-tokens=0: expected an int >= 1"),
    (["serve", "--max-num-batched-tokens", "10"],  # EngineConfig's rule, named by flags
     "--max-num-batched-tokens=10: expected >= --max-num-seqs=64 (every running request"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_values_name_the_flag_and_fail_before_loading(capsys, monkeypatch, argv, message):
    monkeypatch.setattr("folo_edu.bench.run", lambda cfg: pytest.fail("bench ran"))
    start = time.perf_counter()
    assert cli.main(argv) == 2
    assert time.perf_counter() - start < 5  # no model load (it takes 7 s or more)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"folo-edu: error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "--max-tokens", "abc"], "--max-tokens='abc': expected an int"),
    (["generate", "hi", "--top-p", "x"], "--top-p='x': expected a float"),
    (["generate"], "the following arguments are required: prompt"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["bench", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["quantize", "--out", "x", "--bits", "5"], "argument --bits: invalid choice: 5"),
    (["quantize", "--out", "x", "--method", "awq"], "invalid choice: 'awq'"),
    (["quantize"], "the following arguments are required: --out"),
    (["serve", "--dtype", "float8"], "argument --dtype: invalid choice: 'float8' (choose from "
                                     "'auto', 'float16', 'bfloat16', 'float32', 'float64')"),
    (["serve", "--linear-backend", "cuda"], "argument --linear-backend: invalid choice: "
                                            "'cuda' (choose from 'auto', 'torch', 'numba')"),
    (["generate", "hi", "--linear-backend", "blas"], "argument --linear-backend: invalid "
                                                     "choice: 'blas'"),
    (["chat", "--linear-backend", "blas"], "argument --linear-backend: invalid choice: 'blas'"),
    (["serve", "--max-num-batched-tokens", "x"], "--max-num-batched-tokens='x': expected an int"),
    (["serve", "--enable-prefix-caching=yes"], "argument --enable-prefix-caching/"
                                               "--no-enable-prefix-caching: ignored explicit "
                                               "argument 'yes'"),
])
def test_parse_errors_are_one_line_with_exit_code_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "usage:" not in err, err


def test_library_errors_are_renamed_to_flags(capsys, monkeypatch):
    def load(args):
        raise ValueError("ModelConfig.max_model_len=99999: expected an int in [1, 8192]; "
                         "prompt has 7 tokens; expected at most max_model_len - 1")

    monkeypatch.setattr(cli, "_load_llm", load)
    assert cli.main(["generate", "hi", "--max-model-len", "99999"]) == 2
    assert capsys.readouterr().err == (
        "folo-edu: error: --max-model-len=99999: expected an int in [1, 8192]; "
        "prompt has 7 tokens; expected at most --max-model-len - 1\n")


# ---- serve's and generate's engine flags reach the engine's config ------------------------
def _serve_config(*flags):
    from folo_edu.config import EngineConfig

    args = cli.build_parser().parse_args(["serve", *flags])
    return EngineConfig.from_kwargs(args.model, **cli.serve_engine_kwargs(args))


def test_serve_engine_flags_reach_the_config():
    config = _serve_config("--dtype", "bfloat16", "--max-num-batched-tokens", "256",
                           "--no-enable-prefix-caching", "--no-enable-chunked-prefill",
                           "--linear-backend", "torch", "--attention-backend", "sdpa",
                           "--max-num-seqs", "8", "--max-model-len", "512", "--seed", "3",
                           "--enforce-eager")
    mc, cc, sc = config.model_config, config.cache_config, config.scheduler_config
    assert (mc.dtype, mc.max_model_len, mc.seed) == ("bfloat16", 512, 3)
    assert (sc.max_num_batched_tokens, sc.max_num_seqs) == (256, 8)
    assert cc.enable_prefix_caching is False and sc.enable_chunked_prefill is False
    assert (config.linear_backend, config.attention_backend) == ("torch", "sdpa")
    assert config.enforce_eager is True and config.torch_compile is False
    on = _serve_config("--enable-prefix-caching", "--enable-chunked-prefill",
                       "--linear-backend", "numba", "--dtype", "float64")
    assert on.cache_config.enable_prefix_caching is True
    assert on.scheduler_config.enable_chunked_prefill is True
    assert (on.linear_backend, on.model_config.dtype) == ("numba", "float64")


def test_serve_without_engine_flags_keeps_the_engine_defaults():
    from folo_edu.config import EngineConfig

    args = cli.build_parser().parse_args(["serve"])
    kwargs = cli.serve_engine_kwargs(args)
    for unset in ("max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill"):
        assert unset not in kwargs  # left to the engine, not a copy of its default
    ours = _serve_config()
    engine_default = EngineConfig.from_kwargs(None, max_model_len=2048)
    assert ours.cache_config == engine_default.cache_config
    assert ours.scheduler_config == engine_default.scheduler_config
    assert (ours.linear_backend, ours.model_config.dtype) == ("auto", "auto")


def test_serve_passes_the_config_to_the_engine_and_serve(monkeypatch):
    seen = {}

    class FakeEngine:
        def __init__(self, config):
            seen["config"] = config

    monkeypatch.setattr("folo_edu.engine.llm_engine.LLMEngine", FakeEngine)
    monkeypatch.setattr("folo_edu.entrypoints.api_server.serve",
                        lambda engine, name, host, port, **kw: seen.update(
                            engine=engine, name=name, port=port, **kw))
    assert cli.main(["serve", "--port", "0", "--linear-backend", "torch", "--dtype",
                     "float32", "--max-num-batched-tokens", "128",
                     "--no-enable-prefix-caching"]) == 0
    config = seen["config"]
    assert isinstance(seen["engine"], FakeEngine) and seen["name"] == "SmolLM2-135M-Instruct"
    assert config.linear_backend == "torch" and config.model_config.dtype == "float32"
    assert config.scheduler_config.max_num_batched_tokens == 128
    assert config.cache_config.enable_prefix_caching is False


def test_generate_and_chat_pass_linear_backend_to_llm(monkeypatch):
    monkeypatch.undo()  # the real _load_llm, with LLM replaced
    seen = []

    def fake_llm(model, **kwargs):
        seen.append(kwargs)
        raise KeyboardInterrupt  # stop before anything would stream

    monkeypatch.setattr("folo_edu.LLM", fake_llm)
    assert cli.main(["generate", "hi", "--linear-backend", "numba"]) == cli.EXIT_INTERRUPTED
    assert cli.main(["chat", "--linear-backend", "torch"]) == cli.EXIT_INTERRUPTED
    assert [k["linear_backend"] for k in seen] == ["numba", "torch"]
    assert cli.build_parser().parse_args(["generate", "x"]).linear_backend == "auto"


def test_bench_has_no_linear_backend_flag():
    assert "linear_backend" not in {a.dest for a in subparsers()["bench"]._actions}


# ---- quantize --------------------------------------------------------------------------
@pytest.fixture
def no_quantizing(monkeypatch):
    """Fail the test if any layer gets quantized: the flags must be refused before."""
    monkeypatch.setattr("folo_edu.quantization.calibrate.quantize_model",
                        lambda *a, **k: pytest.fail("a layer was quantized"))


@pytest.mark.parametrize("extra, message", [
    (["--group-size", "100000"], "--group-size=100000: expected at most the layer's"),
    (["--group-size", "128"], "--group-size=128: expected at most the layer's 64 input"),
])
def test_quantize_refuses_settings_the_model_cannot_take_before_quantizing(
        capsys, tiny_model_dir, tmp_path, no_quantizing, extra, message):
    argv = ["quantize", "--model", str(tiny_model_dir()), "--out", str(tmp_path / "q"), *extra]
    capsys.readouterr()  # building the tiny model prints a progress bar
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("folo-edu: error: ") and message in err and err.count("\n") == 1, err


def test_quantize_refuses_a_non_empty_out_folder(capsys, tmp_path, no_quantizing):
    (tmp_path / "keep.txt").write_text("mine")
    assert cli.main(["quantize", "--out", str(tmp_path)]) == 2
    assert "--out=" in capsys.readouterr().err and (tmp_path / "keep.txt").exists()


def test_quantize_writes_a_checkpoint_with_a_line_per_layer(capsys, tiny_model_dir, tmp_path):
    import json

    source = tiny_model_dir()
    layers = json.loads((source / "config.json").read_text())["num_hidden_layers"]
    out = tmp_path / "q"
    capsys.readouterr()
    assert cli.main(["quantize", "--model", str(source), "--method", "rtn", "--bits", "8",
                     "--group-size", "-1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines[:layers]] == [
        f"rtn 8-bit: layer {i + 1}/{layers}" for i in range(layers)]
    assert lines[-1].startswith(f"wrote {out}") and "generate --model" in lines[-1]
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (config["bits"], config["group_size"], config["sym"]) == (8, -1, True)


# ---- streamed text, errors and Ctrl-C ----------------------------------------------------
class FakeLLM:
    """Streams the given pieces, then raises ``then`` (if any)."""

    def __init__(self, pieces, then=None):
        self.pieces, self.then = pieces, then

    def stream(self, prompt, params):
        yield from self.pieces
        if self.then is not None:
            raise self.then

    def get_tokenizer(self):
        class Tok:
            def apply_chat_template(self, history, add_generation_prompt, tokenize):
                return [1, 2, 3]

        return Tok()


@pytest.mark.parametrize("then, code, err", [
    (None, 0, ""),
    (ValueError("boom"), 2, "folo-edu: error: boom\n"),
    (KeyboardInterrupt(), 130, "folo-edu: interrupted\n"),
])
def test_generate_output_ends_its_line_before_an_error(capsys, monkeypatch, then, code, err):
    monkeypatch.setattr(cli, "_load_llm", lambda args: FakeLLM([" Paris", "."], then))
    assert cli.main(["generate", "The capital is"]) == code
    out, got_err = capsys.readouterr()
    assert out == "The capital is Paris.\n" and got_err == err


def test_ctrl_c_while_loading_exits_130_without_traceback(capsys, monkeypatch):
    def load(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load_llm", load)
    assert cli.main(["chat"]) == 130
    assert capsys.readouterr() == ("", "folo-edu: interrupted\n")


def test_chat_turns(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_llm", lambda args: FakeLLM(["Hi", " there"]))
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nagain\n\n"))
    assert cli.main(["chat"]) == 0
    assert capsys.readouterr().out == "assistant> Hi there\n" * 2


def test_an_unexpected_error_still_ends_the_line_and_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_llm", lambda args: FakeLLM(["x"], RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["generate", "p"])
    assert capsys.readouterr().out == "px\n"


# ---- bench never overwrites the committed results by default -----------------------------
@pytest.mark.parametrize("argv, expected", [
    (["bench", "--device", "cpu"], r"benchmarks/results/m1_single_cpu-\d{8}-\d{6}\.json"),
    (["bench", "--device", "cpu", "--workload", "offline"],
     r"benchmarks/results/m2_offline_cpu-\d{8}-\d{6}\.json"),
    (["bench", "--device", "cpu", "--output", "benchmarks/results/m1_single_cpu.json"],
     r"benchmarks/results/m1_single_cpu\.json"),  # named: replaced on purpose
    (["bench", "--device", "cpu", "--output", "-"], "-"),
])
def test_bench_output_path(monkeypatch, argv, expected):
    seen = []
    monkeypatch.setattr("folo_edu.bench.run", seen.append)
    assert cli.main(argv) == 0
    assert re.fullmatch(expected, seen[0].output), seen[0].output
    if "--output" not in argv:
        assert not (ROOT / seen[0].output).exists()


# ---- the installed command, in a subprocess ---------------------------------------------
def folo_edu_cmd():
    exe = Path(sys.executable).with_name("folo-edu")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "folo_edu.cli"]


def test_installed_command_reports_a_bad_flag_in_one_line():
    done = subprocess.run([*folo_edu_cmd(), "generate", "hi", "--max-tokens=-3"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 2
    assert done.stderr == "folo-edu: error: --max-tokens=-3: expected an int >= 1\n"
    assert done.stdout == ""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGINT")
def test_sigint_exits_130_without_traceback():
    # A loader that says it started, then waits: Ctrl-C arrives while "loading".
    code = ("import sys, time; from folo_edu import cli\n"
            "def load(args):\n"
            "    print('loading', flush=True); time.sleep(60)\n"
            "cli._load_llm = load\n"
            "sys.exit(cli.main(['generate', 'hi']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        assert proc.stdout.readline() == "loading\n"  # the prompt is echoed after loading
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and err == "folo-edu: interrupted\n"
