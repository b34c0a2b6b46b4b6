"""`python -m dprotonet_core <command> ...`.

Each command lives in its own module under `dprotonet_core/commands/`, exposing
`register(subparsers)` (adds its parser and sets `func`) so the CLI stays one small
dispatcher and every command's arguments sit next to the code that uses them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("train", "project", "predict", "explain", "evaluate", "make_synthetic_rsna", "make_demo",
            "pretrain_backbone", "cross_validate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dprotonet_core", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dprotonet_core.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dprotonet_core.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
