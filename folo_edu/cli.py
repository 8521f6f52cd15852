"""The ``folo-edu`` command: download | generate | chat | bench."""
from __future__ import annotations

import argparse
import sys


def _cmd_download(args) -> int:
    from folo_edu.models.default_model import download_model

    download_model(quiet=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="folo-edu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch and convert the default model; print its folder")
    p.set_defaults(func=_cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
