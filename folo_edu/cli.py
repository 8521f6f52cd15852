"""The folo-edu command: download | generate | chat | serve | bench | check | quantize.

Every flag is checked before anything slow happens (importing the engine, loading the
model, running a benchmark), and a bad one ends the command with one line naming the
flag, the value and what is expected, and exit code 2. Ctrl-C ends it with code 130.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time

DESCRIPTION = ("An educational vLLM-style inference engine. Commands: download (fetch the "
               "default model), generate (complete a prompt), chat (talk on stdin/stdout), "
               "serve (an OpenAI-compatible HTTP server), bench (time folo_edu against transformers), check (run a learner's notebook "
               "and report its lab checks), quantize (write a GPTQ or RTN checkpoint).")
EPILOG = "Each command has its own flags: folo-edu COMMAND --help."

EXIT_USAGE = 2  # a bad flag or value (argparse's code too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class UsageError(Exception):
    """A caller's mistake: printed as one line, exit code 2."""


class _Console:
    """stdout for generated text; remembers whether the cursor is mid-line, so that an
    error or Ctrl-C that follows streamed text starts on a line of its own."""

    def __init__(self):
        self.mid_line = False

    def write(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        if self.mid_line:
            self.write("\n")


_console = _Console()


# ---- checking flags before anything loads ---------------------------------------------
# dest -> (test, what is expected). Flags whose default is None skip the test when unset.
_CHECKS = {
    "max_tokens": (lambda v: v >= 1, "an int >= 1"),
    "temperature": (lambda v: 0 <= v < math.inf, "a float >= 0 (0 means greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "max_model_len": (lambda v: v >= 1, "an int >= 1"),
    "seed": (lambda v: v >= 0, "an int >= 0"),
    "threads": (lambda v: v >= 1, "an int >= 1"),
    "repeats": (lambda v: v >= 1, "an int >= 1"),
    "num_prompts": (lambda v: v >= 1, "an int >= 1"),
    "new_tokens": (lambda v: v >= 1, "an int >= 1"),
    "num_requests": (lambda v: v >= 1, "an int >= 1"),
    "rates": (lambda v: all(r > 0 for r in v), "requests/s > 0 (inf: all at once)"),
    "output_len": (lambda v: v >= 1, "an int >= 1"),
    "min_len": (lambda v: v >= 1, "an int >= 1"),
    "max_len": (lambda v: v >= 1, "an int >= 1"),
    "max_num_seqs": (lambda v: v >= 1, "an int >= 1"),
    "max_num_batched_tokens": (lambda v: v >= 1, "an int >= 1"),
    "max_pending": (lambda v: v >= 1, "an int >= 1"),
    "hf_batch_size": (lambda v: v >= 1, "an int >= 1"),
    "hf_static_sample": (lambda v: v >= 1, "an int >= 1"),
    "hf_single_sample": (lambda v: v >= 0, "an int >= 0 (0: all of them)"),
    "long_prompt_len": (lambda v: 1 <= v < 2048, "an int in [1, 2047]"),
    "budgets": (lambda v: all(b >= 9 for b in v), "ints >= 9 (one token per running request)"),
    "group_size": (lambda v: v == -1 or v >= 1, "an int >= 1, or -1 (one group per output "
                                                "channel)"),
    "num_samples": (lambda v: v >= 1, "an int >= 1"),
    "seq_len": (lambda v: v >= 2, "an int >= 2"),
}


def _flag(parser: argparse.ArgumentParser, dest: str) -> str:
    """The option string (--max-tokens) of a parsed attribute (max_tokens); for an on/off
    pair the 'on' one (--enable-prefix-caching, not --no-enable-prefix-caching)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            on = [o for o in action.option_strings if not o.startswith("--no-")]
            return (on or action.option_strings)[-1]
    return "--" + dest.replace("_", "-")


def check_args(args, parser: argparse.ArgumentParser) -> None:
    """Raise UsageError naming the flag for the first value out of range."""
    for dest, (ok, expected) in _CHECKS.items():
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            raise UsageError(f"{_flag(parser, dest)}={value}: expected {expected}")
    if getattr(args, "min_len", None) is not None and args.min_len > args.max_len:
        raise UsageError(f"--min-len={args.min_len}: expected <= --max-len={args.max_len}")


def _library_error_to_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """'SamplingParams.top_p=1.5: expected ...' -> '--top-p=1.5: expected ...', and a bare
    'max_model_len' -> '--max-model-len', for the fields that are this command's flags."""
    dests = {a.dest for a in parser._actions if a.option_strings}

    def flag(m: re.Match) -> str:
        return f"{_flag(parser, m.group(1))}=" if m.group(1) in dests else m.group(0)

    message = re.sub(r"\b[A-Z]\w*\.(\w+)=", flag, message)
    for dest in sorted(d for d in dests if "_" in d):  # max_model_len -> --max-model-len
        message = re.sub(rf"(?<![\w.-]){dest}\b", _flag(parser, dest), message)
    return message


# ---- the commands -----------------------------------------------------------------------
def _cmd_download(args) -> int:
    from folo_edu.models.default_model import download_model

    download_model(quiet=False)
    return 0


def _sampling_params(args):
    from folo_edu import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p,
                          max_tokens=args.max_tokens, seed=args.seed)


def _load_llm(args):
    """The slow part: find (maybe convert) the checkpoint and load the weights."""
    from folo_edu import LLM

    return LLM(args.model, max_model_len=args.max_model_len, seed=args.seed,
               attention_backend=args.attention_backend, linear_backend=args.linear_backend,
               enforce_eager=args.enforce_eager, torch_compile=args.torch_compile)


def _cmd_generate(args) -> int:
    params = _sampling_params(args)  # bad values fail here, before the model loads
    llm = _load_llm(args)
    _console.write(args.prompt)
    for piece in llm.stream(args.prompt, params):
        _console.write(piece)
    _console.write("\n")
    return 0


def _cmd_chat(args) -> int:
    """A multi-turn chat on stdin/stdout; an empty line or EOF ends it."""
    from folo_edu.sampling_params import RequestOutputKind

    params = _sampling_params(args).clone(output_kind=RequestOutputKind.DELTA)
    llm = _load_llm(args)
    tok = llm.get_tokenizer()
    history = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            _console.write("you> ")
        line = sys.stdin.readline()
        _console.mid_line = False  # the user's Enter ended the line
        if not line.strip():
            return 0
        history.append({"role": "user", "content": line.strip()})
        ids = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):
            ids = list(ids["input_ids"])
        _console.write("assistant> ")
        reply = []
        for piece in llm.stream({"prompt_token_ids": ids}, params):
            reply.append(piece)
            _console.write(piece)
        _console.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def default_bench_output(workload: str, device: str) -> str:
    """A new file per run, so the committed benchmarks/results/*.json stay as they are:
    benchmarks/results/m1_single_cpu-20250131-142501.json."""
    name = {"single": "m1_single", "offline": "m2_offline", "latency": "m5_latency",
            "prefix": "m6_prefix", "serving": "serving", "cpu-speed": "cpu_speed"}[workload]
    return f"benchmarks/results/{name}_{device}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _cmd_bench(args) -> int:
    """Benchmark folo_edu against transformers; print a table and save a JSON file."""
    from folo_edu.bench import BenchConfig, run
    from folo_edu.bench.machine import resolve_bench_device

    device = resolve_bench_device(args.device)  # --device cuda without a GPU fails now
    output = args.output or default_bench_output(args.workload, device.type)
    if args.workload == "latency":
        return _cmd_bench_latency(args, output)
    if args.workload == "prefix":
        return _cmd_bench_prefix(args, output)
    if args.workload == "serving":
        return _cmd_bench_serving(args, output)
    if args.workload == "cpu-speed":
        return _cmd_bench_cpu_speed(args, output)
    cfg = BenchConfig(
        workload=args.workload, model=args.model, device=args.device, dtype=args.dtype,
        threads=args.threads, repeats=args.repeats, seed=args.seed, output=output,
        num_prompts=args.num_prompts, new_tokens=args.new_tokens,
        num_requests=args.num_requests or 64, min_len=args.min_len, max_len=args.max_len,
        max_num_seqs=args.max_num_seqs,
        hf_batch_size=args.hf_batch_size, hf_static_sample=args.hf_static_sample,
        hf_single_sample=None if args.hf_single_sample == 0 else args.hf_single_sample,
        max_model_len=args.max_model_len, kv_cache=args.kv_cache,
        attention_backend=args.attention_backend)
    run(cfg)
    return 0


