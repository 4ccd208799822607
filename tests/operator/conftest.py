"""Fixtures of the operator tests: FineTuneJob manifests, a running operator (KopfRunner), waiting."""

from __future__ import annotations

import base64
import copy
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from kubeft import contract

FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"
SECRET = "storage-creds"  # the Secret the manifests in data/ reference
DATA = Path(__file__).resolve().parent / "data"


def job_manifest(name: str = "job", **spec: Any) -> dict[str, Any]:
    """A valid FineTuneJob (tests/operator/data/minimal.yaml) with ``spec`` keys replaced."""
    doc = yaml.safe_load((DATA / "minimal.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def shape(name: str) -> dict[str, Any]:
    """``spec.model.architecture`` of a known shape (tests/operator/data/shapes.yaml)."""
    shapes: dict[str, dict[str, Any]] = yaml.safe_load((DATA / "shapes.yaml").read_text())
    return shapes[name]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Polls ``predicate`` until it returns something truthy; fails with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The condition of ``type_`` in an object's status."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


@pytest.fixture()
def ftj() -> SimpleNamespace:
    """The helpers above, for test modules (pytest runs with --import-mode=importlib)."""
    return SimpleNamespace(job_manifest=job_manifest, shape=shape, wait_for=wait_for, condition=condition)


@pytest.fixture()
def crds(kubeft_crds: list[str]) -> list[str]:
    return kubeft_crds


@pytest.fixture()
def jobs(custom_objects: Any, namespace: str, crds: list[str]) -> Any:
    """Create/get/patch/delete FineTuneJobs in the test's namespace."""

    class Jobs:
        ns = namespace

        def create(self, body: dict[str, Any]) -> dict[str, Any]:
            obj: dict[str, Any] = custom_objects.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, body
            )
            return obj

        def get(self, name: str) -> dict[str, Any]:
            obj: dict[str, Any] = custom_objects.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
            )
            return obj

        def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
            obj: dict[str, Any] = custom_objects.patch_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, body
            )
            return obj

        def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
            obj: dict[str, Any] = custom_objects.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, {"status": status}
            )
            return obj

        def delete(self, name: str) -> None:
            custom_objects.delete_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
            )

    return Jobs()


@pytest.fixture()
def credentials(core_v1: Any, namespace: str, stack: Any) -> dict[str, str]:
    """The storage Secret (MinIO root credentials of the stack, plus a fake hfToken)."""
    from kubernetes import client

    values = {
        contract.SECRET_ACCESS_KEY: stack.minio_access_key,
        contract.SECRET_SECRET_KEY: stack.minio_secret_key,
        contract.SECRET_HF_TOKEN: f"hf_{uuid.uuid4().hex}",
    }
    core_v1.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=SECRET),
            data={k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        ),
    )
    return values


@pytest.fixture()
def operator_env(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment of an operator run against the stack: fast ticks, the fake trainer."""
    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))
    monkeypatch.setenv("KUBEFT_RECONCILE_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("KUBEFT_METRICS_PORT", "0")
    monkeypatch.setenv("KUBEFT_LIVENESS_PORT", "0")
    monkeypatch.setenv("KUBEFT_DEFAULT_STORAGE_ENDPOINT", stack.minio_endpoint)
    monkeypatch.setenv("KUBEFT_TRAINER_COMMAND", f"{sys.executable} {FAKE_TRAINER}")


@pytest.fixture()
def run_operator(
    operator_env: None, namespace: str, core_v1: Any, s3_dataset: Callable[[str], str]
) -> Iterator[Callable[[], Any]]:
    """A factory of context managers running the operator on the test's namespace (KopfRunner).

    The minimal job's dataset exists in MinIO (the operator waits for a missing one).
    Afterwards the namespace's pods are force-deleted, freeing the shared GPU nodes at once.
    """
    s3_dataset(job_manifest()["spec"]["dataset"]["source"])
    from kopf.testing import KopfRunner
    from kubernetes import client

    def runner() -> Any:
        return KopfRunner(["run", "--standalone", "-n", namespace, "-m", "kubeft_operator.main"])

    yield runner
    # with no operator left to remove kopf's finalizer, the namespace could never be deleted
    api = client.CustomObjectsApi(core_v1.api_client)
    for obj in api.list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL
    )["items"]:
        api.patch_namespaced_custom_object(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, obj["metadata"]["name"],
            {"metadata": {"finalizers": None}},
        )  # fmt: skip
    batch = client.BatchV1Api(core_v1.api_client)
    for job in batch.list_namespaced_job(namespace).items:
        batch.delete_namespaced_job(job.metadata.name, namespace, propagation_policy="Background")
    from kubernetes.client.rest import ApiException

    for pod in core_v1.list_namespaced_pod(namespace).items:
        try:
            # the Job controller's tracking finalizer would keep a deleted pod (and its GPUs) a while
            if pod.metadata.finalizers:
                core_v1.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"finalizers": None}})
            core_v1.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
