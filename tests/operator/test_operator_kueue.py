"""The operator with the real Kueue of the local stack: queued, admitted on a flavor, preempted, readmitted.

Each test gets its own ClusterQueue (one GPU of the L4 flavor, preemption of lower priorities)
and a LocalQueue named ``default`` in its namespace, which the operator picks for a job without
``spec.queueName``. The trainer is tests/operator/fake_trainer.py: it runs until SIGTERM, then
exits 143 as the real trainer does after its final checkpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import contract
from kubeft.dev import queues

pytestmark = pytest.mark.stack

L4 = "NVIDIA-L4"


def phase(jobs: Any, name: str) -> str:
    return str((jobs.get(name).get("status") or {}).get("phase") or "")


def status(jobs: Any, name: str) -> dict[str, Any]:
    return dict(jobs.get(name).get("status") or {})


def queued_saying(jobs: Any, name: str, word: str) -> str:
    """The job's message while it is Queued and the message holds ``word``; else empty."""
    st = status(jobs, name)
    message = str(st.get("message", ""))
    return message if st.get("phase") == "Queued" and word in message else ""


def live_pods(core_v1: Any, namespace: str, name: str) -> list[Any]:
    pods = core_v1.list_namespaced_pod(namespace, label_selector=f"{contract.LABEL_JOB}={name}").items
    return [p for p in pods if not p.metadata.deletion_timestamp and p.status.phase in ("Pending", "Running")]


