"""`kubeft dev`: the local stack for development, the demo and the tests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kubeft import contract


def register(sub: Any) -> None:
    parser = sub.add_parser("dev", help="the local stack: Kubernetes with GPU nodes, MinIO, Prometheus")
    dev = parser.add_subparsers(dest="dev_command", metavar="ACTION", required=True)
    dev.add_parser("up", help="build what is missing and start the stack (no-op if it runs)").set_defaults(
        func=_up
    )
    dev.add_parser("down", help="stop the stack and remove its state").set_defaults(func=_down)
    dev.add_parser("status", help="each component's process and health").set_defaults(func=_status)
    dev.add_parser("env", help='print shell exports (eval "$(kubeft dev env)")').set_defaults(func=_env)
    dev.add_parser("nodes", help="the simulated nodes and their GPUs").set_defaults(func=_nodes)
    dev.add_parser("versions", help="each component's version").set_defaults(func=_versions)


def _up(args: argparse.Namespace) -> int:
    from kubeft.dev import stack

    try:
        info = stack.up()
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kubeconfig: {info.kubeconfig}")
    print(f"MinIO:      {info.minio_endpoint} (access key {info.minio_access_key})")
    print(f"Prometheus: {info.prometheus_url}")
    print(f"env file:   source {info.env_file}")
    print()
    return _nodes(args)


def _down(args: argparse.Namespace) -> int:
    from kubeft.dev import stack

    stack.down()
    return 0


def _status(args: argparse.Namespace) -> int:
    from kubeft.dev import stack

    states = stack.status()
    for name, state in states.items():
        print(f"{name:<24} {state}")
    return 0 if all(s.startswith("healthy") for s in states.values()) else 1


def _env(args: argparse.Namespace) -> int:
    from kubeft.dev import stack

    info = stack.info()
    if not info.env_file.exists():
        print("error: the local stack is not up; run: kubeft dev up", file=sys.stderr)
        return 1
    print(info.env_file.read_text(), end="")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from kubeft.dev import stack

    for name, version in stack.versions().items():
        print(f"{name:<24} {version}")
    return 0


def _nodes(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    from kubeft.dev import stack

    info = stack.info()
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(info.kubeconfig), client_configuration=configuration)
    core = client.CoreV1Api(client.ApiClient(configuration))
    rows = [("NAME", "STATUS", "GPU PRODUCT", "GPU MEMORY (MiB)", "GPUS")]
    for node in core.list_node().items:
        labels = node.metadata.labels or {}
        ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
        rows.append(
            (
                node.metadata.name,
                "Ready" if ready else "NotReady",
                labels.get(contract.LABEL_GPU_PRODUCT, "-"),
                labels.get(contract.LABEL_GPU_MEMORY, "-"),
                (node.status.allocatable or {}).get(contract.RESOURCE_GPU, "0"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
