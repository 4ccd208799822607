"""`kubeft demo`: the README's first command.

Brings the local stack up (real control plane, kwok GPU nodes, MinIO, Prometheus) and
shows the simulated GPU nodes the operator will place jobs on.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="bring the local stack up and run the quickstart FineTuneJob")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubeft.dev import cli as dev_cli
    from kubeft.dev import stack

    try:
        stack.up()
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("local stack:", stack.versions_line())
    return dev_cli._up(args)
