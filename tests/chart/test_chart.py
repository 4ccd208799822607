"""The Helm chart: it lints, renders what a platform team expects, and stays in step with crds/."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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
