"""The real Kueue in the local stack queues and admits batch/v1 Jobs the way issue 11's trainers will run.

A Job is created suspended with `kueue.x-k8s.io/queue-name`; Kueue's Job integration makes a
Workload, its scheduler reserves quota in the ClusterQueue `kubeft` (kubeft/dev/queues.py) on the
flavor whose nodeLabels the pod template's node affinity allows, and unsuspends the Job; the real
kube-scheduler then binds the pod on a kwok node of that GPU class.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kubeft import contract
from kubeft.dev import queues
from kubeft.dev.kube import wait_until

pytestmark = pytest.mark.stack

A100 = "NVIDIA-A100-SXM4-40GB"
A100_FLAVOR = "a100-40gb"
A100_GPUS = 4  # kubeft/dev/nodes.py: gpu-a100-0


def _job(name: str, queue: str, gpus: int, product: str) -> dict[str, Any]:
    """An Indexed Job of one pod asking for `gpus` GPUs of `product`, created suspended for Kueue."""
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": contract.LABEL_GPU_PRODUCT, "operator": "In", "values": [product]}
                        ]
                    }
                ]
            }
        }
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {queues.QUEUE_LABEL: queue}},
        "spec": {
            "suspend": True,
            "completionMode": "Indexed",
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    # kwok completes Job pods after 1-6 s; these run (holding quota) until deleted
                    "annotations": {
                        "pod-complete.stage.kwok.x-k8s.io/delay": "1h",
                        "pod-complete.stage.kwok.x-k8s.io/jitter-delay": "1h",
                    }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",  # kwok fakes the container; nothing is pulled
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1Gi", contract.RESOURCE_GPU: str(gpus)},
                                "limits": {contract.RESOURCE_GPU: str(gpus)},
                            },
                        }
                    ],
                    "tolerations": [
                        {
                            "key": contract.GPU_TAINT_KEY,
                            "operator": "Exists",
                            "effect": contract.GPU_TAINT_EFFECT,
                        }
                    ],
                    "affinity": affinity,
                },
            },
        },
    }


def _workload(objects: Any, namespace: str, job: Any) -> dict[str, Any] | None:
    """The Workload Kueue's Job integration made for `job` (owned by it)."""
    items = objects.list_namespaced_custom_object(queues.GROUP, queues.VERSION, namespace, "workloads")[
        "items"
    ]
    for wl in items:
        if any(ref.get("uid") == job.metadata.uid for ref in wl["metadata"].get("ownerReferences", [])):
            return dict(wl)
    return None


