"""Storage without static keys, end to end: a namespace with no Secret at all trains to Succeeded.

The local stack's API server is the service-account issuer (OIDC discovery and JWKS, read
anonymously); MinIO's STS trusts it (AssumeRoleWithWebIdentity, audience sts.amazonaws.com, a role
ARN of its own). The operator (the Helm chart, its pod run by the pod runner with the chart's RBAC)
checks the job's dataset and model as the job's own ServiceAccount; the trainer pod gets a projected
token from the pod runner (TokenRequest, as a kubelet) and exchanges it for keys. Nothing in the
namespace holds a key.
"""

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

from kubeft import contract, demo, webidentity
from kubeft.dev import queues
from kubeft.dev.kube import wait_for_service_account

from .conftest import apply, delete_jobs, wait_status

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keyless_namespace(stack: Any, api_client: Any, kubeft_crds: list[str]) -> Iterator[str]:
    """A namespace with a LocalQueue and no Secret, watched by an operator release that lives in a
    namespace of its own (Helm keeps its release record in a Secret there)."""
    ns = f"wid-{uuid.uuid4().hex[:8]}"
    demo.upload_inputs(stack)
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    wait_for_service_account(api_client, ns)
    queues.ensure_local_queue(api_client, ns)
    release, operator_ns = f"kubeft-{ns}", f"{ns}-operator"
    helm = [str(stack.bin_dir / "helm"), "--kubeconfig", str(stack.kubeconfig)]
    subprocess.run(
        [*helm, "upgrade", "--install", release, str(REPO / "charts" / "kubeft"), "--namespace", operator_ns,
         "--create-namespace",
         "--set", f"watchNamespaces={{{ns}}}", "--set", f"storage.endpoint={stack.minio_endpoint}",
         "--set", f"storage.bucket={demo.OUTPUT_BUCKET}",
         "--set", f"storage.webIdentity.audience={stack.web_identity_audience}",
         "--set", "admissionPolicies.create=false", "--wait", "--timeout", "3m"],
        check=True, capture_output=True,
    )  # fmt: skip
    yield ns
    delete_jobs(api_client, ns)
    subprocess.run(
        [*helm, "uninstall", release, "--namespace", operator_ns, "--wait"], check=False, capture_output=True
    )
    core.delete_namespace(ns)
    core.delete_namespace(operator_ns)


def keyless(name: str, role_arn: str) -> dict[str, Any]:
    """The quickstart with a role instead of a Secret, a short run, the adapter only, cleanup Delete."""
    manifest: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    manifest["metadata"]["name"] = name
    spec = manifest["spec"]
    spec["storage"] = {"bucket": demo.OUTPUT_BUCKET, "roleArn": role_arn}
    spec["hyperparameters"]["epochs"] = 2
    spec["export"] = {"formats": ["adapter"]}
    spec["cleanup"] = "Delete"
    return manifest


def secrets(core_v1: Any, ns: str) -> list[str]:
    return [s.metadata.name for s in core_v1.list_namespaced_secret(ns).items]


