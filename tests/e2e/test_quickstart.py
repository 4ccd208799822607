"""The whole product path on the local stack, the way a user drives it.

The operator is installed with the Helm chart (its pod run by the local pod runner with
the chart's RBAC), the quickstart FineTuneJob is applied with kubectl, the trainer pod
is placed by the real scheduler on a simulated GPU node and run as a real process.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from kubeft import contract, demo

from .conftest import apply, wait_status

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def quickstart(name: str, **overrides: Any) -> dict[str, Any]:
    manifest = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    manifest["metadata"]["name"] = name
    for key, value in overrides.items():
        manifest["spec"][key] = {**manifest["spec"].get(key, {}), **value}
    return dict(manifest)


def get_job(custom_objects: Any, ns: str, name: str) -> dict[str, Any]:
    job: dict[str, Any] = custom_objects.get_namespaced_custom_object(
        contract.GROUP, contract.VERSION, ns, contract.PLURAL, name
    )
    return job


def test_quickstart_runs_to_succeeded_with_metrics_checkpoints_and_artifacts(
    stack: Any, api_client: Any, custom_objects: Any, e2e_namespace: str
) -> None:
    ns = e2e_namespace
    apply(stack, ns, quickstart("quickstart"))
    job = demo.watch(api_client, timeout=900, namespace=ns, name="quickstart")
    assert job is not None
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    # placed on the smallest GPU class that fits: a tiny model goes to an L4
    schedulable = next(c for c in status["conditions"] if c["type"] == "Schedulable")
    if status["gpu"]["product"] != "NVIDIA-L4":  # other tests' pods may hold both L4s
        assert (
            "NVIDIA-L4 (22.5 GiB) is the smallest GPU that fits but none is free now"
            in schedulable["message"]
        )
    else:
        assert status["node"].startswith("gpu-l4-")
    progress = status["progress"]
    assert progress["step"] == progress["totalSteps"] > 0
    assert progress["evalLoss"] > 0
    # artifacts the status points at exist in MinIO
    mc = stack.minio_client()
    for key in ("adapter", "merged"):
        uri = status["artifacts"][key]
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        names = [
            o.object_name for o in mc.list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True)
        ]
        assert any(n.endswith(".safetensors") for n in names), (key, names)
    # under the job's own run: <namespace>/<name>/<uid>
    run = contract.job_prefix(ns, "quickstart", job["metadata"]["uid"])
    assert status["checkpoints"]["latest"].startswith(f"s3://{demo.OUTPUT_BUCKET}/{run}/checkpoints/")
    # Prometheus scraped the trainer: the loss series is there, labelled with the job
    series = demo.loss_series(stack, namespace=ns, name="quickstart")
    assert len(series) >= 2
    # kubectl shows the job the way a user scans it
    out = subprocess.run(
        [str(stack.bin_dir / "kubectl"), "--kubeconfig", str(stack.kubeconfig), "get", "ftj", "-n", ns],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "quickstart" in out and "Succeeded" in out and "NVIDIA-L4" in out


def test_killed_trainer_pod_resumes_from_its_checkpoint_and_succeeds(
    stack: Any, api_client: Any, core_v1: Any, custom_objects: Any, e2e_namespace: str
) -> None:
    ns, name = e2e_namespace, "resume"
    apply(
        stack, ns, quickstart(name, hyperparameters={"epochs": 60}, checkpoints={"everySteps": 10, "keep": 2})
    )
    # wait until a checkpoint is complete, then kill the pod without grace (SIGKILL of the trainer)
    deadline = time.monotonic() + 600
    checkpoint_step = 0
    while time.monotonic() < deadline:
        status = get_job(custom_objects, ns, name).get("status", {})
        checkpoint_step = (status.get("checkpoints") or {}).get("step") or 0
        if checkpoint_step >= 10:
            break
        assert status.get("phase") not in ("Succeeded", "Failed"), status
        time.sleep(0.5)
    assert checkpoint_step >= 10
    pods = core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={name}").items
    (pod,) = [p for p in pods if p.status.phase == "Running"]
    core_v1.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)
    job = demo.watch(api_client, timeout=900, namespace=ns, name=name)
    assert job is not None
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] >= 1
    assert status["progress"]["step"] == status["progress"]["totalSteps"]
    # the second pod started from the checkpoint, not from step 0
    pods = core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={name}").items
    assert len({p.metadata.name for p in pods} - {pod.metadata.name}) >= 1
    resumed = (status.get("progress") or {}).get("resumedFromStep")
    assert resumed is not None and resumed >= 10, status["progress"]


def test_prometheus_has_the_jobs_series_by_namespace_and_job(stack: Any, e2e_namespace: str) -> None:
    r = requests.get(
        f"{stack.prometheus_url}/api/v1/series",
        params={"match[]": f'{{__name__=~"kubeft_trainer_.*", namespace="{e2e_namespace}"}}'},
        timeout=10,
    )
    names = {s["__name__"] for s in r.json()["data"]}
    assert {"kubeft_trainer_train_loss", "kubeft_trainer_tokens_per_second", "kubeft_trainer_step"} <= names


def test_model_and_dataset_read_from_a_persistent_volume_claim(
    stack: Any, api_client: Any, core_v1: Any, custom_objects: Any, e2e_namespace: str, tmp_path: Path
) -> None:
    """pvc:// sources: the operator mounts the claim read-only, the trainer reads it in place."""
    from kubeft_operator.modelconfig import shape_to_dict
    from kubernetes import client

    from kubeft import estimate as est
    from kubeft.dev import tinymodel

    ns, name = e2e_namespace, "from-pvc"
    volume = tmp_path / "volume"  # a hostPath PersistentVolume: the pod runner mounts its directory
    tinymodel.build_tiny_model(volume / "models" / "tiny")
    tinymodel.write_jsonl(volume / "data" / "train.jsonl", tinymodel.rows("alpaca") * 4)
    pv_name, claim = f"{ns}-store", "store"
    core_v1.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=pv_name),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadOnlyMany"],
                storage_class_name="",
                host_path=client.V1HostPathVolumeSource(path=str(volume)),
            ),
        )
    )
    try:
        core_v1.create_namespaced_persistent_volume_claim(
            ns,
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name=claim),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadOnlyMany"],
                    storage_class_name="",
                    volume_name=pv_name,
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
                ),
            ),
        )
        # spec.model.architecture: the operator's own config.json reading, minus what the CRD lacks
        shape = est.ModelShape.from_file(volume / "models" / "tiny")
        architecture = {k: v for k, v in shape_to_dict(shape).items() if k != "modelType"}
        manifest = quickstart(
            name,
            model={"source": f"pvc://{claim}/models/tiny", "architecture": architecture},
            dataset={"source": f"pvc://{claim}/data/train.jsonl", "eval": {"split": 0.1, "everySteps": 5}},
            hyperparameters={"epochs": 1},
            export={"formats": ["adapter"]},
        )
        apply(stack, ns, manifest)
        job = demo.watch(api_client, timeout=600, namespace=ns, name=name)
        assert job is not None
        status = job["status"]
        assert status["phase"] == "Succeeded", status
        # the trainer pod mounted the claim read-only where the trainer looks for it
        (pod,) = core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={name}").items
        (vol,) = [v for v in pod.spec.volumes if v.persistent_volume_claim is not None]
        assert vol.persistent_volume_claim.claim_name == claim and vol.persistent_volume_claim.read_only
        mount = next(m for m in pod.spec.containers[0].volume_mounts if m.name == vol.name)
        assert mount.mount_path == f"{contract.PVC_ROOT}/{claim}" and mount.read_only
        bucket, prefix = status["artifacts"]["adapter"].removeprefix("s3://").split("/", 1)
        names = [
            o.object_name for o in stack.minio_client().list_objects(bucket, prefix=prefix, recursive=True)
        ]
        assert any(n.endswith("adapter_model.safetensors") for n in names), names
    finally:
        core_v1.delete_namespaced_persistent_volume_claim(claim, ns)
        core_v1.delete_persistent_volume(pv_name)