def _cmd_bench_cpu_speed(args, output: str) -> int:
    """CPU speed: 1 and 2 threads, idle and beside a busy torch process (issue 16)."""
    from folo_edu.bench import cpu_speed

    cfg = cpu_speed.CpuSpeedConfig(model=args.model, seed=args.seed, output=output)
    if args.threads:
        cfg.threads = (args.threads,)
    if args.repeats:
        cfg.repeats = args.repeats
    if args.num_requests:
        cfg.num_requests = args.num_requests
    cpu_speed.run(cfg)
    return 0


def _cmd_bench_latency(args, output: str) -> int:
    """M5: running decodes while a long prompt arrives, chunked against unchunked."""
    from folo_edu.bench import latency

    cfg = latency.LatencyConfig(
        model=args.model, device=args.device, dtype=args.dtype,
        threads=(1, 2) if args.threads is None else (args.threads,),
        repeats=args.repeats or 3, seed=args.seed, output=output,
        long_prompt_len=args.long_prompt_len,
        budgets=tuple(args.budgets) if args.budgets else latency.LatencyConfig.budgets,
        attention_backend=args.attention_backend)
    latency.run(cfg)
    return 0


def _cmd_check(args) -> int:
    """Run a learner's notebook and print each lab check's result; 0 only if all pass."""
    from pathlib import Path

    if not Path(args.notebook).is_file():
        raise UsageError(f"{args.notebook}: no such notebook")
    if args.timeout < 1:
        raise UsageError(f"--timeout={args.timeout}: expected an int >= 1")
    from folo_edu.labs.grading import grade_notebook

    print(f"running {args.notebook} (a fresh python3 kernel, up to {args.timeout} s a cell)",
          flush=True)
    grade = grade_notebook(args.notebook, timeout=args.timeout, output=args.output)
    print(grade.report())
    return 0 if grade.passed else 1


