"""The Helm chart: it lints, renders what a platform team expects, and stays in step with crds/."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeft import contract
from kubeft.dev.stack import BIN

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeft"


def helm(*args: str) -> str:
    res = subprocess.run([str(BIN / "helm"), *args], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def render(*sets: str) -> list[dict[str, Any]]:
    argv = ["template", "kubeft", str(CHART), "--namespace", "kubeft-system", "--include-crds"]
    for s in sets:
        argv += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*argv)) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_lints_clean() -> None:
    out = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out


def test_chart_crds_are_the_crds_directory_files_and_its_policies_the_files_one() -> None:
    sources = sorted((REPO / "crds").glob("*.yaml"))
    for source in sources:
        chart_crd = CHART / "crds" / source.name
        assert chart_crd.is_symlink(), "the chart's CRDs must be links to crds/, never copies"
    rendered = by_kind(render(), "CustomResourceDefinition")
    files = [d for s in sources for d in yaml.safe_load_all(s.read_text()) if d]
    assert sorted(rendered, key=lambda d: d["metadata"]["name"]) == sorted(
        files, key=lambda d: d["metadata"]["name"]
    )
    policies = [d for d in render() if d["kind"].startswith("ValidatingAdmissionPolicy")]
    files = [d for d in yaml.safe_load_all((CHART / "files" / "admission-policies.yaml").read_text()) if d]
    assert policies == files and {d["metadata"]["name"] for d in files} == {
        "kubeft-profile-limits", "kubeft-profile-choice", "kubeft-storage-required",
    }  # fmt: skip
    assert not [d for d in render("admissionPolicies.create=false") if "AdmissionPolicy" in d["kind"]]


def test_operator_deployment_is_locked_down() -> None:
    (deploy,) = by_kind(render(), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["command"] == ["kubeft-operator"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFT_TRAINER_IMAGE"] == "ghcr.io/kubeft/trainer:0.1.0"
    assert env["KUBEFT_NAMESPACES"] == ""


def test_values_reach_the_operator() -> None:
    docs = render(
        "image.trainer.tag=v9",
        "storage.endpoint=http://s3.internal:9000",
        "storage.bucket=ft",
        "operator.memoryMargin=0.2",
    )
    (deploy,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBEFT_TRAINER_IMAGE"] == "ghcr.io/kubeft/trainer:v9"
    assert env["KUBEFT_DEFAULT_STORAGE_ENDPOINT"] == "http://s3.internal:9000"
    assert env["KUBEFT_DEFAULT_BUCKET"] == "ft"
    assert env["KUBEFT_MEMORY_MARGIN"] == "0.2"


def test_cluster_wide_by_default_namespaced_when_watch_list_given() -> None:
    docs = render()
    cluster_role, secrets = sorted(by_kind(docs, "ClusterRole"), key=lambda d: d["metadata"]["name"])
    assert any("finetunejobs" in r["resources"] for r in cluster_role["rules"])
    # Secrets: not cluster-wide; a ClusterRole that only onboarded namespaces bind
    assert not any("secrets" in r["resources"] for r in cluster_role["rules"])
    assert [r["resources"] for r in secrets["rules"]] == [["secrets"]]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")

    docs = render("watchNamespaces={team-a,team-b}")
    (cluster_role,) = by_kind(docs, "ClusterRole")
    # cluster-wide only reads: nodes, namespaces, CRDs, and listing pods (GPUs in use); no rights
    # on jobs, secrets or writes outside the list, except the cluster-scoped FineTuneProfiles
    # (kopf's progress annotations) and their admission policy bindings
    rules = {res: r["verbs"] for r in cluster_role["rules"] for res in r["resources"]}
    writes = {"finetuneprofiles", "validatingadmissionpolicybindings"}
    assert set(rules) == {"nodes", "namespaces", "customresourcedefinitions", "pods", *writes}
    assert rules["pods"] == ["list", "watch"]
    assert all(set(v) <= {"get", "list", "watch"} for res, v in rules.items() if res not in writes)
    assert set(rules["validatingadmissionpolicybindings"]) == {"get", "create", "update"}
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    for role in roles:
        secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
        assert [r["verbs"] for r in secret_rules] == [["get"]]


def test_monitors_and_dashboard_are_optional() -> None:
    kinds = {d["kind"] for d in render()}
    assert not {"PodMonitor", "ServiceMonitor", "ConfigMap"} & kinds
    docs = render(
        "metrics.podMonitor.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "grafanaDashboard.enabled=true",
    )
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    assert pm["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    assert by_kind(docs, "ServiceMonitor")
    (cm,) = by_kind(docs, "ConfigMap")
    assert json.loads(cm["data"]["kubeft.json"])["uid"] == "kubeft-jobs"


def test_dashboard_queries_only_metrics_the_trainer_exports() -> None:
    from kubeft_trainer.metrics import METRICS, metric_name

    exported = {metric_name(n) for n in METRICS}
    dashboard = json.loads((CHART / "dashboards" / "kubeft.json").read_text())
    used = {
        m
        for p in dashboard["panels"]
        for t in p["targets"]
        for m in re.findall(r"kubeft_trainer_\w+", t["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used <= exported, f"dashboard queries series the trainer never exports: {used - exported}"


def test_bundled_minio_is_off_by_default_and_needs_a_password() -> None:
    assert not [d for d in render() if "minio" in d["metadata"]["name"]]
    res = subprocess.run(
        [str(BIN / "helm"), "template", "k", str(CHART), "--set", "minio.enabled=true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode != 0 and "minio.rootPassword" in res.stderr
    docs = render("minio.enabled=true", "minio.rootPassword=s3cr3t-pass")
    assert {d["kind"] for d in docs if "minio" in d["metadata"]["name"]} >= {
        "Deployment",
        "Service",
        "Secret",
    }


@pytest.mark.parametrize("dockerfile", ["operator/Dockerfile", "trainer_image/Dockerfile"])
def test_dockerfiles_copy_what_exists_and_run_non_root(dockerfile: str) -> None:
    path = REPO / dockerfile
    if not path.exists():
        pytest.fail(f"{dockerfile} is missing")
    text = path.read_text()
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY" and not any(p.startswith("--from") for p in parts):
            for src in [p for p in parts[1:-1] if not p.startswith("--")]:
                if src.endswith("*"):  # optional glob (COPY a* ./ copies nothing when absent)
                    continue
                assert (REPO / src).exists(), f"{dockerfile}: COPY source {src} does not exist"
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile} must end as a non-root USER"
    scripts = tomllib_scripts()
    entry = re.findall(r'(?:ENTRYPOINT|CMD) \[\s*"([^"]+)"', text)
    assert entry and entry[-1] in scripts, f"{dockerfile}: entry point {entry} is not a console script"


def tomllib_scripts() -> dict[str, str]:
    import tomllib

    return dict(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def test_alerting_rules_pass_promtool_and_the_chart_installs_them_unchanged() -> None:
    rules = CHART / "files" / "alerts.yaml"
    tests = Path(__file__).resolve().parent / "alerts_test.yaml"
    for argv in (["check", "rules", str(rules)], ["test", "rules", str(tests)]):
        res = subprocess.run(["promtool", *argv], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    assert by_kind(render(), "PrometheusRule") == []  # off by default
    (rule,) = by_kind(render("alerts.enabled=true", "alerts.labels.release=prom"), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(rules.read_text())
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"KubeftJobFailed", "KubeftTrainingStalled", "KubeftTrainingLossNotFinite"} <= alerts
    # the series the rules read are the ones the operator and the trainer export
    from kubeft_operator import metrics as operator_metrics
    from kubeft_trainer import metrics as trainer_metrics

    exported = {trainer_metrics.metric_name(n) for n in trainer_metrics.METRICS} | {
        "kubeft_operator_job_phase",
        operator_metrics.ERRORS._name + "_total",
    }
    used = set(re.findall(r"kubeft_[a-z_]+", rules.read_text()))
    assert used <= exported, used - exported


def test_more_than_one_replica_elects_a_leader_through_a_lease() -> None:
    (deploy,) = by_kind(render(), "Deployment")
    env = {e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KUBEFT_LEADER_ELECTION_LEASE" not in env and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert not [r for r in by_kind(render(), "Role") if r["metadata"]["name"].endswith("leader-election")]
    docs = render("operator.replicas=2")
    (deploy,) = by_kind(docs, "Deployment")
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBEFT_LEADER_ELECTION_LEASE"]["value"] == deploy["metadata"]["name"]
    assert env["KUBEFT_LEADER_ELECTION_LEASE_SECONDS"]["value"] == "10"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert deploy["spec"]["replicas"] == 2
    # the replicas may write that one Lease only, in the operator's own namespace
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert role["metadata"]["namespace"] == deploy["metadata"]["namespace"]
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": [deploy["metadata"]["name"]], "verbs": ["get", "update"]}]  # fmt: skip


def test_cluster_mode_reads_secrets_only_in_onboarded_namespaces() -> None:
    docs = render("onboardedNamespaces={team-a,team-b}")
    (secrets,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-secrets")]
    assert secrets["metadata"]["labels"]["kubeft.io/secret-reader"] == "true"
    (account,) = by_kind(docs, "ServiceAccount")
    sa = f"{account['metadata']['namespace']}/{account['metadata']['name']}"
    assert secrets["metadata"]["annotations"]["kubeft.io/service-account"] == sa
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": secrets["metadata"]["name"]}  # fmt: skip
        assert [f"{s['namespace']}/{s['name']}" for s in b["subjects"]] == [sa]
    # the old way, every namespace's Secrets, only when asked for
    docs = render("rbac.secrets=cluster")
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert [r["verbs"] for r in cluster_role["rules"] if "secrets" in r["resources"]] == [["get"]]
    with pytest.raises(AssertionError, match=r"rbac\.secrets must be onboarded or cluster, not everywhere"):
        render("rbac.secrets=everywhere")


NETPOL = (
    "networkPolicy.enabled=true",
    "networkPolicy.namespaces={team-a,team-b}",
    "networkPolicy.apiServer.to[0].ipBlock.cidr=10.0.0.1/32",
    "networkPolicy.storage.to[0].ipBlock.cidr=10.1.0.0/16",
)


def _trainer_pod(gpus: int) -> Any:
    """The trainer pod template the operator makes for a QLoRA job of a 1B model on ``gpus`` GPUs."""
    from kubeft_operator import resources
    from kubeft_operator.api import FineTuneJob
    from kubeft_operator.placement import GpuClass
    from kubeft_operator.plan import Plan

    from kubeft import estimate as est

    body = {
        "metadata": {"name": "j", "namespace": "team-a", "uid": "u"},
        "spec": {"model": {"source": "s3://m/"}, "dataset": {"source": "s3://d"}, "method": "qlora",
                 "storage": {"credentialsSecret": "s"}, "resources": {"gpus": gpus}},
    }  # fmt: skip
    job = FineTuneJob.from_body(body)
    shape = est.known_shape("llama-3.2-1b")
    setup = est.Setup.from_spec(job.spec, "qlora")
    h100 = GpuClass("NVIDIA-H100-80GB-HBM3", 80 * 2**30, ())
    plan = Plan("qlora", (h100,), gpus, est.estimate(shape, setup), shape=shape)
    return resources.get_pod_template(job, plan)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _port_allowed(ports: list[dict[str, Any]], port: int) -> bool:
    return any(
        p["port"] <= port <= p.get("endPort", p["port"]) and p.get("protocol", "TCP") == "TCP" for p in ports
    )


def test_no_network_policy_unless_enabled_and_then_clear_words_for_what_it_needs() -> None:
    assert not by_kind(render(), "NetworkPolicy")
    argv = ["template", "kubeft", str(CHART), "--set", "networkPolicy.enabled=true"]
    res = subprocess.run([str(BIN / "helm"), *argv], capture_output=True, text=True, check=False)
    assert res.returncode != 0 and "needs networkPolicy.namespaces (or watchNamespaces)" in res.stderr
    res = subprocess.run([str(BIN / "helm"), *argv, "--set", "watchNamespaces={team-a}"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode != 0 and "networkPolicy.apiServer.to is empty" in res.stderr


def test_the_network_policy_selects_the_trainer_pods_the_operator_makes_and_opens_what_they_use() -> None:
    """Nothing local enforces NetworkPolicy (no network plugin): this checks the rendered policy
    against the labels and ports the operator puts on a trainer pod."""
    policies = by_kind(render(*NETPOL), "NetworkPolicy")
    assert [p["metadata"]["namespace"] for p in policies] == ["team-a", "team-b"]
    spec = policies[0]["spec"]
    pod = _trainer_pod(gpus=4)
    labels = pod.metadata.labels
    assert _selects(spec["podSelector"], labels) and spec["policyTypes"] == ["Ingress", "Egress"]
    # not the operator's own pods, nor anything else in the namespace
    assert not _selects(
        spec["podSelector"], {**labels, contract.LABEL_COMPONENT: contract.COMPONENT_OPERATOR}
    )
    peers, scrape = spec["ingress"]
    # the job's other pods: every port (rendezvous, then NCCL/gloo on ports of their choosing)
    assert "ports" not in peers and _selects(peers["from"][0]["podSelector"], labels)
    # Prometheus reaches each metrics port of a 4-GPU pod, and only those
    metrics = [p.container_port for p in pod.spec.containers[0].ports if p.name.startswith("metrics")]
    assert len(metrics) == 4 and all(_port_allowed(scrape["ports"], p) for p in metrics)
    assert not _port_allowed(scrape["ports"], contract.RDZV_PORT)
    assert scrape["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    to_pods, dns, apiserver, storage = spec["egress"]
    assert "ports" not in to_pods and _selects(to_pods["to"][0]["podSelector"], labels)
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert apiserver["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}] and _port_allowed(
        apiserver["ports"], 6443
    )
    assert storage["to"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}] and _port_allowed(storage["ports"], 9000)
    # every egress rule names where it goes: none opens a port to the whole world
    assert all(rule.get("to") for rule in spec["egress"])


def test_the_hub_is_reachable_only_when_allowed_and_its_endpoint_reaches_operator_and_trainer() -> None:
    # not allowed (the default): pods, DNS, API server and storage only
    assert len(by_kind(render(*NETPOL), "NetworkPolicy")[0]["spec"]["egress"]) == 4
    docs = render(
        *NETPOL,
        "networkPolicy.hub.allowed=true",
        "networkPolicy.hub.to[0].ipBlock.cidr=10.9.0.7/32",
        "trainer.hubEndpoint=https://hf-mirror.internal",
        "trainer.imagePullSecrets={mirror-pull}",
    )
    hub = by_kind(docs, "NetworkPolicy")[0]["spec"]["egress"][-1]
    assert hub == {"to": [{"ipBlock": {"cidr": "10.9.0.7/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    (deploy,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBEFT_HF_ENDPOINT"] == "https://hf-mirror.internal"
    assert env["KUBEFT_TRAINER_IMAGE_PULL_SECRETS"] == "mirror-pull"
    from kubeft_operator.settings import Settings

    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("KUBEFT_") and v is not None})
    assert settings.trainer_image_pull_secrets == ("mirror-pull",)
    assert settings.hf_endpoint == "https://hf-mirror.internal"


@pytest.mark.stack
def test_the_rendered_network_policy_is_accepted_by_the_api_server(api_client: Any, namespace: str) -> None:
    from kubernetes import client

    net = client.NetworkingV1Api(api_client)
    sets = [s for s in NETPOL if not s.startswith("networkPolicy.namespaces")]
    docs = render(*sets, f"networkPolicy.namespaces={{{namespace}}}", "networkPolicy.hub.allowed=true")
    (policy,) = by_kind(docs, "NetworkPolicy")
    net.create_namespaced_network_policy(namespace, policy)
    stored = net.read_namespaced_network_policy(policy["metadata"]["name"], namespace)
    assert stored.spec.ingress[1].ports[0].end_port == 9407 and len(stored.spec.egress) == 5
