"""Fixtures shared by every test layer.

The local stack (real etcd, kube-apiserver, kube-scheduler, kube-controller-manager,
kwok GPU nodes, MinIO, Prometheus) is brought up once per pytest session, on first
use, by the same code as `kubeft dev up`. A stack that is already running (from
`kubeft dev up`) is reused and left running; one the session started is stopped at
the end unless KUBEFT_KEEP_STACK=1.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kubeft.dev.stack import StackInfo

REPO = Path(__file__).resolve().parent.parent


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The versions of the real components the stack tests run against, at the top of every run."""
    from kubeft.dev import stack as devstack

    try:
        return [f"local stack: {devstack.versions_line()}"]
    except Exception as exc:  # a header must never break collection
        return [f"local stack: versions unknown ({exc})"]


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    """The running local stack; started here if it is not up yet."""
    from kubeft.dev import stack as devstack

    was_running = devstack.is_running()
    info = devstack.up()
    yield info
    if not was_running and os.environ.get("KUBEFT_KEEP_STACK") != "1":
        devstack.down()


@pytest.fixture(scope="session")
def api_client(stack: StackInfo) -> Any:
    """A kubernetes.client.ApiClient with cluster-admin rights on the local stack."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(stack.kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.fixture(scope="session")
def core_v1(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom_objects(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def kubeft_crds(stack: StackInfo, api_client: Any) -> list[str]:
    """Applies every CRD under crds/ (waiting until each is Established) and kubeft's admission policies."""
    from kubeft.dev.kube import apply_admission_policies, apply_crds

    names = apply_crds(api_client, sorted((REPO / "crds").glob("*.yaml")))
    apply_admission_policies(api_client, REPO / "charts" / "kubeft" / "files" / "admission-policies.yaml")
    time.sleep(2)  # the API server's policy informer picks them up
    return names


@pytest.fixture()
def namespace(api_client: Any, core_v1: Any) -> Iterator[str]:
    """A fresh namespace per test (ready for pods), deleted afterwards with everything in it."""
    from kubernetes import client

    from kubeft.dev.kube import wait_for_service_account

    name = f"t-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for_service_account(api_client, name)
    yield name
    core_v1.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def minio_client(stack: StackInfo) -> Any:
    """A minio.Minio client for the stack's MinIO server (root credentials)."""
    return stack.minio_client()


@pytest.fixture()
def bucket(minio_client: Any) -> Iterator[str]:
    """A fresh, empty bucket per test, removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    minio_client.make_bucket(name)
    yield name
    for obj in minio_client.list_objects(name, recursive=True):
        minio_client.remove_object(name, obj.object_name)
    minio_client.remove_bucket(name)


@pytest.fixture(scope="session")
def s3_dataset(minio_client: Any) -> Callable[[str], str]:
    """Puts a small alpaca JSONL at an s3:// URI of the stack's MinIO (bucket made if missing).

    The operator places a job only once its s3:// dataset exists.
    """
    from kubeft.dev import tinymodel

    def ensure(uri: str) -> str:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not minio_client.bucket_exists(bucket):
            minio_client.make_bucket(bucket)
        raw = b"".join(json.dumps(r).encode() + b"\n" for r in tinymodel.rows("alpaca"))
        minio_client.put_object(bucket, key, io.BytesIO(raw), len(raw))
        return uri

    return ensure


@pytest.fixture(scope="session")
def prometheus_url(stack: StackInfo) -> str:
    return stack.prometheus_url
