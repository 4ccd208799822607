"""The local pod runner runs kubeft's pods as processes and reports back like a kubelet."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import contract

pytestmark = pytest.mark.stack

SCRIPT = r"""
import json, os, pathlib, sys, time, http.server, threading
cfg = json.loads(pathlib.Path(os.environ["KUBEFT_JOB_CONFIG"]).read_text())
port = int(os.environ["KUBEFT_METRICS_PORT"])
body = ("runner_probe_value{key=\"%s\"} %s\n" % (os.environ["AWS_ACCESS_KEY_ID"], cfg["value"])).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
# the pod's own identity reaches the API server (and only with its own rights)
from kubernetes import client, config
config.load_kube_config()
me = client.CoreV1Api().read_namespaced_pod(os.environ["POD_NAME"], os.environ["POD_NAMESPACE"])
assert me.metadata.name == os.environ["POD_NAME"]
time.sleep(float(cfg["sleep"]))
pathlib.Path(os.environ["KUBEFT_TERMINATION_LOG"]).write_text("bye from " + os.environ["POD_NAME"])
sys.exit(int(cfg["exit"]))
"""


def _trainer_pod(name: str, cm: str, secret: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name, labels={contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER}
        ),
        spec=client.V1PodSpec(
            restart_policy="Never",
            service_account_name="runner-test",
            containers=[
                client.V1Container(
                    name=contract.TRAINER_CONTAINER,
                    image="kubeft/trainer:test",
                    command=["python3", "-c", SCRIPT],
                    env=[
                        client.V1EnvVar(
                            name=contract.ENV_JOB_CONFIG, value=f"{contract.TRAINER_CONFIG_DIR}/job.json"
                        ),
                        client.V1EnvVar(
                            name="AWS_ACCESS_KEY_ID",
                            value_from=client.V1EnvVarSource(
                                secret_key_ref=client.V1SecretKeySelector(
                                    name=secret, key=contract.SECRET_ACCESS_KEY
                                )
                            ),
                        ),
                        client.V1EnvVar(
                            name="POD_NAME",
                            value_from=client.V1EnvVarSource(
                                field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")
                            ),
                        ),
                        client.V1EnvVar(
                            name="POD_NAMESPACE",
                            value_from=client.V1EnvVarSource(
                                field_ref=client.V1ObjectFieldSelector(field_path="metadata.namespace")
                            ),
                        ),
                    ],
                    ports=[
                        client.V1ContainerPort(
                            name=contract.METRICS_PORT_NAME, container_port=contract.METRICS_PORT
                        )
                    ],
                    volume_mounts=[
                        client.V1VolumeMount(name="config", mount_path=contract.TRAINER_CONFIG_DIR)
                    ],
                )
            ],
            volumes=[client.V1Volume(name="config", config_map=client.V1ConfigMapVolumeSource(name=cm))],
        ),
    )


def _setup(core_v1: Any, api_client: Any, namespace: str, exit_code: int, sleep: float) -> str:
    import json

    rbac = client.RbacAuthorizationV1Api(api_client)
    core_v1.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="runner-test"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-pods"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="read-pods"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-pods"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="runner-test", namespace=namespace)],
        ),
    )
    core_v1.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="cfg"),
            data={"job.json": json.dumps({"value": 7.5, "exit": exit_code, "sleep": sleep})},
        ),
    )
    core_v1.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="creds"), string_data={contract.SECRET_ACCESS_KEY: "AK-123"}
        ),
    )
    name = f"p-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespaced_pod(namespace, _trainer_pod(name, "cfg", "creds"))
    return name


def _wait_phase(core_v1: Any, namespace: str, name: str, phases: set[str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = core_v1.read_namespaced_pod(name, namespace)
        if pod.status.phase in phases:
            return pod
        time.sleep(0.3)
    raise AssertionError(f"pod {name} never reached {phases}; last: {pod.status}")


def test_runner_runs_a_trainer_pod_and_reports_its_exit(
    core_v1: Any, api_client: Any, namespace: str
) -> None:
    name = _setup(core_v1, api_client, namespace, exit_code=3, sleep=1)
    pod = _wait_phase(core_v1, namespace, name, {"Failed", "Succeeded"})
    assert pod.status.phase == "Failed"
    term = pod.status.container_statuses[0].state.terminated
    assert term.exit_code == 3
    assert term.reason == "Error"
    assert term.message == f"bye from {name}"


def test_runner_metrics_port_is_scraped_by_prometheus(
    core_v1: Any, api_client: Any, namespace: str, prometheus_url: str
) -> None:
    name = _setup(core_v1, api_client, namespace, exit_code=0, sleep=40)
    running = _wait_phase(core_v1, namespace, name, {"Running", "Failed", "Succeeded"})
    assert running.status.phase == "Running", running.status
    deadline = time.monotonic() + 45
    result: list[Any] = []
    while time.monotonic() < deadline and not result:
        r = requests.get(
            f"{prometheus_url}/api/v1/query",
            params={"query": f'runner_probe_value{{namespace="{namespace}"}}'},
            timeout=5,
        )
        result = r.json()["data"]["result"]
        time.sleep(1)
    assert result, "Prometheus never scraped the pod's metrics port"
    assert result[0]["metric"]["pod"] == name
    assert result[0]["metric"]["key"] == "AK-123"  # the Secret's value reached the process
    assert float(result[0]["value"][1]) == 7.5
    # deleting the pod stops the process
    core_v1.delete_namespaced_pod(name, namespace, grace_period_seconds=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core_v1.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            assert exc.status == 404
            break
        time.sleep(0.3)
    else:
        raise AssertionError("pod was not deleted")


TOKEN_SCRIPT = r"""
import os, pathlib
token = pathlib.Path(os.environ["SA_DIR"]) / "token"
ns = pathlib.Path(os.environ["SA_DIR"]) / "namespace"
said = "kubeconfig" if os.environ.get("KUBECONFIG") else "no kubeconfig"
if token.exists():
    said += f", token of {len(token.read_text().split('.'))} parts, namespace {ns.read_text()}"
