"""The ``folo-edu`` command: download | generate | chat | bench."""
from __future__ import annotations

import argparse
import sys


def _cmd_download(args) -> int:
    from folo_edu.models.default_model import download_model

    download_model(quiet=False)
    return 0


def _make_llm_and_params(args):
    from folo_edu import LLM, SamplingParams

    llm = LLM(args.model, max_model_len=args.max_model_len, seed=args.seed)
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


def _add_model_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--model", default=None,
                   help="HF folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)


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
