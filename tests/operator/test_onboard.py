"""`kubeft onboard` against the stack, with the chart's own RBAC applied: the operator's
ServiceAccount reads Secrets in an onboarded namespace and nowhere else, and the operator says so
(SecretForbidden) instead of failing its reconcile."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

from kubeft import contract
from kubeft import onboard as ob
from kubeft import profile as profiles
from kubeft.cli import main
from kubeft.dev.stack import BIN

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubeft"


@pytest.fixture()
def operator_rbac(api_client: Any, core_v1: Any) -> Iterator[str]:
    """The chart's ServiceAccount and cluster-wide RBAC (cluster mode, rbac.secrets=onboarded) as
    `helm install` makes them, in a namespace of its own; yields "<namespace>/<ServiceAccount>"."""
    release, ns = f"kt{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:10]}"
    rendered = subprocess.run(
        [str(BIN / "helm"), "template", release, str(CHART), "--namespace", ns],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    rbac = client.RbacAuthorizationV1Api(api_client)
    try:
        for doc in docs:
            utils.create_from_dict(api_client, doc)
        (sa,) = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
        yield f"{ns}/{sa}"
    finally:
        for doc in docs:
            if doc["kind"] == "ClusterRole":
                rbac.delete_cluster_role(doc["metadata"]["name"])
            elif doc["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(doc["metadata"]["name"])
        core_v1.delete_namespace(ns, propagation_policy="Background")


def may_read_secrets(api_client: Any, account: str, namespace: str) -> bool:
    sa_ns, _, sa = account.partition("/")
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{sa_ns}:{sa}",
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb="get", resource="secrets", name="storage-creds"
                ),
            )
        )
    )
    return bool(review.status.allowed)


def test_onboard_grants_the_operator_secret_read_in_that_namespace_only(
    api_client: Any, core_v1: Any, custom_objects: Any, namespace: str, stack: Any, crds: list[str],
    operator_rbac: str, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    profile = f"team-{uuid.uuid4().hex[:6]}"
    custom_objects.create_cluster_custom_object(
        contract.GROUP, contract.VERSION, profiles.PLURAL,
        {"apiVersion": contract.API_VERSION, "kind": profiles.KIND, "metadata": {"name": profile},
         "spec": {"limits": {"methods": ["qlora"]}}},
    )  # fmt: skip
    fresh = f"t-{uuid.uuid4().hex[:10]}"  # onboarding creates a namespace that is not there yet
    kubeconfig = ["--kubeconfig", str(stack.kubeconfig)]
    try:
        # bad input: a readable refusal, nothing changed
        assert main(["onboard", namespace, "--profile", "nope", *kubeconfig]) == 2
        assert "FineTuneProfile nope not found" in capsys.readouterr().err
        assert main(["onboard", "Team_A", "--profile", profile, *kubeconfig]) == 2
        assert "NAMESPACE 'Team_A': a namespace name is a DNS label" in capsys.readouterr().err

        # --dry-run: the YAML, and nothing made
        assert main(["onboard", namespace, "--profile", profile, "--dry-run", *kubeconfig]) == 0
        ns_doc, binding = yaml.safe_load_all(capsys.readouterr().out)
        assert ns_doc["metadata"]["labels"] == {profiles.LABEL_PROFILE: profile}
        sa_ns, _, sa = operator_rbac.partition("/")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]
        assert binding["roleRef"]["name"].endswith("-secrets")
        assert not (core_v1.read_namespace(namespace).metadata.labels or {}).get(profiles.LABEL_PROFILE)
        assert not may_read_secrets(api_client, operator_rbac, namespace)

        # onboarded: labelled, and the operator may read Secrets there; idempotent
        assert main(["onboard", namespace, "--profile", profile, *kubeconfig]) == 0
        assert capsys.readouterr().out.splitlines() == [
            f"namespace/{namespace} labelled with profile {profile}",
            f"rolebinding/{ob.ROLE_BINDING} created: {operator_rbac} may read Secrets in {namespace}",
        ]
        assert main(["onboard", namespace, "--profile", profile, *kubeconfig]) == 0
        assert capsys.readouterr().out.splitlines() == [
            f"namespace/{namespace} unchanged (profile {profile})",
            f"rolebinding/{ob.ROLE_BINDING} unchanged",
        ]
        assert core_v1.read_namespace(namespace).metadata.labels[profiles.LABEL_PROFILE] == profile
        assert main(["onboard", fresh, "--profile", profile, *kubeconfig]) == 0
        assert f"namespace/{fresh} created with profile {profile}" in capsys.readouterr().out
        # namespaced mode: the label only (the chart's Role in a watched namespace grants the rest)
        assert main(["onboard", fresh, "--profile", profile, "--no-rbac", "--dry-run", *kubeconfig]) == 0
        assert [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)] == ["Namespace"]

        # the ServiceAccount: Secrets of onboarded namespaces only (RBAC's own answer, then a read)
        assert may_read_secrets(api_client, operator_rbac, namespace)
        assert may_read_secrets(api_client, operator_rbac, fresh)
        other = f"t-{uuid.uuid4().hex[:10]}"
        core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
        try:
            assert not may_read_secrets(api_client, operator_rbac, other)
            as_operator = client.ApiClient(api_client.configuration)
            as_operator.set_default_header("Impersonate-User", f"system:serviceaccount:{sa_ns}:{sa}")
            keys = {k: base64.b64encode(b"x").decode() for k in ("accessKey", "secretKey")}
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "storage-creds"},
                "data": keys,
            }
            for ns in (namespace, other):
                core_v1.create_namespaced_secret(ns, secret)
            assert client.CoreV1Api(as_operator).read_namespaced_secret("storage-creds", namespace).data
            with pytest.raises(ApiException) as forbidden:
                client.CoreV1Api(as_operator).read_namespaced_secret("storage-creds", other)
            assert forbidden.value.status == 403

            # and the operator, with those rights, says why a job there cannot start
            from kubeft_operator.api import FineTuneJob
            from kubeft_operator.kube import Kube
            from kubeft_operator.settings import Settings

            body = {"metadata": {"name": "j", "namespace": other, "uid": "u"},
                    "spec": {"model": {"source": "s3://models/m/"}, "dataset": {"source": "s3://d/x.jsonl"},
                             "storage": {"credentialsSecret": "storage-creds"}}}  # fmt: skip
            got = Kube(as_operator).inputs(FineTuneJob.from_body(body), Settings())
            assert got.invalid_reason == "SecretForbidden"
            assert got.invalid_message == (
                f"storage.credentialsSecret 'storage-creds': the operator may not read Secrets in namespace "
                f"{other} (forbidden); onboard the namespace: kubeft onboard {other} --profile <profile>, or "
                "list it in the chart's onboardedNamespaces (watchNamespaces in namespaced mode)"
            )
        finally:
            core_v1.delete_namespace(other, propagation_policy="Background")
    finally:
        custom_objects.delete_cluster_custom_object(
            contract.GROUP, contract.VERSION, profiles.PLURAL, profile
        )
        try:
            core_v1.delete_namespace(fresh, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