def test_web_identity_storage_trains_to_succeeded_with_no_secret_in_the_namespace(
    stack: Any, api_client: Any, core_v1: Any, custom_objects: Any, keyless_namespace: str
) -> None:
    ns = keyless_namespace
    assert secrets(core_v1, ns) == []
    apply(stack, ns, keyless("keyless", stack.web_identity_role_arn))
    job = demo.watch(api_client, timeout=900, namespace=ns, name="keyless")
    assert job is not None
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert secrets(core_v1, ns) == []  # nothing made one on the way
    # the trainer pod had a projected token of the STS's audience and no key
    pods = core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}=keyless").items
    assert pods
    pod = pods[0]
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env[webidentity.ENV_ROLE_ARN].value == stack.web_identity_role_arn
    assert contract.ENV_S3_ACCESS_KEY not in env and contract.ENV_S3_SECRET_KEY not in env
    (token,) = [v for v in pod.spec.volumes if v.name == webidentity.TOKEN_VOLUME]
    assert token.projected.sources[0].service_account_token.audience == stack.web_identity_audience
    # what it wrote is in MinIO under the job's run
    mc = stack.minio_client()
    run = contract.job_prefix(ns, "keyless", job["metadata"]["uid"])
    bucket, prefix = status["artifacts"]["adapter"].removeprefix("s3://").split("/", 1)
    assert bucket == demo.OUTPUT_BUCKET and prefix.startswith(run + "/")
    names = [o.object_name for o in mc.list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True)]
    assert any(n.endswith(".safetensors") for n in names), names
    assert status["checkpoints"]["latest"].startswith(f"s3://{demo.OUTPUT_BUCKET}/{run}/checkpoints/")
    # spec.cleanup: Delete, done by the operator as the job's identity (it holds no key either)
    custom_objects.delete_namespaced_custom_object(
        contract.GROUP, contract.VERSION, ns, contract.PLURAL, "keyless"
    )
    deadline = time.monotonic() + 60
    left = ["?"]
    while time.monotonic() < deadline and left:
        left = [o.object_name for o in mc.list_objects(bucket, prefix=run + "/", recursive=True)]
        time.sleep(0.5)
    assert left == [], f"{len(left)} objects left under {run}/"


def test_a_role_the_sts_does_not_know_is_a_clear_condition_before_any_pod(
    stack: Any, core_v1: Any, custom_objects: Any, keyless_namespace: str
) -> None:
    ns = keyless_namespace
    wrong = "arn:minio:iam:::role/not-this-one"
    apply(stack, ns, keyless("wrong-role", wrong))

    def refused(status: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Validated" and c["status"] == "False" and c["reason"] == "WebIdentityRefused"
            for c in status.get("conditions") or []
        )

    status = wait_status(custom_objects, ns, "wrong-role", refused, timeout=60)
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    message = validated["message"]
    assert f"for role {wrong} failed" in message, message
    assert f"RoleARN {wrong} is not defined" in message, message  # MinIO's own words
    assert "check spec.storage.roleArn" in message
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"  # someone has to fix it; the operator does not spin
    time.sleep(3)
    batch = client.BatchV1Api(core_v1.api_client)
    assert batch.list_namespaced_job(ns, label_selector=f"{contract.LABEL_JOB}=wrong-role").items == []


def test_a_token_of_another_audience_is_refused_by_the_sts_with_its_reason(
    stack: Any, api_client: Any, keyless_namespace: str
) -> None:
    """The operator's own exchange (storageauth), as configured with an audience MinIO does not
    accept: STS says so (`aud`/`azp` must match its client ID) and the message names the setting."""
    from kubeft_operator import storageauth
    from kubeft_operator.api import FineTuneJob
    from kubeft_operator.settings import Settings

    body = keyless("other-audience", stack.web_identity_role_arn)
    body["metadata"].update(namespace=keyless_namespace, uid=str(uuid.uuid4()))
    job = FineTuneJob.from_body(body)
    core = client.CoreV1Api(api_client)
    # the job's trainer ServiceAccount (the operator makes it owned by the job; this job is not stored)
    sa = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="other-audience-trainer"))
    core.create_namespaced_service_account(keyless_namespace, sa)
    settings = Settings(default_storage_endpoint=stack.minio_endpoint, web_identity_audience="not-the-sts")
    storageauth.clear_cache()
    with pytest.raises(storageauth.StorageIdentityError) as info:
        storageauth.credentials(core, job, settings)
    text = str(info.value)
    assert "STS JWT Token has `azp` claim invalid" in text and "audience 'not-the-sts'" in text, text
    # the right audience: keys, cached under the job's identity
    ok = Settings(
        default_storage_endpoint=stack.minio_endpoint, web_identity_audience=stack.web_identity_audience
    )
    creds = storageauth.credentials(core, job, ok)
    assert creds["sessionToken"] and creds["identity"].startswith("webIdentity\0" + keyless_namespace)
    assert storageauth.credentials(core, job, ok)["accessKey"] == creds["accessKey"]
    storageauth.clear_cache()
