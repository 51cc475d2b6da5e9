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

from gliclass_dist import __version__

SUBCOMMANDS = {
    "classify": "gliclass_dist.classify_cli",
    "train": "gliclass_dist.train.cli",
    "calibrate": "gliclass_dist.train.cli",
    "suggest-thresholds": "gliclass_dist.train.cli",
    "serve": "gliclass_dist.ray.serve_cli",
    "estimate": "gliclass_dist.estimate",
}
# What `gliclass-dist --help` says of each command without importing it (a command's module may import torch).
SUMMARIES = {
    "classify": "classify a file of texts (parquet, csv or jsonl) into a parquet file",
    "train": "fine-tune a GLiClass model (few-shot supervised, or PPO from partial labels)",
    "calibrate": "fit post-hoc score calibration on a few labelled rows and save it beside the model",
    "suggest-thresholds": "per-label thresholds from a few labelled rows, written into a label-set file for jobs",
    "serve": "serve a model over HTTP with Ray Serve (dynamic batching, limits, optional auth)",
    "estimate": "measure a job's rate on a sample here and project its core-hours (and GPU-hours)",
}


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors printed as ``error: ...`` like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_command(subparsers: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    """Register subcommand ``name``: its one-line help is ``SUMMARIES[name]``; ``description`` heads its
    ``--help``, rewrapped when it is one paragraph, laid out as written (a module docstring) otherwise."""
    formatter = argparse.RawDescriptionHelpFormatter if "\n" in description else argparse.HelpFormatter
    return subparsers.add_parser(name, help=SUMMARIES[name], description=description, formatter_class=formatter)


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = {SUBCOMMANDS[name] for name in commands}
    for name, module_name in SUBCOMMANDS.items():
        if name in subparsers.choices:  # registered by an earlier command's module (one module, several commands)
            continue
        if module_name not in wanted:
            subparsers.add_parser(name, help=SUMMARIES.get(name, f"run `{parser.prog} {name} --help`"))
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
    parser = build_parser([named] if named else ())  # --help / --version import no command (nor torch)
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