def serve_engine_kwargs(args) -> dict:
    """The LLMEngine.from_kwargs keywords of folo-edu serve's engine flags. A flag left
    unset (None) is left out, so the engine's own default applies (prefix caching on
    with the paged cache, chunked prefill on, the token budget chosen from them)."""
    kwargs = dict(max_model_len=args.max_model_len, seed=args.seed, dtype=args.dtype,
                  attention_backend=args.attention_backend,
                  linear_backend=args.linear_backend, enforce_eager=args.enforce_eager,
                  torch_compile=args.torch_compile, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens,
                  enable_prefix_caching=args.enable_prefix_caching,
                  enable_chunked_prefill=args.enable_chunked_prefill)
    return {k: v for k, v in kwargs.items() if v is not None}


def _cmd_serve(args) -> int:
    """An OpenAI-compatible server (folo_edu/entrypoints) until SIGINT/SIGTERM."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port={args.port}: expected an int in [0, 65535]")
    from folo_edu.config import EngineConfig

    # The configs are plain data: their field checks run now, before anything loads.
    config = EngineConfig.from_kwargs(args.model, **serve_engine_kwargs(args))
    from folo_edu.engine.llm_engine import LLMEngine
    from folo_edu.entrypoints.api_server import serve
    from folo_edu.models.default_model import DEFAULT_MODEL_NAME

    engine = LLMEngine(config)
    name = args.served_model_name or args.model or DEFAULT_MODEL_NAME
    serve(engine, name, args.host, args.port, api_key=args.api_key,
          max_pending=args.max_pending)
    return 0


def _cmd_bench_prefix(args, output: str) -> int:
    """M6: prefix caching: cached vs cold TTFT, a shared system prompt, hit rates."""
    from folo_edu.bench import prefix

    cfg = prefix.PrefixConfig(
        model=args.model, device=args.device, dtype=args.dtype,
        threads=(1, 2) if args.threads is None else (args.threads,),
        repeats=args.repeats or 3, seed=args.seed, output=output,
        num_requests=args.num_requests or 64, attention_backend=args.attention_backend)
    prefix.run(cfg)
    return 0


def _cmd_bench_serving(args, output: str) -> int:
    """Serving: Poisson arrivals at several rates against folo-edu serve in a child."""
    from folo_edu.bench import serving

    defaults = serving.ServingConfig()
    cfg = serving.ServingConfig(
        model=args.model, threads=args.threads or defaults.threads,
        rates=tuple(args.rates) if args.rates else defaults.rates,
        num_requests=args.num_requests or defaults.num_requests,
        output_len=args.output_len or defaults.output_len, seed=args.seed,
        max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        attention_backend=args.attention_backend,
        max_num_batched_tokens=args.max_num_batched_tokens, output=output)
    serving.check_config(cfg)  # before the server starts
    serving.run(cfg)
    return 0


def _cmd_quantize(args) -> int:
    """M7: quantize a float checkpoint to a GPTQ folder that generate --model loads."""
    from pathlib import Path

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out={args.out}: is a file; expected a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out={args.out}: the folder is not empty; expected a new or "
                         "empty folder")
    from folo_edu.quantization import GPTQConfig, quantize

    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    try:  # every setting is checked against the model before any layer is quantized
        GPTQConfig(args.bits, args.group_size, args.desc_act, not args.asym, args.damp_percent)
        folder = quantize(args.model, out, method=args.method, bits=args.bits,
                          group_size=args.group_size, desc_act=args.desc_act,
                          sym=not args.asym, num_samples=args.num_samples,
                          seq_len=args.seq_len, damp_percent=args.damp_percent,
                          seed=args.seed, progress=progress)
    except ValueError as e:  # quantization_config.group_size=... -> --group-size=...
        raise UsageError(re.sub(r"quantization_config\.(\w+)=",
                                lambda m: f"--{m.group(1).replace('_', '-')}=", str(e))) from e
    print(f"wrote {folder}; run it with: folo-edu generate --model {folder} PROMPT")
    return 0


# ---- the parser ----------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default: '(default: X)' unless the help already says it, and
    '(default: off)' for on/off switches."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block) and exit code 2."""

    def error(self, message):
        bad = re.fullmatch(r"argument (\S+): invalid (\w+) value: (.*)", message)
        if bad:  # 'argument --max-tokens: invalid int value: 'x'' -> our usual form
            flag, kind, value = bad.groups()
            message = f"{flag}={value}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_model_args(p: argparse.ArgumentParser, max_tokens: int, backends) -> None:
    p.add_argument("--model", default=None,
                   help="HF folder, .gguf file or hub id (default: SmolLM2-135M-Instruct, "
                        "fetched by folo-edu download)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature, >= 0; 0 means greedy")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: keep the most likely tokens up to this total "
                        "probability, in (0, 1]; 1 keeps all")
    p.add_argument("--max-tokens", type=int, default=max_tokens,
                   help="most tokens to generate per answer, >= 1")
    p.add_argument("--max-model-len", type=int, default=2048,
                   help="longest prompt + answer in tokens, >= 1")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the engine and of the sampling, >= 0")
    p.add_argument("--attention-backend", choices=backends, default="auto",
                   help="attention implementation; auto picks the best one that runs here")
    _add_linear_backend_arg(p)
    p.add_argument("--enforce-eager", action="store_true", help="never use CUDA graphs")
    p.add_argument("--torch-compile", action="store_true",
                   help="torch.compile the dense layer work (slow start, see "
                        "docs/dev/milestone_4)")