def test_a_failed_job_fires_the_kubeft_job_failed_alert_in_prometheus(
    stack: Any, api_client: Any, e2e_namespace: str
) -> None:
    """The chart's alerting rules, evaluated by the stack's Prometheus on the operator's series."""
    import io

    ns, name = e2e_namespace, "broken-data"
    mc = stack.minio_client()
    raw = b'{"oops\n{"instruction": 1}\n'  # no usable row: the trainer exits 2 (InvalidInput)
    mc.put_object("datasets", f"broken/{ns}.jsonl", io.BytesIO(raw), len(raw))
    apply(stack, ns, quickstart(name, dataset={"source": f"s3://datasets/broken/{ns}.jsonl"}))
    job = demo.watch(api_client, timeout=300, namespace=ns, name=name)
    assert job is not None and job["status"]["phase"] == "Failed"

    def firing() -> list[dict[str, Any]]:
        alerts = requests.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [
            a for a in alerts
            if a["labels"].get("alertname") == "KubeftJobFailed" and a["state"] == "firing"
            and a["labels"].get("namespace") == ns and a["labels"].get("job") == name
        ]  # fmt: skip

    deadline = time.monotonic() + 90
    while not (alerts := firing()) and time.monotonic() < deadline:
        time.sleep(1)
    assert alerts, "KubeftJobFailed never fired for the failed job"
    assert alerts[0]["annotations"]["summary"] == f"FineTuneJob {ns}/{name} failed"


