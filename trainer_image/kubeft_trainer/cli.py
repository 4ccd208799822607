"""`kubeft train --config job.yaml`: run a job locally with the same code the trainer pod runs."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Adds the `train` subcommand to the `kubeft` command."""
    from kubeft_trainer.__main__ import add_arguments

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="run a fine-tuning job locally (same code as the trainer pod)",
        description="Run a FineTuneJob's training locally: checkpoints, metrics and exports as in the pod.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kubeft_trainer.__main__ import run_from_args

    if args.config is None:
        raise SystemExit("kubeft train: --config FILE is required")
    return run_from_args(args)
