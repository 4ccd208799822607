"""The operator against the real local stack: placement, retries, suspend, restart, deletion, secrets.

The trainer is tests/operator/fake_trainer.py, run by the stack's pod runner as the
pod's process; its behaviour follows the job's name (fail-, oom-, bad-, ok-, else runs).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import subprocess
import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import contract
from kubeft import estimate as est

pytestmark = pytest.mark.stack


def phase(jobs: Any, name: str) -> str:
    return str((jobs.get(name).get("status") or {}).get("phase") or "")


def job_pods(core_v1: Any, namespace: str, name: str) -> list[Any]:
    items = core_v1.list_namespaced_pod(namespace, label_selector=f"{contract.LABEL_JOB}={name}").items
    return sorted(items, key=lambda p: p.metadata.name)


def events(core_v1: Any, namespace: str, name: str) -> list[Any]:
    return [e for e in core_v1.list_namespaced_event(namespace).items if e.involved_object.name == name]


@pytest.mark.parametrize(
    ("shape", "method", "products"),
    [
        ("llama-3.2-1b", "qlora", {"NVIDIA-L4"}),
        ("llama-3.1-8b", "lora", {"NVIDIA-L4", "NVIDIA-A100-SXM4-40GB"}),
    ],
)
def test_job_is_placed_on_the_smallest_fitting_gpu_class(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any, shape: str, method: str,
    products: set[str],
) -> None:  # fmt: skip
    name = f"place-{method}"
    with run_operator() as runner:
        model = {"source": "s3://models/m/", "architecture": ftj.shape(shape)}
        jobs.create(ftj.job_manifest(name, method=method, model=model))
        ftj.wait_for(lambda: (jobs.get(name).get("status") or {}).get("gpu"), what="a placement")
        status = jobs.get(name)["status"]
        pods = ftj.wait_for(lambda: [p for p in job_pods(core_v1, jobs.ns, name) if p.spec.node_name],
                            what="the trainer pod bound to a node")  # fmt: skip
    assert runner.exception is None
    assert status["gpu"]["product"] in products
    assert status["vram"]["method"] == method and status["vram"]["estimatedBytes"] > 0
    node = core_v1.read_node(pods[0].spec.node_name)
    assert node.metadata.labels[contract.LABEL_GPU_PRODUCT] == status["gpu"]["product"]
    assert len(pods) == 1
    assert ftj.condition(jobs.get(name), "Schedulable")["reason"] == "GPUFits"


def test_nothing_fits_stays_pending_with_a_clear_condition_and_no_pod(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any
) -> None:
    with run_operator() as runner:
        model = {"source": "s3://models/m/", "architecture": ftj.shape("llama-3.1-70b")}
        jobs.create(ftj.job_manifest("huge", method="full", model=model))
        cond = ftj.wait_for(lambda: ftj.condition(jobs.get("huge"), "Schedulable"), what="Schedulable")
    assert runner.exception is None
    assert cond["status"] == "False" and cond["reason"] == "InsufficientGPUMemory"
    assert "NVIDIA-H100-80GB-HBM3" in cond["message"] and "GiB" in cond["message"]
    assert phase(jobs, "huge") == "Pending"
    assert job_pods(core_v1, jobs.ns, "huge") == []


def test_a_gke_node_without_gpu_feature_discovery_is_used_and_pinned_by_its_accelerator_label(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, api_client: Any, ftj: Any
) -> None:
    from kubeft.dev import nodes

    # GKE labels its GPU nodes cloud.google.com/gke-accelerator and runs no GPU Feature Discovery
    gke = nodes.NodeSpec("gke-t4-0", "Tesla-T4", 15360, 1, cpu="8", memory="30Gi", gfd=False,
                         labels=(("cloud.google.com/gke-accelerator", "nvidia-tesla-t4"),))  # fmt: skip
    nodes.register(api_client, (gke,))
    try:
        nodes.wait_ready(api_client, nodes=(gke,))
        with run_operator() as runner:
            jobs.create(ftj.job_manifest("on-gke"))
            # a 1B QLoRA fits the T4, the smallest class: placed there, and the scheduler agrees
            (pod,) = ftj.wait_for(
                lambda: [p for p in job_pods(core_v1, jobs.ns, "on-gke") if p.spec.node_name],
                what="the trainer pod bound to a node",
            )
        assert runner.exception is None
        assert jobs.get("on-gke")["status"]["gpu"]["product"] == "Tesla-T4"
        assert pod.spec.node_name == "gke-t4-0"
        terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        (term,) = terms.node_selector_terms
        assert [(e.key, e.values) for e in term.match_expressions] == [
            ("cloud.google.com/gke-accelerator", ["nvidia-tesla-t4"])
        ]
    finally:
        core_v1.delete_node(gke.name)


def test_model_config_is_read_from_minio_and_an_unreadable_one_is_a_condition(
    jobs: Any, credentials: Any, run_operator: Any, ftj: Any, stack: Any, minio_client: Any, bucket: str
) -> None:
    import io

    raw = json.dumps(est.KNOWN_SHAPES["llama-3.2-1b"]).encode()
    minio_client.put_object(bucket, "llama/config.json", io.BytesIO(raw), len(raw))
    storage = {"credentialsSecret": "storage-creds", "endpoint": stack.minio_endpoint}
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("from-s3", model={"source": f"s3://{bucket}/llama/"}, storage=storage))
        jobs.create(
            ftj.job_manifest("no-config", model={"source": f"s3://{bucket}/missing/"}, storage=storage)
        )
        placed = ftj.wait_for(lambda: (jobs.get("from-s3").get("status") or {}).get("gpu"), what="placement")
        invalid = ftj.wait_for(lambda: ftj.condition(jobs.get("no-config"), "Validated"), what="Validated")
    assert runner.exception is None
    assert placed["product"] == "NVIDIA-L4"
    assert invalid["status"] == "False" and invalid["reason"] == "ModelConfigUnavailable"
    assert f"s3://{bucket}/missing/config.json" in invalid["message"]


def test_a_missing_dataset_is_a_condition_and_the_job_starts_once_it_is_uploaded(
    jobs: Any,
    credentials: Any,
    run_operator: Any,
    core_v1: Any,
    ftj: Any,
    stack: Any,
    bucket: str,
    s3_dataset: Any,
) -> None:
    storage = {"credentialsSecret": "storage-creds", "endpoint": stack.minio_endpoint}
    later = f"s3://{bucket}/uploads/later.jsonl"
    present = ftj.job_manifest()["spec"]["dataset"]["source"]
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("waits", dataset={"source": later}, storage=storage))
        jobs.create(
            ftj.job_manifest(
                "no-bucket", dataset={"source": f"s3://{bucket}-gone/train.jsonl"}, storage=storage
            )
        )
        jobs.create(
            ftj.job_manifest(
                "no-eval",
                dataset={"source": present, "eval": {"source": f"s3://{bucket}/eval/"}},
                storage=storage,
            )
        )

        def validated(name: str) -> Any:
            return ftj.wait_for(lambda: ftj.condition(jobs.get(name), "Validated"), what=f"{name} Validated")

        waits, gone, no_eval = validated("waits"), validated("no-bucket"), validated("no-eval")
        assert phase(jobs, "waits") == "Pending"
        assert job_pods(core_v1, jobs.ns, "waits") == []
        s3_dataset(later)  # the data arrives after the job (a GitOps repo, a pipeline)
        ftj.wait_for(lambda: job_pods(core_v1, jobs.ns, "waits"), what="a pod once the dataset exists")
    assert runner.exception is None
    assert waits["status"] == "False" and waits["reason"] == "DatasetNotFound"
    assert f"spec.dataset.source {later}: no such object or prefix in bucket {bucket}" in waits["message"]
    assert "waits for it" in waits["message"]
    assert gone["reason"] == "DatasetNotFound" and f"bucket {bucket}-gone does not exist" in gone["message"]
    assert no_eval["reason"] == "DatasetNotFound" and "spec.dataset.eval.source" in no_eval["message"]
    assert job_pods(core_v1, jobs.ns, "no-eval") == []
    assert ftj.condition(jobs.get("waits"), "Validated")["status"] == "True"
    warnings = [e for e in events(core_v1, jobs.ns, "waits") if e.reason == "DatasetNotFound"]
    assert warnings and warnings[0].type == "Warning"


def test_a_missing_claim_is_a_condition_and_the_job_starts_once_it_exists(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any
) -> None:
    model = {**ftj.job_manifest()["spec"]["model"], "source": "pvc://weights/llama-3.2-1b"}
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("on-pvc", model=model))
        waiting = ftj.wait_for(lambda: ftj.condition(jobs.get("on-pvc"), "Validated"), what="Validated")
        assert job_pods(core_v1, jobs.ns, "on-pvc") == []
        core_v1.create_namespaced_persistent_volume_claim(
            jobs.ns,
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name="weights"),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadOnlyMany"],
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
                ),
            ),
        )
        (pod,) = ftj.wait_for(
            lambda: job_pods(core_v1, jobs.ns, "on-pvc"), what="a pod once the claim exists"
        )

        def scheduler_says() -> Any:
            c = ftj.condition(jobs.get("on-pvc"), "Scheduled")
            return c if c and "unbound" in c["message"] else None

        # no PersistentVolume binds the claim: the scheduler says so, and so does the job
        scheduled = ftj.wait_for(scheduler_says, what="the scheduler's reason in the Scheduled condition")
    assert runner.exception is None
    assert scheduled["status"] == "False" and scheduled["reason"] == "WaitingForNode"
    assert "pod has unbound immediate PersistentVolumeClaims" in scheduled["message"]
    assert "unbound immediate PersistentVolumeClaims" in jobs.get("on-pvc")["status"]["message"]
    assert waiting["status"] == "False" and waiting["reason"] == "ClaimNotFound"
    assert waiting["message"] == (
        f"spec.model.source: PersistentVolumeClaim 'weights' not found in namespace {jobs.ns}; "
        "the job waits for it"
    )
    claims = [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim]
    assert claims == ["weights"]


def test_model_config_is_read_from_the_hub_with_the_secrets_token(
    jobs: Any,
    credentials: dict[str, str],
    run_operator: Any,
    ftj: Any,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubeft.dev import fakehub

    llama = tmp_path / "llama-8b"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps(est.KNOWN_SHAPES["llama-3.1-8b"]))
    token = credentials[contract.SECRET_HF_TOKEN]
    repos = {("model", "meta-llama/Llama-3.1-8B-Instruct"): llama, ("model", "org/other-gated"): llama}
    gated = {
        ("model", "meta-llama/Llama-3.1-8B-Instruct"): token,
        ("model", "org/other-gated"): "hf_not_ours",
    }
    with fakehub.serve(fakehub.FakeHub(repos, gated)) as hub:
        monkeypatch.setenv("KUBEFT_HF_ENDPOINT", hub.url)
        with run_operator() as runner:
            jobs.create(
                ftj.job_manifest("from-hub", model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct"})
            )
            jobs.create(ftj.job_manifest("gated", model={"source": "hf://org/other-gated@v2"}))
            placed = ftj.wait_for(
                lambda: (jobs.get("from-hub").get("status") or {}).get("gpu"), what="placement"
            )
            refused = ftj.wait_for(lambda: ftj.condition(jobs.get("gated"), "Validated"), what="Validated")
    assert runner.exception is None
    # the 8B shape came from the hub's config.json: QLoRA of 8B fits the L4
    vram = jobs.get("from-hub")["status"]["vram"]
    weights = est.estimate(est.known_shape("llama-3.1-8b"), est.Setup(method="qlora")).weights
    assert placed["product"] == "NVIDIA-L4" and vram["breakdown"]["weights"] == weights
    config_reads = [r for r in hub.requests if r[1].endswith("/config.json")]
    assert ("GET", "/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json", token) in config_reads
    assert ("GET", "/org/other-gated/resolve/v2/config.json", token) in config_reads  # the revision
    assert refused["status"] == "False" and refused["reason"] == "ModelConfigUnavailable"
    assert refused["message"] == (
        "cannot read config.json of hf://org/other-gated@v2: HTTP 403 "
        "(gated or private: put hfToken in the credentials Secret)"
    )


def test_failed_pods_are_retried_with_backoff_then_the_job_fails_after_the_limit(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any
) -> None:
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("fail-retry", backoffLimit=2))
        # the Job controller's own backoff between attempts: 10 s, then 20 s
        ftj.wait_for(lambda: phase(jobs, "fail-retry") == "Failed", timeout=120, what="Failed")
    assert runner.exception is None
    status = jobs.get("fail-retry")["status"]
    assert status["restarts"] == 2 and status["trainerJob"] == "fail-retry-trainer"
    cond = ftj.condition(jobs.get("fail-retry"), "Failed")
    assert cond["reason"] == "BackoffLimitExceeded"
    assert "simulated trainer crash" in cond["message"]
    # the Job controller made the three attempts, each pod of the one Job
    pods = job_pods(core_v1, jobs.ns, "fail-retry")
    assert len(pods) == 3 and {p.metadata.owner_references[0].name for p in pods} == {"fail-retry-trainer"}
    assert all(p.status.phase == "Failed" for p in pods)
    trainer_job = client.BatchV1Api(core_v1.api_client).read_namespaced_job("fail-retry-trainer", jobs.ns)
    assert trainer_job.status.failed == 3 and trainer_job.spec.backoff_limit == 2
    reasons = [e.reason for e in events(core_v1, jobs.ns, "fail-retry")]
    assert reasons.count("PodFailed") >= 2 and "BackoffLimitExceeded" in reasons


def test_out_of_memory_failure_says_so_and_suggests_a_fix(
    jobs: Any, credentials: Any, run_operator: Any, ftj: Any
) -> None:
    with run_operator():
        jobs.create(ftj.job_manifest("oom-job", backoffLimit=0))
        ftj.wait_for(lambda: phase(jobs, "oom-job") == "Failed", what="Failed")
    cond = ftj.condition(jobs.get("oom-job"), "Failed")
    assert cond["reason"] == "OOMKilled"
    assert "CUDA out of memory" in cond["message"] and "smaller batchSize" in cond["message"]


def test_invalid_input_is_not_retried_and_success_completes(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any, monkeypatch: pytest.MonkeyPatch,
    stack: Any,
) -> None:  # fmt: skip
    import socket

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KUBEFT_METRICS_PORT", str(port))
    with run_operator():
        jobs.create(ftj.job_manifest("bad-input", backoffLimit=3))
        jobs.create(ftj.job_manifest("ok-job"))
        ftj.wait_for(lambda: phase(jobs, "bad-input") == "Failed", what="bad-input Failed")
        ftj.wait_for(lambda: phase(jobs, "ok-job") == "Succeeded", what="ok-job Succeeded")

        def exposition() -> str:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return text if f'job="ok-job",namespace="{jobs.ns}",phase="Succeeded"' in text else ""

        # what the alerts read (charts/kubeft/files/alerts.yaml): each job's phase, labelled with it
        text = ftj.wait_for(exposition, what="the phases in the operator's metrics")
    assert f'kubeft_operator_job_phase{{job="bad-input",namespace="{jobs.ns}",phase="Failed"}} 1.0' in text
    assert f'kubeft_operator_job_phase{{job="ok-job",namespace="{jobs.ns}",phase="Succeeded"}} 1.0' in text
    assert ftj.condition(jobs.get("bad-input"), "Failed")["reason"] == "InvalidInput"
    assert len(job_pods(core_v1, jobs.ns, "bad-input")) == 1
    assert (jobs.get("bad-input")["status"].get("restarts") or 0) == 0
    ok = jobs.get("ok-job")["status"]
    assert ok["completionTime"] and ftj.condition(jobs.get("ok-job"), "Succeeded")["status"] == "True"
    # kstatus, as `kubectl wait --for=condition=Ready` and Flux read it: Ready, and Stalled on failure
    assert ftj.condition(jobs.get("ok-job"), "Ready")["status"] == "True"
    assert ftj.condition(jobs.get("ok-job"), "Reconciling")["status"] == "False"
    stalled = ftj.condition(jobs.get("bad-input"), "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidInput")
    assert ftj.condition(jobs.get("bad-input"), "Ready")["status"] == "False"
    kubectl = [str(stack.bin_dir / "kubectl"), "--kubeconfig", str(stack.kubeconfig), "-n", jobs.ns]
    waited = subprocess.run([*kubectl, "wait", "--for=condition=Ready", "ftj/ok-job", "--timeout=10s"],
                            capture_output=True, text=True)  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    assert "condition met" in waited.stdout


def test_operator_restart_mid_reconcile_never_makes_a_second_pod(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, custom_objects: Any, ftj: Any
) -> None:
    batch = client.BatchV1Api(core_v1.api_client)
    with run_operator():
        jobs.create(ftj.job_manifest("restart"))
        ftj.wait_for(lambda: job_pods(core_v1, jobs.ns, "restart"), what="the pod")
        ftj.wait_for(lambda: (jobs.get("restart").get("status") or {}).get("pod"), what="status.pod")
    first = job_pods(core_v1, jobs.ns, "restart")[0].metadata.uid
    # the operator died after creating the Job but before recording it
    custom_objects.patch_namespaced_custom_object_status(
        contract.GROUP, contract.VERSION, jobs.ns, contract.PLURAL, "restart",
        [{"op": "remove", "path": "/status/pod"}, {"op": "remove", "path": "/status/trainerJob"},
         {"op": "replace", "path": "/status/phase", "value": "Pending"}],
        _content_type="application/json-patch+json",
    )  # fmt: skip
    with run_operator() as runner:
        ftj.wait_for(lambda: (jobs.get("restart").get("status") or {}).get("pod"), what="adoption")
        ftj.wait_for(lambda: phase(jobs, "restart") in ("Scheduling", "Initializing"), what="phase")
    with run_operator():  # and a plain restart changes nothing
        ftj.wait_for(lambda: phase(jobs, "restart") == "Initializing", what="Initializing")
    assert runner.exception is None
    assert [p.metadata.uid for p in job_pods(core_v1, jobs.ns, "restart")] == [first]
    assert [j.metadata.name for j in batch.list_namespaced_job(jobs.ns).items] == ["restart-trainer"]
    assert jobs.get("restart")["status"]["trainerJob"] == "restart-trainer"


def test_suspend_stops_the_pod_and_resume_starts_a_new_one(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any
) -> None:
    def live() -> list[str]:
        return [
            p.metadata.name
            for p in job_pods(core_v1, jobs.ns, "pausable")
            if not p.metadata.deletion_timestamp
        ]

    batch = client.BatchV1Api(core_v1.api_client)
    deadline = 15
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("pausable", activeDeadlineSeconds=deadline))
        ftj.wait_for(lambda: phase(jobs, "pausable") == "Initializing", what="Initializing")
        first = live()
        jobs.patch("pausable", {"spec": {"suspend": True}})
        ftj.wait_for(lambda: phase(jobs, "pausable") == "Suspended", what="Suspended")
        ftj.wait_for(lambda: live() == [], what="the pod to be deleted")
        assert ftj.condition(jobs.get("pausable"), "Suspended")["status"] == "True"
        assert batch.read_namespaced_job("pausable-trainer", jobs.ns).spec.suspend is True
        # the deadline passes while suspended: its clock stands still (the operator reconciles every 1 s)
        suspended_at = dt.datetime.now(dt.UTC)
        time.sleep(deadline + 3)
        assert phase(jobs, "pausable") == "Suspended"
        jobs.patch("pausable", {"spec": {"suspend": False}})
        ftj.wait_for(lambda: len(live()) == 1 and live() != first, what="a new pod")
        ftj.wait_for(lambda: phase(jobs, "pausable") in ("Scheduling", "Initializing"), what="resumed phase")
    assert runner.exception is None
    status = jobs.get("pausable")["status"]
    assert ftj.condition(jobs.get("pausable"), "Suspended")["status"] == "False"
    # the suspended pod's SIGTERM (exit 143) cost no retry
    assert (status.get("restarts") or 0) == 0
    # the deadline counts again from the resume: the Job's clock started again
    trainer_job = batch.read_namespaced_job("pausable-trainer", jobs.ns)
    assert trainer_job.status.start_time >= suspended_at + dt.timedelta(seconds=deadline)
    assert not trainer_job.status.failed


def test_deleting_the_job_deletes_everything_it_owns(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, api_client: Any, ftj: Any
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    ns = jobs.ns
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("doomed"))
        ftj.wait_for(lambda: job_pods(core_v1, ns, "doomed"), what="the pod")
        assert core_v1.read_namespaced_config_map("doomed-config", ns)
        assert client.BatchV1Api(api_client).read_namespaced_job("doomed-trainer", ns)
        assert rbac.read_namespaced_role("doomed-trainer", ns).rules[0].resource_names == ["doomed"]
        jobs.delete("doomed")

        def gone() -> bool:
            try:
                jobs.get("doomed")
                return False
            except ApiException as exc:
                return exc.status == 404

        ftj.wait_for(gone, what="the FineTuneJob to go")

        def children_gone() -> bool:
            leftovers = [
                core_v1.list_namespaced_config_map(ns, label_selector=f"{contract.LABEL_JOB}=doomed").items,
                core_v1.list_namespaced_service_account(
                    ns, label_selector=f"{contract.LABEL_JOB}=doomed"
                ).items,
                rbac.list_namespaced_role(ns, label_selector=f"{contract.LABEL_JOB}=doomed").items,
                rbac.list_namespaced_role_binding(ns, label_selector=f"{contract.LABEL_JOB}=doomed").items,
                client.BatchV1Api(api_client).list_namespaced_job(ns).items,
                [p for p in job_pods(core_v1, ns, "doomed") if not p.metadata.deletion_timestamp],
            ]
            return not any(leftovers)

        ftj.wait_for(children_gone, what="the garbage collector")
    assert runner.exception is None


def test_secret_values_never_appear_in_any_object_the_operator_writes(
    jobs: Any, run_operator: Any, core_v1: Any, api_client: Any, ftj: Any
) -> None:
    ns = jobs.ns
    values = {k: f"{k}-{uuid.uuid4().hex}" for k in ("accessKey", "secretKey", "hfToken")}
    core_v1.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="private"),
        data={k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    ))  # fmt: skip
    storage = {"credentialsSecret": "private"}
    # the Secret's keys are random, so no storage would take them: a hub dataset, which the
    # operator leaves to the trainer, lets the job be placed without asking storage (the operator's
    # dataset check is keyed by credentials: another test's read with the stack's keys is no help)
    dataset = {"source": "hf://org/private-data"}
    with run_operator():
        jobs.create(ftj.job_manifest("secretive", storage=storage, dataset=dataset))
        jobs.create(ftj.job_manifest("fail-secretive", storage=storage, dataset=dataset, backoffLimit=0))
        ftj.wait_for(lambda: phase(jobs, "secretive") == "Initializing", what="Initializing")
        ftj.wait_for(lambda: phase(jobs, "fail-secretive") == "Failed", what="Failed")
    rbac = client.RbacAuthorizationV1Api(api_client)
    written = [
        jobs.get("secretive"), jobs.get("fail-secretive"),
        *core_v1.list_namespaced_config_map(ns).items, *core_v1.list_namespaced_pod(ns).items,
        *core_v1.list_namespaced_event(ns).items, *core_v1.list_namespaced_service_account(ns).items,
        *rbac.list_namespaced_role(ns).items, *rbac.list_namespaced_role_binding(ns).items,
        *client.BatchV1Api(api_client).list_namespaced_job(ns).items,
    ]  # fmt: skip
    text = json.dumps(api_client.sanitize_for_serialization(written))
    encoded = [base64.b64encode(v.encode()).decode() for v in values.values()]
    assert "secretive" in text  # the scan sees the objects
    for secret in [*values.values(), *encoded]:
        assert secret not in text
    env = {e.name: e for e in job_pods(core_v1, ns, "secretive")[0].spec.containers[0].env}
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "private"


def test_a_resource_quota_refusal_is_a_condition_with_the_quotas_message_until_there_is_room(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any
) -> None:
    ns = jobs.ns
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="gpus"),
        spec=client.V1ResourceQuotaSpec(hard={"requests.nvidia.com/gpu": "0"}),
    )
    core_v1.create_namespaced_resource_quota(ns, quota)
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("over-quota"))

        def refused() -> Any:
            c = ftj.condition(jobs.get("over-quota"), "Scheduled")
            return c if c and c["reason"] == "QuotaExceeded" else None

        # the Job controller's pod create is refused: its FailedCreate event, read back as a condition
        scheduled = ftj.wait_for(refused, what="a QuotaExceeded condition")
        assert scheduled["status"] == "False"
        # the quota's own words, in the condition, the status message and one Warning event
        assert "exceeded quota: gpus" in scheduled["message"]
        assert "requests.nvidia.com/gpu" in scheduled["message"]
        status = jobs.get("over-quota")["status"]
        assert status["phase"] == "Pending" and "exceeded quota: gpus" in status["message"]
        time.sleep(3)  # more ticks, more refusals: still one event
        refusals = [e for e in events(core_v1, ns, "over-quota") if e.reason == "QuotaExceeded"]
        assert len(refusals) == 1 and refusals[0].type == "Warning"
        assert job_pods(core_v1, ns, "over-quota") == [] and status["trainerJob"] == "over-quota-trainer"
        # room in the quota: the Job controller's next try creates the pod, and no attempt was used up
        core_v1.delete_namespaced_resource_quota("gpus", ns)
        ftj.wait_for(lambda: job_pods(core_v1, ns, "over-quota"), timeout=120, what="the trainer pod")
        ftj.wait_for(lambda: phase(jobs, "over-quota") in ("Scheduling", "Initializing"), what="placed")
    assert runner.exception is None
    assert not jobs.get("over-quota")["status"].get("restarts")


def test_a_finished_job_costs_no_reconcile_and_keeps_its_phase_in_the_metrics(
    jobs: Any, credentials: Any, run_operator: Any, ftj: Any
) -> None:
    from kubeft_operator import metrics
    from prometheus_client import REGISTRY

    def reconciles() -> float:
        return REGISTRY.get_sample_value("kubeft_operator_reconcile_duration_seconds_count") or 0.0

    with run_operator() as runner:
        jobs.create(ftj.job_manifest("ok-idle"))
        ftj.wait_for(lambda: phase(jobs, "ok-idle") not in ("", "Pending"), what="placed")
        # a running job carries no finalizer either: deleting it needs no operator
        running_finalizers = jobs.get("ok-idle")["metadata"].get("finalizers") or []
        ftj.wait_for(lambda: phase(jobs, "ok-idle") == "Succeeded", what="Succeeded")
        time.sleep(2)  # the last watch events of the job and its pod are handled
        before = reconciles()
        time.sleep(5)  # five retry intervals of the tests' 1 s
        idle = reconciles() - before
        phases = {(ns, n): p for (ns, n), p in metrics._phases.items() if n == "ok-idle"}
        # nothing to do on its deletion either: no finalizer, so it can be deleted with no operator
        finalizers = jobs.get("ok-idle")["metadata"].get("finalizers") or []
    assert runner.exception is None
    assert idle == 0, f"{idle} reconciles of a finished job in 5 s"
    assert phases == {(jobs.ns, "ok-idle"): "Succeeded"}  # the alerts still see it, from the watch
    assert "kubeft.io/finalizer" not in finalizers
    assert "kubeft.io/finalizer" not in running_finalizers


def test_cleanup_delete_removes_the_runs_objects_with_the_job_and_retain_keeps_them(
    jobs: Any, credentials: Any, run_operator: Any, ftj: Any, stack: Any
) -> None:
    mc = stack.minio_client()
    bucket = "kubeft-cleanup"
    if not mc.bucket_exists(bucket):
        mc.make_bucket(bucket)
    storage = {"credentialsSecret": "storage-creds", "bucket": bucket, "endpoint": stack.minio_endpoint}
    with run_operator() as runner:
        for name, cleanup in (("doomed-run", "Delete"), ("kept-run", "Retain")):
            jobs.create(ftj.job_manifest(name, storage=storage, cleanup=cleanup, suspend=True))
        # what a run leaves: a checkpoint and an artifact under <ns>/<name>/<uid>/
        runs = {}
        for name in ("doomed-run", "kept-run"):
            uid = jobs.get(name)["metadata"]["uid"]
            runs[name] = contract.job_prefix(jobs.ns, name, uid)
            for key in ("checkpoints/step-2/manifest.json", "artifacts/adapter/adapter_config.json"):
                mc.put_object(bucket, f"{runs[name]}/{key}", io.BytesIO(b"{}"), 2)
        # another run of the same name (an older UID) is not this job's to delete
        mc.put_object(bucket, f"{jobs.ns}/doomed-run/older-uid/checkpoints/step-1/x", io.BytesIO(b"x"), 1)
        ftj.wait_for(lambda: phase(jobs, "doomed-run") == "Suspended", what="Suspended")
        assert "kubeft.io/finalizer" in jobs.get("doomed-run")["metadata"].get("finalizers", [])
        jobs.delete("doomed-run")
        jobs.delete("kept-run")

        def gone(name: str) -> bool:
            try:
                jobs.get(name)
            except ApiException as exc:
                return exc.status == 404
            return False

        ftj.wait_for(lambda: gone("doomed-run") and gone("kept-run"), what="both jobs deleted")
    assert runner.exception is None

    def keys(prefix: str) -> list[str]:
        return [o.object_name for o in mc.list_objects(bucket, prefix=prefix + "/", recursive=True)]

    assert keys(runs["doomed-run"]) == []
    assert len(keys(runs["kept-run"])) == 2
    assert keys(f"{jobs.ns}/doomed-run/older-uid") == [f"{jobs.ns}/doomed-run/older-uid/checkpoints/step-1/x"]


def test_the_trainer_pod_passes_pod_security_restricted_and_writes_only_to_its_volumes(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any, stack: Any
) -> None:
    """The real apiserver enforces PodSecurity `restricted` on the namespace: the trainer pod is
    admitted and runs to Succeeded. Under the pod runner its root filesystem is read-only (a mount
    namespace, kubeft/dev/rootfs.py): the fake trainer writes where the trainer, torch, triton and
    the hub write, and fails to write to its working directory, its image and its config."""
    from kubeft.dev.podrunner import readonly_root_supported

    ns = jobs.ns
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core_v1.patch_namespace(ns, {"metadata": {"labels": labels}})
    # the apiserver enforces it here: a pod that may escalate is refused
    careless = client.V1Pod(
        metadata=client.V1ObjectMeta(name="careless"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
    )
    with pytest.raises(ApiException) as refused:
        core_v1.create_namespaced_pod(ns, careless)
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body
    name = "writes-restricted" if readonly_root_supported() else "ok-restricted"
    with run_operator() as runner:
        jobs.create(ftj.job_manifest(name))
        # web identity (no Secret): its projected token volume is allowed under restricted too
        keyless = {"bucket": "kubeft", "roleArn": stack.web_identity_role_arn}
        jobs.create(ftj.job_manifest("restricted-keyless", storage=keyless))
        (wid,) = ftj.wait_for(
            lambda: job_pods(core_v1, ns, "restricted-keyless"), what="the web-identity trainer pod admitted"
        )
        ftj.wait_for(lambda: phase(jobs, name) in ("Succeeded", "Failed"), what="the job finished")
    assert runner.exception is None
    # both projected: the API token (status patch) and the storage token (STS)
    from kubeft import webidentity

    assert {v.name for v in wid.spec.volumes if v.projected is not None} >= {webidentity.TOKEN_VOLUME}
    (pod,) = job_pods(core_v1, ns, name)
    message = pod.status.container_statuses[0].state.terminated.message
    assert phase(jobs, name) == "Succeeded", message
    assert not [e for e in core_v1.list_namespaced_event(ns).items if e.reason == "FailedCreate"]
    c = pod.spec.containers[0]
    assert c.security_context.read_only_root_filesystem and c.security_context.capabilities.drop == ["ALL"]
    assert pod.spec.automount_service_account_token is False
    if name.startswith("writes-"):
        # HOME, TMPDIR, the caches and the work directory took a file; the rest is read-only
        assert message.startswith("wrote to HOME, TMPDIR, XDG_CACHE_HOME, HF_HOME, TRITON_CACHE_DIR"), message
        assert message.count("Read-only file system") == 3 and message.endswith("wrong: "), message
    # the same pod with one field changed is refused: the test checks what the operator makes
    c.security_context.allow_privilege_escalation = True
    bold = client.V1Pod(metadata=client.V1ObjectMeta(name="bold"), spec=pod.spec)
    bold.spec.node_name = None
    with pytest.raises(ApiException) as refused:
        core_v1.create_namespaced_pod(ns, bold)
    assert "allowPrivilegeEscalation != false" in refused.value.body


def test_a_model_config_read_with_one_tenants_keys_is_not_vouched_for_anothers(
    stack: Any, minio_client: Any, bucket: str
) -> None:
    from kubeft_operator import modelconfig
    from kubeft_operator.api import FineTuneJob

    config = json.dumps(est.KNOWN_SHAPES["llama-3.2-1b"]).encode()
    minio_client.put_object(bucket, "private-model/config.json", io.BytesIO(config), len(config))
    model = {"source": f"s3://{bucket}/private-model/"}
    body = {
        "metadata": {"name": "j", "namespace": "ns"},
        "spec": {"model": model, "dataset": {"source": "x"}},
    }
    spec = FineTuneJob.from_body(body).spec
    owner = {"accessKey": stack.minio_access_key, "secretKey": stack.minio_secret_key}
    stranger = {"accessKey": "someone-else", "secretKey": "not-the-owners-secret"}
    modelconfig.clear_cache()
    args = {"endpoint": stack.minio_endpoint, "hf_endpoint": "http://127.0.0.1:9", "timeout": 5.0}
    assert modelconfig.model_shape(spec, credentials=owner, **args).hidden_size == 2048
    # the owner's read is cached, but only for the owner's keys: the stranger is asked for theirs
    with pytest.raises(modelconfig.ModelConfigError, match="InvalidAccessKeyId"):
        modelconfig.model_shape(spec, credentials=stranger, **args)
    assert modelconfig.model_shape(spec, credentials=owner, **args).hidden_size == 2048


def test_an_evicted_pod_costs_no_retry_and_the_job_starts_another(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any
) -> None:
    """The eviction API (what `kubectl drain` and node-pressure tooling use) marks the pod
    DisruptionTarget; the trainer Job's pod failure policy ignores it."""
    ns = jobs.ns

    def running() -> list[Any]:
        return [
            p for p in job_pods(core_v1, ns, "evictable")
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        ]  # fmt: skip

    with run_operator() as runner:
        jobs.create(ftj.job_manifest("evictable", backoffLimit=0))
        (first,) = ftj.wait_for(running, what="the trainer pod running")
        core_v1.create_namespaced_pod_eviction(
            first.metadata.name, ns,
            client.V1Eviction(metadata=client.V1ObjectMeta(name=first.metadata.name, namespace=ns)),
        )  # fmt: skip
        (second,) = ftj.wait_for(
            lambda: [p for p in running() if p.metadata.uid != first.metadata.uid], what="a new pod"
        )
        ftj.wait_for(lambda: phase(jobs, "evictable") == "Initializing", what="Initializing again")
    assert runner.exception is None
    status = jobs.get("evictable")["status"]
    # backoffLimit 0: had the eviction counted, the job would have failed
    assert not status.get("restarts") and status["pod"] == second.metadata.name
    trainer_job = client.BatchV1Api(core_v1.api_client).read_namespaced_job("evictable-trainer", ns)
    assert not trainer_job.status.failed and trainer_job.spec.backoff_limit == 0


