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
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "classify": "gliclass_dist.classify_cli",
    "train": "gliclass_dist.train.cli",
    "serve": "gliclass_dist.ray.serve_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gliclass-dist",
        description=(
            "Zero-shot text classification with GLiClass: classify files, fine-tune on a few examples, "
            "or serve a model over HTTP. Run `gliclass-dist COMMAND --help` for each command."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