def _add_linear_backend_arg(p: argparse.ArgumentParser) -> None:
    from folo_edu.config import LINEAR_BACKENDS

    p.add_argument("--linear-backend", choices=LINEAR_BACKENDS, default="auto",
                   help="who multiplies a decode step's few rows by the weights: torch, or "
                        "folo_edu's Numba CPU kernel; auto picks numba on a CPU when it is "
                        "installed, else torch")


def build_parser() -> argparse.ArgumentParser:
    from folo_edu.config import ATTENTION_BACKENDS, DTYPES

    fmt = dict(formatter_class=_HelpFormatter)
    parser = _Parser(prog="folo-edu", description=DESCRIPTION, epilog=EPILOG, **fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    help_ = "fetch and convert the default model; print its folder"
    p = sub.add_parser("download", help=help_, description=help_, **fmt)
    p.set_defaults(func=_cmd_download, command_parser=p)

    help_ = "complete one prompt, streaming the text"
    p = sub.add_parser("generate", help=help_, description=help_, **fmt)
    p.add_argument("prompt", help="the text to complete")
    _add_model_args(p, 64, ATTENTION_BACKENDS)
    p.set_defaults(func=_cmd_generate, command_parser=p)

    help_ = "chat with the model: one line from stdin per turn; an empty line or EOF ends it"
    p = sub.add_parser("chat", help=help_, description=help_, **fmt)
    _add_model_args(p, 256, ATTENTION_BACKENDS)
    p.set_defaults(func=_cmd_chat, command_parser=p)

    help_ = ("serve an OpenAI-compatible API (/v1/completions, /v1/chat/completions, "
             "/v1/models, /health, /metrics) until Ctrl-C or SIGTERM")
    p = sub.add_parser("serve", help=help_, description=help_, **fmt)
    p.add_argument("--model", default=None,
                   help="HF folder, .gguf file or hub id (default: SmolLM2-135M-Instruct, "
                        "fetched by folo-edu download)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every /v1 route "
                        "(default: no key)")
    p.add_argument("--served-model-name", default=None,
                   help="the model name clients send (default: --model, or "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--max-pending", type=int, default=1024,
                   help="most unfinished requests; more get HTTP 429")
    p.add_argument("--max-model-len", type=int, default=2048,
                   help="longest prompt + answer in tokens, >= 1")
    p.add_argument("--max-num-seqs", type=int, default=64,
                   help="most requests in one batch")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="most tokens in one engine step, >= --max-num-seqs (default: the "
                        "engine's: 2048, or without chunked prefill the larger of 2048 and "
                        "--max-model-len)")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="reuse the KV blocks of prompt prefixes already computed (default: "
                        "the engine's, on)")
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="split long prompts over several steps; off, a whole prompt must "
                        "fit in --max-num-batched-tokens (default: the engine's, on)")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="weights and activations; auto: float32 on a CPU, on a GPU the "
                        "checkpoint's (float32 checkpoints run in bfloat16 or float16)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the engine (requests without a seed use it)")
    p.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="auto",
                   help="attention implementation; auto picks the best one that runs here")
    _add_linear_backend_arg(p)
    p.add_argument("--enforce-eager", action="store_true", help="never use CUDA graphs")
    p.add_argument("--torch-compile", action="store_true",
                   help="torch.compile the dense layer work (slow start)")
    p.set_defaults(func=_cmd_serve, command_parser=p)

    help_ = ("benchmark folo_edu against transformers (M1 single, M2 offline); prints a "
             "table and saves JSON")
    p = sub.add_parser("bench", help=help_, description=help_, **fmt)
    p.add_argument("--workload", choices=("single", "offline", "latency", "prefix", "serving",
                                          "cpu-speed"),
                   default="single",
                   help="single: one request at a time, TTFT and decode tok/s (M1); offline: "
                        "64 requests, continuous vs static batching vs one at a time (M2); "
                        "latency: ITL of running decodes while a long prompt arrives, "
                        "chunked vs unchunked prefill (M5); prefix: TTFT with a cached "
                        "1,024-token prefix vs cold, requests sharing a 512-token system "
                        "prompt with caching on/off vs transformers, hit rates (M6); "
                        "serving: folo-edu serve in a child process, streaming completions "
                        "arriving as a Poisson process at several rates, TTFT/ITL p50/p99 "
                        "and throughput per rate; cpu-speed: 16 requests at 1 and 2 threads, "
                        "idle and beside a busy torch process, against static batches, "
                        "transformers' continuous batching and one at a time, plus the "
                        "64-request decode step's MFU")
    p.add_argument("--model", default=None,
                   help="HF folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "auto"),
                   default="float32", help="both engines (auto: folo_edu's choice)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for both engines (default: torch's; latency and "
                        "prefix: 1 and 2; serving: the server's, 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats (default: 3 single, 1 offline, 3 latency, 3 prefix)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--output", default=None,
                   help="JSON path; '-' saves nothing (default: a new timestamped file, "
                        "e.g. benchmarks/results/m1_single_cpu-20250131-142501.json, so "
                        "that the committed results change only when named here)")
    p.add_argument("--num-prompts", type=int, default=5, help="single: prompts (64..200 tokens)")
    p.add_argument("--new-tokens", type=int, default=128, help="single: tokens per prompt")
    p.add_argument("--num-requests", type=int, default=None,
                   help="offline: requests (default 64); prefix: requests sharing the "
                        "system prompt (default 64); serving: requests per rate (default 16)")
    p.add_argument("--rates", type=float, nargs="+", default=None,
                   help="serving: request rates to sweep, requests/s; inf sends all at once "
                        "(default: 0.25 0.5 1 2)")
    p.add_argument("--output-len", type=int, default=None,
                   help="serving: tokens per request (default: 32)")
    p.add_argument("--min-len", type=int, default=16,
                   help="offline: prompt and output lengths are uniform in [min-len, max-len]")
    p.add_argument("--max-len", type=int, default=256, help="offline: see --min-len")
    p.add_argument("--max-num-seqs", type=int, default=64, help="folo_edu: running requests cap")
    p.add_argument("--hf-batch-size", type=int, default=16, help="offline: HF static batch size")
    p.add_argument("--hf-static-sample", type=int, default=None,
                   help="offline: time only this many HF static batches and extrapolate "
                        "(default: all)")
    p.add_argument("--hf-single-sample", type=int, default=6,
                   help="offline: time only K requests one at a time with HF and "
                        "extrapolate by tokens/s (0: all of them)")
    p.add_argument("--max-model-len", type=int, default=1024,
                   help="folo_edu: longest prompt + output in tokens (latency: always "
                        "2048)")
    p.add_argument("--long-prompt-len", type=int, default=1500,
                   help="latency: tokens of the prompt that arrives while 8 requests decode")
    p.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="latency: chunked max_num_batched_tokens to sweep "
                        "(default: 64 128 256 512 1024 2048)")
    p.add_argument("--kv-cache", choices=("paged", "contiguous"), default="paged",
                   help="folo_edu: KV cache layout")
    p.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="auto",
                   help="folo_edu: attention implementation")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="serving: the server's token budget per step, >= --max-num-seqs "
                        "(default: the engine's, 2048)")
    p.set_defaults(func=_cmd_bench, command_parser=p)

    help_ = ("run a learner's notebook top to bottom and report every lab check: Correct, "
             "Not answered yet or Not right yet; exit code 0 only if all are correct")
    p = sub.add_parser("check", help=help_, description=help_, **fmt)
    p.add_argument("notebook", help="the .ipynb file to run (it is not changed)")
    p.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    p.add_argument("--output", default=None,
                   help="save the executed notebook here (default: not saved)")
    p.set_defaults(func=_cmd_check, command_parser=p)

    help_ = ("quantize a model's linear layers to a GPTQ checkpoint (Hugging Face layout) "
             "with GPTQ or round-to-nearest; one progress line per decoder layer")
    p = sub.add_parser("quantize", help=help_, description=help_, **fmt)
    p.add_argument("--out", required=True, help="folder to write the checkpoint to (new or "
                                                "empty; required, no default)")
    p.add_argument("--model", default=None,
                   help="float HF folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--method", choices=("gptq", "rtn"), default="gptq",
                   help="gptq: calibrated, error-compensating (Frantar et al. 2022); rtn: "
                        "round each weight to nearest, no calibration")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4, help="bits per weight")
    p.add_argument("--group-size", type=int, default=128,
                   help="input features sharing one scale and zero point; -1: one group per "
                        "output channel")
    p.add_argument("--desc-act", action="store_true",
                   help="act-order: GPTQ quantizes the input features with the largest "
                        "Hessian diagonal first")
    p.add_argument("--asym", action="store_true",
                   help="asymmetric grid (a zero point per group) instead of symmetric")
    p.add_argument("--num-samples", type=int, default=128,
                   help="gptq: calibration windows of the standard library's docstrings "
                        "(the evaluation text, pydoc_data.topics, is left out of them)")
    p.add_argument("--damp-percent", type=float, default=0.01,
                   help="gptq: dampening added to the Hessian's diagonal, as a share of its "
                        "mean, in (0, 1); docs/dev/milestone_7.md measured 0.1 better here")
    p.add_argument("--seq-len", type=int, default=512, help="gptq: tokens per calibration window")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration windows' offsets, >= 0")
    p.set_defaults(func=_cmd_quantize, command_parser=p)
    return parser


def _error(message: str) -> int:
    _console.end_line()
    print(f"folo-edu: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    _console.mid_line = False
    command = None  # the subcommand's parser, whose flags errors are named after
    try:
        args = build_parser().parse_args(argv)
        command = args.command_parser
        check_args(args, command)
        return args.func(args)
    except UsageError as e:
        return _error(str(e))
    except (ValueError, TypeError) as e:  # a caller's mistake found by the library
        return _error(_library_error_to_flags(str(e), command) if command else str(e))
    except KeyboardInterrupt:
        _console.end_line()
        print("folo-edu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException:
        _console.end_line()  # a bug's traceback, at least on a line of its own
        raise


if __name__ == "__main__":
    sys.exit(main())
