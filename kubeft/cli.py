"""The `kubeft` command.

    kubeft dev up|down|status|env     the local stack (Kubernetes + kwok GPU nodes + MinIO + Prometheus)
    kubeft estimate ...               peak GPU memory of a fine-tuning job, with its breakdown
    kubeft onboard NAMESPACE --profile P   a namespace for kubeft: its profile, the operator's Secret read

Each subcommand lives in its own module that exposes ``register(subparsers)``;
the module is imported only if it exists, so the command works with any subset
of the extras installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand modules, in the order `kubeft --help` lists them
SUBCOMMANDS = (
    "kubeft.dev.cli",
    "kubeft.estimate_cli",
    "kubeft_trainer.cli",
    "kubeft.demo",
    "kubeft.onboard",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubeft", description="LLM fine-tuning jobs on Kubernetes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # subcommand not part of this checkout
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