def _condition(wl: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in (wl or {}).get("status", {}).get("conditions", []):
        if cond["type"] == ctype:
            return dict(cond)
    return None


def _reserved(objects: Any, flavor: str, resource: str) -> str:
    """How much of `resource` in `flavor` the ClusterQueue `kubeft` has reserved right now."""
    cq = objects.get_cluster_custom_object(
        queues.GROUP, queues.VERSION, "clusterqueues", queues.CLUSTER_QUEUE
    )
    for fl in cq.get("status", {}).get("flavorsReservation", []):
        if fl["name"] == flavor:
            for res in fl["resources"]:
                if res["name"] == resource:
                    return str(res["total"])
    return "0"


@pytest.fixture()
def queue(api_client: Any, namespace: str, custom_objects: Any) -> Iterator[str]:
    """The LocalQueue `default` in the test's namespace; afterwards every Job there is deleted and
    its Workload gone, so the ClusterQueue's quota is whole again for the next test."""
    name = queues.ensure_local_queue(api_client, namespace)
    # a previous test's Workloads may still be releasing quota: start from an empty flavor
    wait_until(
        lambda: _reserved(custom_objects, A100_FLAVOR, contract.RESOURCE_GPU) == "0", what="a100 quota free"
    )
    yield name
    batch = client.BatchV1Api(api_client)
    for job in batch.list_namespaced_job(namespace).items:
        batch.delete_namespaced_job(job.metadata.name, namespace, propagation_policy="Background")

    def no_workloads() -> bool:
        return not custom_objects.list_namespaced_custom_object(
            queues.GROUP, queues.VERSION, namespace, "workloads"
        )["items"]

    wait_until(no_workloads, what="workloads deleted")
    wait_until(
        lambda: _reserved(custom_objects, A100_FLAVOR, contract.RESOURCE_GPU) == "0", what="quota released"
    )


def test_queue_layout_matches_the_gpu_classes(custom_objects: Any) -> None:
    flavors = {
        f["metadata"]["name"]: f["spec"]
        for f in custom_objects.list_cluster_custom_object(queues.GROUP, queues.VERSION, "resourceflavors")[
            "items"
        ]
    }
    assert {name: spec["nodeLabels"] for name, spec in flavors.items()} == {
        "l4": {contract.LABEL_GPU_PRODUCT: "NVIDIA-L4"},
        "a100-40gb": {contract.LABEL_GPU_PRODUCT: A100},
        "h100-80gb": {contract.LABEL_GPU_PRODUCT: "NVIDIA-H100-80GB-HBM3"},
    }
    cq = custom_objects.get_cluster_custom_object(queues.GROUP, queues.VERSION, "clusterqueues", "kubeft")
    gpus = {
        fl["name"]: next(r["nominalQuota"] for r in fl["resources"] if r["name"] == contract.RESOURCE_GPU)
        for fl in cq["spec"]["resourceGroups"][0]["flavors"]
    }
    assert gpus == {"l4": "2", "a100-40gb": "4", "h100-80gb": "8"}
    assert {c["type"]: c["status"] for c in cq["status"]["conditions"]}["Active"] == "True"


def test_kueue_admits_a_suspended_gpu_job_on_the_flavor_its_affinity_names(
    api_client: Any, custom_objects: Any, core_v1: Any, namespace: str, queue: str
) -> None:
    batch = client.BatchV1Api(api_client)
    name = f"train-{uuid.uuid4().hex[:6]}"
    job = batch.create_namespaced_job(namespace, _job(name, queue, 1, A100))
    assert job.spec.suspend is True

    # Kueue unsuspends the Job once its Workload is admitted
    wait_until(
        lambda: batch.read_namespaced_job(name, namespace).spec.suspend is False, what="job unsuspended"
    )
    wl = wait_until(
        lambda: (
            (w := _workload(custom_objects, namespace, job))
            and (_condition(w, "Admitted") or {}).get("status") == "True"
            and w
        ),
        what="workload admitted",
    )
    assert wl["spec"]["queueName"] == queue
    admission = wl["status"]["admission"]
    assert admission["clusterQueue"] == queues.CLUSTER_QUEUE
    [podset] = admission["podSetAssignments"]
    assert podset["flavors"] == {
        "cpu": A100_FLAVOR,
        "memory": A100_FLAVOR,
        contract.RESOURCE_GPU: A100_FLAVOR,
    }
    assert podset["resourceUsage"][contract.RESOURCE_GPU] == "1"
    flavor = custom_objects.get_cluster_custom_object(
        queues.GROUP, queues.VERSION, "resourceflavors", A100_FLAVOR
    )
    assert flavor["spec"]["nodeLabels"] == {contract.LABEL_GPU_PRODUCT: A100}
    wait_until(
        lambda: _reserved(custom_objects, A100_FLAVOR, contract.RESOURCE_GPU) == "1", what="quota reserved"
    )

    # Kueue injected the flavor's nodeLabels into the pod template; the real scheduler binds the pod there
    def bound() -> Any:
        pods = core_v1.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        return pods and pods[0].spec.node_name and pods[0]

    pod = wait_until(bound, what="pod bound")
    assert pod.spec.node_selector == {contract.LABEL_GPU_PRODUCT: A100}
    node = core_v1.read_node(pod.spec.node_name)
    assert node.metadata.labels[contract.LABEL_GPU_PRODUCT] == A100, pod.spec.node_name
    wait_until(
        lambda: core_v1.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Running",
        what="pod running",
    )


def test_a_job_over_the_quota_left_stays_suspended_with_kueues_reason(
    api_client: Any, custom_objects: Any, namespace: str, queue: str
) -> None:
    batch = client.BatchV1Api(api_client)
    first = batch.create_namespaced_job(namespace, _job("holds-3", queue, 3, A100))
    wait_until(
        lambda: batch.read_namespaced_job("holds-3", namespace).spec.suspend is False, what="first admitted"
    )
    wait_until(
        lambda: _reserved(custom_objects, A100_FLAVOR, contract.RESOURCE_GPU) == "3", what="quota reserved"
    )

    second = batch.create_namespaced_job(namespace, _job("wants-2", queue, 2, A100))

    def pending() -> dict[str, Any] | None:
        cond = _condition(_workload(custom_objects, namespace, second), "QuotaReserved")
        return cond if cond and cond["status"] == "False" and cond.get("message") else None

    cond = wait_until(pending, what="second workload pending")
    assert cond["reason"] == "Pending"
    # Kueue's text, observed on v0.17.0 (it sorts the per-flavor reasons)
    assert cond["message"] == (
        "couldn't assign flavors to pod set main: flavor h100-80gb doesn't match node affinity, "
        "flavor l4 doesn't match node affinity, "
        "insufficient unused quota for nvidia.com/gpu in flavor a100-40gb, 1 more needed"
    ), cond["message"]
    time.sleep(3)
    assert batch.read_namespaced_job("wants-2", namespace).spec.suspend is True
    assert (
        _condition(_workload(custom_objects, namespace, second), "Admitted") is None
        or (_condition(_workload(custom_objects, namespace, second), "Admitted") or {}).get("status")
        != "True"
    )
    wait_until(
        lambda: _reserved(custom_objects, A100_FLAVOR, contract.RESOURCE_GPU) == "3", what="quota reserved"
    )

    # the quota comes back when the first Job goes: Kueue admits the waiting one
    batch.delete_namespaced_job(first.metadata.name, namespace, propagation_policy="Background")
    wait_until(
        lambda: batch.read_namespaced_job("wants-2", namespace).spec.suspend is False, what="second admitted"
    )
    wait_until(
        lambda: _reserved(custom_objects, A100_FLAVOR, contract.RESOURCE_GPU) == "2", what="quota moved"
    )


def test_a_job_without_a_queue_name_is_left_alone(api_client: Any, namespace: str, queue: str) -> None:
    """manageJobsWithoutQueueName is false: Kueue never touches Jobs that don't name a queue."""
    batch = client.BatchV1Api(api_client)
    body = _job("plain", queue, 1, A100)
    del body["metadata"]["labels"]
    batch.create_namespaced_job(namespace, body)
    time.sleep(3)
    assert batch.read_namespaced_job("plain", namespace).spec.suspend is True
    objects = client.CustomObjectsApi(api_client)
    assert (
        objects.list_namespaced_custom_object(queues.GROUP, queues.VERSION, namespace, "workloads")["items"]
        == []
    )
