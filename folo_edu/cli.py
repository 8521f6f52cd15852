"""The ``folo-edu`` command: download | generate | chat | bench."""
from __future__ import annotations

import argparse
import sys

from folo_edu.config import ATTENTION_BACKENDS


def _cmd_download(args) -> int:
    from folo_edu.models.default_model import download_model

    download_model(quiet=False)
    return 0


def _make_llm_and_params(args):
    from folo_edu import LLM, SamplingParams

    llm = LLM(args.model, max_model_len=args.max_model_len, seed=args.seed,
              attention_backend=args.attention_backend, enforce_eager=args.enforce_eager,
              torch_compile=args.torch_compile)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p,
                            max_tokens=args.max_tokens, seed=args.seed)
    return llm, params


def _cmd_generate(args) -> int:
    llm, params = _make_llm_and_params(args)
    print(args.prompt, end="", flush=True)
    for piece in llm.stream(args.prompt, params):
        print(piece, end="", flush=True)
    print()
    return 0


def _cmd_chat(args) -> int:
    """A multi-turn chat on stdin/stdout; an empty line or EOF ends it."""
    from folo_edu.sampling_params import RequestOutputKind

    llm, params = _make_llm_and_params(args)
    tok = llm.get_tokenizer()
    history = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        history.append({"role": "user", "content": line.strip()})
        ids = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):
            ids = list(ids["input_ids"])
        print("assistant> ", end="", flush=True)
        reply = []
        for piece in llm.stream({"prompt_token_ids": ids},
                                params.clone(output_kind=RequestOutputKind.DELTA)):
            reply.append(piece)
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(reply)})


def _cmd_bench(args) -> int:
    """Benchmark folo_edu against transformers; print a table and save a JSON file."""
    from folo_edu.bench import BenchConfig, run

    cfg = BenchConfig(
        workload=args.workload, model=args.model, device=args.device, dtype=args.dtype,
        threads=args.threads, repeats=args.repeats, seed=args.seed, output=args.output,
        num_prompts=args.num_prompts, new_tokens=args.new_tokens,
        num_requests=args.num_requests, min_len=args.min_len, max_len=args.max_len,
        max_num_seqs=args.max_num_seqs,
        hf_batch_size=args.hf_batch_size, hf_static_sample=args.hf_static_sample,
        hf_single_sample=None if args.hf_single_sample == 0 else args.hf_single_sample,
        max_model_len=args.max_model_len, kv_cache=args.kv_cache,
        attention_backend=args.attention_backend)
    run(cfg)
    return 0


def _add_model_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--model", default=None,
                   help="HF folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="auto")
    p.add_argument("--enforce-eager", action="store_true", help="never use CUDA graphs")
    p.add_argument("--torch-compile", action="store_true",
                   help="torch.compile the dense layer work (slow start, see docs/dev/milestone_4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="folo-edu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch and convert the default model; print its folder")
    p.set_defaults(func=_cmd_download)
    p = sub.add_parser("generate", help="complete one prompt, streaming the text")
    p.add_argument("prompt")
    _add_model_args(p, max_tokens=64)
    p.set_defaults(func=_cmd_generate)
    p = sub.add_parser("chat", help="chat with the model (reads lines from stdin)")
    _add_model_args(p, max_tokens=256)
    p.set_defaults(func=_cmd_chat)
    p = sub.add_parser("bench", help="benchmark folo_edu against transformers (M1 single, "
                       "M2 offline); prints a table and saves JSON")
    p.add_argument("--workload", choices=("single", "offline"), default="single",
                   help="single: one request at a time, TTFT and decode tok/s (M1); offline: "
                        "64 requests, continuous vs static batching vs one at a time (M2)")
    p.add_argument("--model", default=None,
                   help="HF folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "auto"),
                   default="float32", help="both engines (auto: folo_edu's choice)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for both engines (default: torch's)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats (default: 3 single, 1 offline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--output", default=None,
                   help="JSON path (default benchmarks/results/m1_single_<device>.json or "
                        "m2_offline_<device>.json; '-' saves nothing)")
    p.add_argument("--num-prompts", type=int, default=5, help="single: prompts (64..200 tokens)")
    p.add_argument("--new-tokens", type=int, default=128, help="single: tokens per prompt")
    p.add_argument("--num-requests", type=int, default=64, help="offline: requests")
    p.add_argument("--min-len", type=int, default=16,
                   help="offline: prompt and output lengths are uniform in [min-len, max-len]")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=64, help="folo_edu: running requests cap")
    p.add_argument("--hf-batch-size", type=int, default=16, help="offline: HF static batch size")
    p.add_argument("--hf-static-sample", type=int, default=None,
                   help="offline: time only this many HF static batches and extrapolate "
                        "(default: all)")
    p.add_argument("--hf-single-sample", type=int, default=6,
                   help="offline: time only K requests one at a time with HF and "
                        "extrapolate by tokens/s (0: all of them)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kv-cache", choices=("paged", "contiguous"), default="paged")
    p.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="auto")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        print(f"folo-edu: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