def test_a_two_node_job_is_two_indexed_pods_that_meet_at_index_0_through_the_headless_service(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, api_client: Any, ftj: Any
) -> None:
    ns = jobs.ns
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("ok-two-nodes", resources={"nodes": 2}))
        ftj.wait_for(lambda: phase(jobs, "ok-two-nodes") == "Succeeded", timeout=90, what="Succeeded")
    assert runner.exception is None
    status = jobs.get("ok-two-nodes")["status"]
    assert status["distributed"]["worldSize"] == 2 and status["distributed"]["nodes"] == 2
    svc = core_v1.read_namespaced_service("ok-two-nodes-trainer", ns)
    assert svc.spec.cluster_ip == "None"
    pods = sorted(job_pods(core_v1, ns, "ok-two-nodes"), key=lambda p: p.spec.hostname)
    assert [p.spec.hostname for p in pods] == ["ok-two-nodes-trainer-0", "ok-two-nodes-trainer-1"]
    assert {p.spec.subdomain for p in pods} == {"ok-two-nodes-trainer"}
    assert len({p.spec.node_name for p in pods}) == 2  # one L4 node each
    said = [p.status.container_statuses[0].state.terminated.message for p in pods]
    assert said[0].startswith("index 0 met [1] at 127.0.0.1:")  # the pod runner resolved the name
    assert said[1].startswith("index 1 met index 0 at 127.0.0.1:")
    trainer_job = client.BatchV1Api(api_client).read_namespaced_job("ok-two-nodes-trainer", ns)
    assert trainer_job.status.succeeded == 2