pathlib.Path(os.environ["KUBEFT_TERMINATION_LOG"]).write_text(said)
"""


def test_a_pod_gets_an_api_token_only_when_it_has_one_and_the_projected_one_where_it_mounts_it(
    core_v1: Any, namespace: str
) -> None:
    def pod(name: str, projected: bool) -> client.V1Pod:
        token = client.V1Volume(
            name="token",
            projected=client.V1ProjectedVolumeSource(
                sources=[
                    client.V1VolumeProjection(
                        service_account_token=client.V1ServiceAccountTokenProjection(
                            path="token", expiration_seconds=600
                        )
                    ),
                    client.V1VolumeProjection(
                        downward_api=client.V1DownwardAPIProjection(
                            items=[
                                client.V1DownwardAPIVolumeFile(
                                    path="namespace",
                                    field_ref=client.V1ObjectFieldSelector(field_path="metadata.namespace"),
                                )
                            ]
                        )
                    ),
                ]
            ),
        )
        sa_dir = contract.SA_TOKEN_DIR
        return client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name, labels={contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER}
            ),
            spec=client.V1PodSpec(
                restart_policy="Never",
                automount_service_account_token=False,
                containers=[
                    client.V1Container(
                        name=contract.TRAINER_CONTAINER,
                        image="kubeft/trainer:test",
                        command=["python3", "-c", TOKEN_SCRIPT],
                        env=[client.V1EnvVar(name="SA_DIR", value=sa_dir)],
                        volume_mounts=[client.V1VolumeMount(name="token", mount_path=sa_dir, read_only=True)]
                        if projected
                        else None,
                    )
                ],
                volumes=[token] if projected else None,
            ),
        )

    core_v1.create_namespaced_pod(namespace, pod("no-token", projected=False))
    core_v1.create_namespaced_pod(namespace, pod("projected", projected=True))
    said = {}
    for name in ("no-token", "projected"):
        done = _wait_phase(core_v1, namespace, name, {"Failed", "Succeeded"})
        said[name] = done.status.container_statuses[0].state.terminated.message
    assert said == {
        "no-token": "no kubeconfig",
        "projected": f"kubeconfig, token of 3 parts, namespace {namespace}",  # a JWT
    }


JWT_SCRIPT = r"""
import base64, json, os, pathlib
raw = pathlib.Path(os.environ["TOKEN_FILE"]).read_text()
claims = json.loads(base64.urlsafe_b64decode(raw.split(".")[1] + "==="))
keep = {k: claims[k] for k in ("aud", "sub", "iss")}
keep["ttl"] = claims["exp"] - claims["iat"]
keep["pod"] = claims["kubernetes.io"]["pod"]["name"]
pathlib.Path(os.environ["KUBEFT_TERMINATION_LOG"]).write_text(json.dumps(keep))
"""


def test_runner_projects_a_service_account_token_with_its_audience_like_a_kubelet(
    core_v1: Any, namespace: str
) -> None:
    """A projected serviceAccountToken volume: a TokenRequest for the pod's ServiceAccount, bound
    to the pod, with the source's audience and expirationSeconds, at the source's path."""
    import json

    from kubeft.dev import stack

    core_v1.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="web-identity"))
    )
    name = f"t-{uuid.uuid4().hex[:6]}"
    projection = client.V1ServiceAccountTokenProjection(
        audience="sts.example", expiration_seconds=900, path="t"
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name, labels={contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER}
        ),
        spec=client.V1PodSpec(
            restart_policy="Never",
            service_account_name="web-identity",
            containers=[
                client.V1Container(
                    name=contract.TRAINER_CONTAINER,
                    image="kubeft/trainer:test",
                    command=["python3", "-c", JWT_SCRIPT],
                    env=[client.V1EnvVar(name="TOKEN_FILE", value="/var/run/secrets/tokens/t")],
                    volume_mounts=[client.V1VolumeMount(name="tok", mount_path="/var/run/secrets/tokens")],
                )
            ],
            volumes=[
                client.V1Volume(
                    name="tok",
                    projected=client.V1ProjectedVolumeSource(
                        sources=[client.V1VolumeProjection(service_account_token=projection)]
                    ),
                )
            ],
        ),
    )
    core_v1.create_namespaced_pod(namespace, pod)
    done = _wait_phase(core_v1, namespace, name, {"Failed", "Succeeded"})
    term = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", term
    claims = json.loads(term.message)
    assert claims == {
        "aud": ["sts.example"],
        "sub": f"system:serviceaccount:{namespace}:web-identity",
        "iss": stack.SA_ISSUER,  # the API server itself: what an STS finds the JWKS of
        "ttl": 900,
        "pod": name,
    }
