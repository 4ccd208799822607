"""The local stack's own proof: every component is the real thing and does its job."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import contract
from kubeft.dev import nodes as gpu_nodes
from kubeft.dev.kube import apply_crds, wait_until

pytestmark = pytest.mark.stack

GPU_TOLERATION = client.V1Toleration(
    key=contract.GPU_TAINT_KEY, operator="Exists", effect=contract.GPU_TAINT_EFFECT
)


def _gpu_pod(name: str, gpus: int, affinity: client.V1Affinity | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image="busybox",
                    resources=client.V1ResourceRequirements(
                        limits={contract.RESOURCE_GPU: str(gpus)}, requests={contract.RESOURCE_GPU: str(gpus)}
                    ),
                )
            ],
            tolerations=[GPU_TOLERATION],
            affinity=affinity,
        ),
    )


def _wait(fn: Any, timeout: float = 30.0, interval: float = 0.25) -> Any:
    """kubeft.dev.kube.wait_until with this module's 30 s default."""
    return wait_until(fn, timeout=timeout, interval=interval)


def test_gpu_nodes_carry_gfd_labels_and_gpu_resources(core_v1: Any) -> None:
    nodes = {n.metadata.name: n for n in core_v1.list_node().items}
    for spec in gpu_nodes.NODES:
        node = nodes[spec.name]
        labels = node.metadata.labels
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        if spec.gpu_product is None:
            assert contract.LABEL_GPU_PRODUCT not in labels
            assert contract.RESOURCE_GPU not in (node.status.allocatable or {})
            continue
        assert labels[contract.LABEL_GPU_PRODUCT] == spec.gpu_product
        assert labels[contract.LABEL_GPU_MEMORY] == str(spec.gpu_memory_mib)
        assert labels[contract.LABEL_GPU_COUNT] == str(spec.gpu_count)
        assert labels[contract.LABEL_GPU_PRESENT] == "true"
        assert node.status.allocatable[contract.RESOURCE_GPU] == str(spec.gpu_count)
        assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
            (contract.GPU_TAINT_KEY, contract.GPU_TAINT_VALUE, contract.GPU_TAINT_EFFECT)
        ]
    products = sorted(s.gpu_product for s in gpu_nodes.NODES if s.gpu_product)
    assert products == ["NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4", "NVIDIA-L4"]


def test_a_crd_is_applied_and_served(
    api_client: Any, custom_objects: Any, namespace: str, tmp_path: Path
) -> None:
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    crd = tmp_path / "crd.yaml"
    crd.write_text(f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.test.kubeft.io}}
