"""Fixtures of the end-to-end tests: an operator release (Helm chart) watching a fresh namespace."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubeft import contract, demo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def e2e_namespace(stack: Any, api_client: Any, kubeft_crds: list[str]) -> Iterator[str]:
    """A namespace with the storage Secret, inputs in MinIO and an operator release watching it.

    The CRD is this checkout's (kubeft_crds): Helm installs a chart's CRD only when there is none,
    so a stack that served an older one would keep it."""
    ns = f"e2e-{uuid.uuid4().hex[:8]}"
    demo.upload_inputs(stack)
    demo.prepare_namespace(api_client, stack, ns)
    release = f"kubeft-{ns}"
    helm = [str(stack.bin_dir / "helm"), "--kubeconfig", str(stack.kubeconfig)]
    subprocess.run(
        [
            *helm,
            "upgrade",
            "--install",
            release,
            str(REPO / "charts" / "kubeft"),
            "--namespace",
            ns,
            "--set",
            f"watchNamespaces={{{ns}}}",
            "--set",
            f"storage.endpoint={stack.minio_endpoint}",
            "--set",
            f"storage.bucket={demo.OUTPUT_BUCKET}",
            "--set",
            "admissionPolicies.create=false",  # the kubeft_crds fixture applied them
            "--wait",
            "--timeout",
            "3m",
        ],
        check=True,
        capture_output=True,
    )
    yield ns
    delete_jobs(api_client, ns)
    subprocess.run(
        [*helm, "uninstall", release, "--namespace", ns, "--wait"], check=False, capture_output=True
    )
    client.CoreV1Api(api_client).delete_namespace(ns)


def delete_jobs(api_client: Any, ns: str, timeout: float = 60) -> None:
    """Deletes every FineTuneJob of ``ns`` and waits until they are gone, while their operator
    still runs (a job with spec.cleanup: Delete carries its finalizer until its objects are gone)."""
    custom = client.CustomObjectsApi(api_client)
    custom.delete_collection_namespaced_custom_object(contract.GROUP, contract.VERSION, ns, contract.PLURAL)
    deadline = time.monotonic() + timeout
    while (
        time.monotonic() < deadline
        and custom.list_namespaced_custom_object(contract.GROUP, contract.VERSION, ns, contract.PLURAL)[
            "items"
        ]
    ):
        time.sleep(0.5)


def apply(stack: Any, namespace: str, manifest: dict[str, Any]) -> None:
    subprocess.run(
        [
            str(stack.bin_dir / "kubectl"),
            "--kubeconfig",
            str(stack.kubeconfig),
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
        ],
        input=yaml.safe_dump(manifest),
        text=True,
        check=True,
        capture_output=True,
    )


def wait_status(custom_objects: Any, ns: str, name: str, done: Any, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = custom_objects.get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, ns, contract.PLURAL, name
        )
        status = job.get("status") or {}
        if done(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"{ns}/{name}: status never got there: {status}")