@pytest.fixture()
def small_queue(custom_objects: Any, api_client: Any, namespace: str) -> Iterator[str]:
    """A ClusterQueue with one L4 GPU that preempts lower priorities; LocalQueue `default` → it."""
    name = f"cq-{uuid.uuid4().hex[:6]}"
    body = queues.preempting_queue(name, namespace, L4, gpus=1)
    custom_objects.create_cluster_custom_object(queues.GROUP, queues.VERSION, "clusterqueues", body)
    local = queues.local_queue(namespace, "default", cluster_queue=name)
    custom_objects.create_namespaced_custom_object(
        queues.GROUP, queues.VERSION, namespace, "localqueues", local
    )
    priorities = client.SchedulingV1Api(api_client)
    for pc, value in ((f"{name}-low", 100), (f"{name}-high", 1000)):
        priorities.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name=pc), value=value)
        )
    yield name
    batch = client.BatchV1Api(api_client)
    for job in batch.list_namespaced_job(namespace).items:
        batch.delete_namespaced_job(job.metadata.name, namespace, propagation_policy="Background")
    for pc in (f"{name}-low", f"{name}-high"):
        priorities.delete_priority_class(pc)
    try:
        custom_objects.delete_cluster_custom_object(queues.GROUP, queues.VERSION, "clusterqueues", name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_a_job_is_queued_with_kueues_words_admitted_preempted_at_no_cost_and_readmitted(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, api_client: Any, ftj: Any, small_queue: str
) -> None:
    ns = jobs.ns
    batch = client.BatchV1Api(api_client)
    low = {"priorityClassName": f"{small_queue}-low"}
    high = {"priorityClassName": f"{small_queue}-high"}
    with run_operator() as runner:
        # 1. the namespace's LocalQueue `default` takes the job: created suspended, Kueue admits it on l4
        jobs.create(ftj.job_manifest("first", resources=low))
        ftj.wait_for(lambda: phase(jobs, "first") == "Initializing", timeout=90, what="first Initializing")
        st = status(jobs, "first")
        assert st["queue"]["name"] == "default" and st["queue"]["clusterQueue"] == small_queue
        assert st["queue"]["flavor"] == "l4" and st["gpu"]["product"] == L4
        # the operator allowed every class that fits; Kueue's flavor narrowed it to L4 nodes
        assert {c["product"] for c in st["gpu"]["candidates"]} >= {L4, "NVIDIA-H100-80GB-HBM3"}
        assert ftj.condition(jobs.get("first"), "Admitted")["status"] == "True"
        trainer = batch.read_namespaced_job("first-trainer", ns)
        assert trainer.metadata.labels[contract.LABEL_QUEUE_NAME] == "default"
        (pod,) = live_pods(core_v1, ns, "first")
        assert core_v1.read_node(pod.spec.node_name).metadata.labels[contract.LABEL_GPU_PRODUCT] == L4

        # 2. no quota left: Queued, in Kueue's own words
        jobs.create(ftj.job_manifest("second", resources=low))

        message = ftj.wait_for(
            lambda: queued_saying(jobs, "second", "insufficient"), timeout=60, what="second Queued for quota"
        )
        assert "insufficient unused quota for nvidia.com/gpu in flavor l4, 1 more needed" in message
        assert live_pods(core_v1, ns, "second") == []
        admitted = ftj.condition(jobs.get("second"), "Admitted")
        assert admitted["status"] == "False" and "insufficient unused quota" in admitted["message"]
        jobs.delete("second")

        # 3. a higher priority preempts the first job: SIGTERM (exit 143) costs it no retry
        first_pod = pod.metadata.uid
        jobs.create(ftj.job_manifest("urgent", resources=high))

        message = ftj.wait_for(lambda: queued_saying(jobs, "first", "preempted"), timeout=90,
                               what="first preempted back to Queued")  # fmt: skip
        assert "preempted by Kueue" in message and "latest checkpoint" in message
        ftj.wait_for(lambda: phase(jobs, "urgent") == "Initializing", timeout=90, what="urgent Initializing")
        reasons = [
            e.reason for e in core_v1.list_namespaced_event(ns).items if e.involved_object.name == "first"
        ]
        assert "Preempted" in reasons

        # 4. the quota comes back: the first job is readmitted and a new pod resumes it
        jobs.delete("urgent")
        ftj.wait_for(lambda: phase(jobs, "first") == "Initializing", timeout=120, what="first readmitted")
        (again,) = live_pods(core_v1, ns, "first")
        assert again.metadata.uid != first_pod
        st = status(jobs, "first")
        assert not st.get("restarts")
        trainer = batch.read_namespaced_job("first-trainer", ns)
        assert not trainer.status.failed  # the preempted pod's exit 143 was not counted

        # 5. suspending a queued job goes through Kueue: its Workload is deactivated
        jobs.patch("first", {"spec": {"suspend": True}})
        ftj.wait_for(lambda: phase(jobs, "first") == "Suspended", what="Suspended")
        ftj.wait_for(lambda: live_pods(core_v1, ns, "first") == [], what="the pod stopped")
        assert batch.read_namespaced_job("first-trainer", ns).spec.suspend is True
        workload = st["queue"]["workload"]
        wl = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            queues.GROUP, queues.VERSION, ns, "workloads", workload
        )
        assert wl["spec"]["active"] is False
        jobs.patch("first", {"spec": {"suspend": False}})
        ftj.wait_for(lambda: phase(jobs, "first") == "Initializing", timeout=90, what="resumed through Kueue")
    assert runner.exception is None


def test_a_queue_that_does_not_exist_is_kueues_message_on_a_queued_job(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, ftj: Any
) -> None:
    with run_operator() as runner:
        jobs.create(ftj.job_manifest("lost", queueName="no-such-queue"))

        message = ftj.wait_for(
            lambda: queued_saying(jobs, "lost", "no-such-queue"), what="Queued naming the queue"
        )
        ftj.wait_for(
            lambda: (
                "exist" in status(jobs, "lost").get("message", "")
                or "not found" in status(jobs, "lost").get("message", "")
            ),
            timeout=60,
            what="Kueue's word that the LocalQueue is missing",
        )
    assert runner.exception is None
    assert "LocalQueue no-such-queue" in message
    assert live_pods(core_v1, jobs.ns, "lost") == []
