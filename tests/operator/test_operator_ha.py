"""Two operator replicas with leader election (a coordination.k8s.io Lease): the leader is killed
mid-run, the other takes over, and nothing is done twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubeft import contract

pytestmark = pytest.mark.stack

LEASE = 6  # seconds an unrenewed Lease is still taken for held


@pytest.fixture()
def replicas(
    run_operator: Any, api_client: Any, namespace: str, tmp_path: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Two `kubeft-operator` processes electing the acting one through the Lease `kubeft`; the
    first one started is the leader (it finds no Lease)."""
    procs = {}
    for role in ("leader", "follower"):
        env = {
            **os.environ,
            "KUBEFT_NAMESPACES": namespace,
            "KUBEFT_LEADER_ELECTION_LEASE": "kubeft",
            "KUBEFT_LEADER_ELECTION_NAMESPACE": namespace,
            "KUBEFT_LEADER_ELECTION_LEASE_SECONDS": str(LEASE),
            "HOSTNAME": role,
        }
        log = (tmp_path / f"{role}.log").open("wb")
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", "kubeft_operator.main"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        if role == "leader":
            lease = client.CoordinationV1Api(api_client)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    held = lease.read_namespaced_lease("kubeft", namespace).spec.holder_identity or ""
                    if held.startswith("leader_"):
                        break
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
                time.sleep(0.5)
            else:
                raise AssertionError("the first replica never took the Lease")
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_the_standby_replica_takes_over_when_the_leader_dies_and_nothing_is_done_twice(
    jobs: Any, credentials: Any, core_v1: Any, custom_objects: Any, api_client: Any, ftj: Any,
    replicas: dict[str, subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    ns = jobs.ns
    batch = client.BatchV1Api(api_client)

    lease = client.CoordinationV1Api(api_client)

    def holder() -> str:
        return str(lease.read_namespaced_lease("kubeft", ns).spec.holder_identity or "")

    assert holder().startswith("leader_")

    def phase(name: str) -> str:
        return str((jobs.get(name).get("status") or {}).get("phase") or "")

    jobs.create(ftj.job_manifest("before"))
    ftj.wait_for(lambda: phase("before") == "Initializing", what="the leader runs the first job")
    before = jobs.get("before")["status"]

    replicas["leader"].kill()  # SIGKILL: the Lease is not released, it has to run out
    killed = time.monotonic()
    jobs.create(ftj.job_manifest("after"))
    ftj.wait_for(lambda: phase("after") in ("Scheduling", "Initializing"), timeout=LEASE + 30,
                 what="the standby replica acting")  # fmt: skip
    took_over = time.monotonic() - killed
    print(f"takeover after the leader's SIGKILL: {took_over:.1f} s (Lease duration {LEASE} s)")
    assert holder().startswith("follower_")
    assert took_over < 15
    ftj.wait_for(lambda: phase("after") == "Initializing", what="the second job running")
    time.sleep(3)  # ticks of the new leader over both jobs

    # nothing twice: one trainer Job and one pod per FineTuneJob; the first job's status kept
    names = sorted(j.metadata.name for j in batch.list_namespaced_job(ns).items)
    assert names == ["after-trainer", "before-trainer"]
    for name in ("before", "after"):
        pods = core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={name}").items
        assert len(pods) == 1, [p.metadata.name for p in pods]
    now = jobs.get("before")["status"]
    assert (
        now["phase"] == "Initializing"
        and now["pod"] == before["pod"]
        and now["trainerJob"] == before["trainerJob"]
    )
    assert not now.get("restarts")
    assert replicas["follower"].poll() is None
