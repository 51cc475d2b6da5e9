"""The ``gliclass-dist`` command line.

    gliclass-dist classify --model REF --labels a,b,c --input in.parquet --output out.parquet
    gliclass-dist train    --base ENCODER_OR_GLICLASS --data train.jsonl --out DIR
    gliclass-dist serve    --model REF --port 8000

Each subcommand lives beside the code it drives and registers itself here through a
``register(subparsers)`` function, imported lazily so that ``classify`` does not import Ray.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback
from collections.abc import Iterable, Sequence
from typing import NoReturn

SUBCOMMANDS = {
    "classify": "gliclass_dist.classify_cli",
    "train": "gliclass_dist.train.cli",
    "serve": "gliclass_dist.ray.serve_cli",
}


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors printed as ``error: ...`` like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser(commands: Iterable[str] = tuple(SUBCOMMANDS)) -> argparse.ArgumentParser:
    """The parser; only ``commands`` are imported and registered in full (the others only by name), so that
    ``classify`` does not wait for ``train``'s imports."""
    parser = Parser(
        prog="gliclass-dist",
        description=(
            "Zero-shot text classification with GLiClass: classify files, fine-tune on a few examples, "
            "or serve a model over HTTP. Run `gliclass-dist COMMAND --help` for each command."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if name not in commands:
            subparsers.add_parser(name, help="(not loaded)")
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra is missing: say which
            stub = subparsers.add_parser(name, help=f"(unavailable: {exc})")
            stub.set_defaults(func=lambda _args, exc=exc: _unavailable(exc))
            continue
        module.register(subparsers)
    return parser


def _unavailable(exc: ImportError) -> int:
    print(f"this command needs an optional dependency: {exc}. Install gliclass-dist[all].", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((arg for arg in argv if arg in SUBCOMMANDS), None)  # the command comes before its options
    parser = build_parser([named] if named else SUBCOMMANDS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:  # a command's own errors are handled there; this is the last resort
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or "no message"
        hint = "" if args.verbose else " (run with -v to see the traceback)"
        print(f"error: unexpected {type(exc).__name__}: {message}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