def test_a_job_preempted_by_kueue_saves_a_checkpoint_and_resumes_from_it_once_readmitted(
    stack: Any, api_client: Any, core_v1: Any, custom_objects: Any, e2e_namespace: str
) -> None:
    """The real trainer under Kueue: a higher-priority job takes the only GPU of a small queue;
    the running job's pod gets SIGTERM, checkpoints, costs no retry, and resumes when readmitted."""
    from kubernetes import client

    from kubeft.dev import queues

    ns = e2e_namespace
    cq = f"preempt-{ns}"
    body = queues.preempting_queue(cq, ns, "NVIDIA-L4", gpus=1)
    custom_objects.create_cluster_custom_object(queues.GROUP, queues.VERSION, "clusterqueues", body)
    local = queues.local_queue(ns, "preemptible", cluster_queue=cq)
    custom_objects.create_namespaced_custom_object(queues.GROUP, queues.VERSION, ns, "localqueues", local)
    scheduling = client.SchedulingV1Api(api_client)
    for pc, value in ((f"{cq}-low", 100), (f"{cq}-high", 1000)):
        scheduling.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name=pc), value=value)
        )
    try:
        patient = quickstart(
            "patient", hyperparameters={"epochs": 8}, resources={"priorityClassName": f"{cq}-low"}
        )
        patient["spec"]["queueName"] = "preemptible"
        apply(stack, ns, patient)
        checkpointed = lambda s: ((s.get("checkpoints") or {}).get("step") or 0) >= 10  # noqa: E731
        wait_status(custom_objects, ns, "patient", checkpointed, timeout=600)
        urgent = quickstart(
            "urgent", hyperparameters={"epochs": 2}, resources={"priorityClassName": f"{cq}-high"}
        )
        urgent["spec"]["queueName"] = "preemptible"
        apply(stack, ns, urgent)
        status = wait_status(custom_objects, ns, "patient",
                             lambda s: s.get("phase") == "Queued" and "preempted" in s.get("message", ""),
                             timeout=300)  # fmt: skip
        assert "resumes from its latest checkpoint" in status["message"]
        done = demo.watch(api_client, timeout=900, namespace=ns, name="urgent")
        assert done is not None and done["status"]["phase"] == "Succeeded", done
        job = demo.watch(api_client, timeout=900, namespace=ns, name="patient")
        assert job is not None
        status = job["status"]
        assert status["phase"] == "Succeeded", status
        assert not status.get("restarts")  # the preemption cost no retry
        resumed = (status.get("progress") or {}).get("resumedFromStep")
        assert resumed is not None and resumed >= 10, status["progress"]
        trainer_job = client.BatchV1Api(api_client).read_namespaced_job("patient-trainer", ns)
        assert not trainer_job.status.failed
    finally:
        for name in ("patient", "urgent"):
            custom_objects.delete_namespaced_custom_object(
                contract.GROUP, contract.VERSION, ns, contract.PLURAL, name
            )
        for pc in (f"{cq}-low", f"{cq}-high"):
            scheduling.delete_priority_class(pc)
        custom_objects.delete_cluster_custom_object(queues.GROUP, queues.VERSION, "clusterqueues", cq)


@pytest.mark.parametrize(
    ("example", "pods", "product"),
    [("distributed-2gpu.yaml", 1, "NVIDIA-A100-SXM4-40GB"), ("distributed-2node.yaml", 2, "NVIDIA-L4")],
)
def test_a_two_gpu_and_a_two_node_example_train_under_torchrun_to_succeeded(
    stack: Any, api_client: Any, core_v1: Any, e2e_namespace: str, example: str, pods: int, product: str
) -> None:
    """Two ranks (gloo on CPU here), placed on a class with the GPUs per node they ask for."""
    ns = e2e_namespace
    manifest = yaml.safe_load((REPO / "examples" / example).read_text())
    name = manifest["metadata"]["name"]
    apply(stack, ns, manifest)
    job = demo.watch(api_client, timeout=900, namespace=ns, name=name)
    assert job is not None
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert status["gpu"]["product"] == product
    assert status["distributed"]["worldSize"] == 2 and status["distributed"]["strategy"] == "ddp"
    assert status["distributed"]["globalBatch"] == 2 * 1 * 2
    assert status["progress"]["step"] == status["progress"]["totalSteps"] > 0
    assert status["artifacts"]["adapter"]
    trainer_pods = core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={name}").items
    assert len(trainer_pods) == pods and all(p.status.phase == "Succeeded" for p in trainer_pods)