spec:
  group: test.kubeft.io
  scope: Namespaced
  names: {{plural: {plural}, singular: w{plural}, kind: W{plural}}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {{type: integer, minimum: 1}}
""")
    ext = client.ApiextensionsV1Api(api_client)
    try:
        apply_crds(api_client, [crd])
        body = {
            "apiVersion": "test.kubeft.io/v1",
            "kind": f"W{plural}",
            "metadata": {"name": "a"},
            "spec": {"size": 3},
        }
        custom_objects.create_namespaced_custom_object("test.kubeft.io", "v1", namespace, plural, body)
        got = custom_objects.get_namespaced_custom_object("test.kubeft.io", "v1", namespace, plural, "a")
        assert got["spec"] == {"size": 3}
        bad = {**body, "metadata": {"name": "b"}, "spec": {"size": 0}}
        with pytest.raises(ApiException) as err:
            custom_objects.create_namespaced_custom_object("test.kubeft.io", "v1", namespace, plural, bad)
        assert err.value.status == 422
        assert "spec.size" in err.value.body
    finally:
        ext.delete_custom_resource_definition(f"{plural}.test.kubeft.io")


def test_scheduler_binds_big_memory_gpu_pod_to_a100_or_h100_never_l4(core_v1: Any, namespace: str) -> None:
    affinity = client.V1Affinity(
        node_affinity=client.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=client.V1NodeSelector(
                node_selector_terms=[
                    client.V1NodeSelectorTerm(
                        match_expressions=[
                            client.V1NodeSelectorRequirement(
                                key=contract.LABEL_GPU_MEMORY, operator="Gt", values=["30000"]
                            )
                        ]
                    )
                ]
            ),
        )
    )
    names = [f"big-{i}" for i in range(4)]
    for name in names:
        core_v1.create_namespaced_pod(namespace, _gpu_pod(name, 1, affinity))
    for name in names:
        pod = _wait(lambda n=name: (p := core_v1.read_namespaced_pod(n, namespace)).spec.node_name and p)
        assert pod.spec.node_name in {"gpu-a100-0", "gpu-h100-0"}, pod.spec.node_name
        # kwok runs non-trainer pods: the bound pod becomes Running like on a real kubelet
        _wait(lambda n=name: core_v1.read_namespaced_pod(n, namespace).status.phase == "Running")


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending_with_reason(
    core_v1: Any, namespace: str
) -> None:
    core_v1.create_namespaced_pod(namespace, _gpu_pod("nine", 9))

    def unschedulable() -> Any:
        pod = core_v1.read_namespaced_pod("nine", namespace)
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                return cond
        return None

    cond = _wait(unschedulable)
    assert cond.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond.message, cond.message
    time.sleep(2)
    pod = core_v1.read_namespaced_pod("nine", namespace)
    assert pod.status.phase == "Pending" and pod.spec.node_name is None


def test_deleting_an_owner_garbage_collects_what_it_owns(core_v1: Any, namespace: str) -> None:
    owner = core_v1.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"a": "1"})
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core_v1.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="owned", owner_references=[ref]), string_data={"k": "v"}
        ),
    )
    core_v1.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core_v1.read_namespaced_secret("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    _wait(gone, timeout=60)


def test_minio_object_reads_back_byte_for_byte(minio_client: Any, bucket: str) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    minio_client.put_object(bucket, "dir/blob.bin", io.BytesIO(payload), len(payload))
    resp = minio_client.get_object(bucket, "dir/blob.bin")
    try:
        got = resp.read()
    finally:
        resp.close()
        resp.release_conn()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_minio_sts_trusts_the_api_servers_service_account_tokens_of_its_audience(
    stack: Any, core_v1: Any, namespace: str
) -> None:
    """Web identity on the stack: anyone may read the issuer's discovery document and JWKS, and
    MinIO's STS turns a service-account token of its audience into keys that work, and refuses
    another audience and an unknown role with its own reasons."""
    from kubeft import webidentity
    from kubeft.dev import stack as devstack

    # anonymous (no client certificate, no token): as an STS reads them
    ca = str(stack.state_dir / "pki" / "ca.crt")
    doc = requests.get(f"{devstack.SA_ISSUER}/.well-known/openid-configuration", verify=ca, timeout=10).json()
    assert doc["issuer"] == devstack.SA_ISSUER and doc["jwks_uri"] == f"{devstack.SA_ISSUER}/openid/v1/jwks"
    assert requests.get(doc["jwks_uri"], verify=ca, timeout=10).json()["keys"]

    def token(audience: str) -> str:
        spec = client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
        req = client.AuthenticationV1TokenRequest(spec=spec)
        return str(core_v1.create_namespaced_service_account_token("default", namespace, req).status.token)

    role = stack.web_identity_role_arn
    creds = webidentity.assume_role(stack.minio_endpoint, token(stack.web_identity_audience), role, "t")
    from minio import Minio

    mc = Minio(
        stack.minio_endpoint.split("://", 1)[1],
        access_key=creds.access_key,
        secret_key=creds.secret_key,
        session_token=creds.session_token,
        secure=False,
    )
    bucket = f"sts-{uuid.uuid4().hex[:8]}"
    mc.make_bucket(bucket)
    mc.put_object(bucket, "k", io.BytesIO(b"keyless"), 7)
    assert stack.minio_client().get_object(bucket, "k").read() == b"keyless"
    with pytest.raises(webidentity.WebIdentityError, match="`azp` must match configured OpenID Client ID"):
        webidentity.assume_role(stack.minio_endpoint, token("someone-else"), role, "t")
    with pytest.raises(webidentity.WebIdentityError, match="is not defined") as err:
        webidentity.assume_role(
            stack.minio_endpoint, token(stack.web_identity_audience), "arn:minio:iam:::role/x", "t"
        )
    assert err.value.permanent


def test_registry_takes_a_push_with_its_credentials_and_refuses_others(stack: Any, tmp_path: Path) -> None:
    """CNCF distribution with basic auth: ORAS pushes and pulls back byte for byte; a wrong password
    is refused, and so is a request without credentials."""
    import oras.provider

    payload = tmp_path / "blob.bin"
    payload.write_bytes(os.urandom(1024 * 1024 + 3))
    target = f"{stack.registry}/stack-test/blob:{uuid.uuid4().hex[:8]}"

    def client(user: str, password: str) -> Any:
        c = oras.provider.Registry(hostname=stack.registry, insecure=True, auth_backend="basic")
        c.auth.set_basic_auth(user, password)
        return c

    # the registry asks for basic auth
    r = requests.get(f"http://{stack.registry}/v2/", timeout=10)
    assert r.status_code == 401 and r.headers["Www-Authenticate"].startswith("Basic realm=")
    good = client(stack.registry_user, stack.registry_password)
    resp = good.push(target=target, files=[str(payload)], disable_path_validation=True, quiet=True)
    assert resp.status_code == 201 and resp.headers["Docker-Content-Digest"].startswith("sha256:")
    out = tmp_path / "pulled"
    (pulled,) = good.pull(target=target, outdir=str(out))
    assert Path(pulled).read_bytes() == payload.read_bytes()
    with pytest.raises(ValueError, match=r"(?i)unauthorized"):
        client(stack.registry_user, "wrong").push(
            target=target, files=[str(payload)], disable_path_validation=True, quiet=True
        )


@pytest.fixture()
def metrics_server() -> Iterator[tuple[str, str]]:
    """An HTTP /metrics endpoint with a uniquely named gauge."""
    metric = f"kubeft_stack_probe_{uuid.uuid4().hex[:8]}"
    body = f'# TYPE {metric} gauge\n{metric}{{probe="yes"}} 42.5\n'.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", metric
    server.shutdown()


def test_prometheus_scrapes_a_target_and_answers_a_query(stack: Any, metrics_server: tuple[str, str]) -> None:
    address, metric = metrics_server
    name = f"probe-{uuid.uuid4().hex[:6]}"
    stack.add_scrape_target(name, address, {"origin": "test"})
    try:

        def series() -> Any:
            r = requests.get(f"{stack.prometheus_url}/api/v1/query", params={"query": metric}, timeout=5)
            r.raise_for_status()
            return r.json()["data"]["result"]

        result = _wait(series, timeout=60, interval=1)
        assert result[0]["metric"]["job"] == name
        assert result[0]["metric"]["probe"] == "yes"
        assert float(result[0]["value"][1]) == 42.5
    finally:
        stack.remove_scrape_target(name)
