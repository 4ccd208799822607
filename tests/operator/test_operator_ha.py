"""Two operator replicas with leader election (kopf peering): the leader is killed mid-run, the
other takes over, and nothing is done twice."""

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

LIFETIME = 6  # seconds a silent replica is still taken for alive


@pytest.fixture()
def replicas(
    run_operator: Any, custom_objects: Any, namespace: str, tmp_path: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Two `kubeft-operator` processes sharing the KopfPeering `kubeft` (priorities 200 and 100)."""
    custom_objects.create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kubeft"}},
    )  # fmt: skip
    procs = {}
    for role, priority in (("leader", 200), ("follower", 100)):
        env = {
            **os.environ,
            "KUBEFT_NAMESPACES": namespace,
            "KUBEFT_PEERING": "kubeft",
            "KUBEFT_PEERING_PRIORITY": str(priority),
            "KUBEFT_PEERING_LIFETIME_SECONDS": str(LIFETIME),
        }
        log = (tmp_path / f"{role}.log").open("wb")
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", "kubeft_operator.main"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
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

    def peers() -> dict[str, Any]:
        peering = custom_objects.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", "kubeft")
        return dict(peering.get("status") or {})

    ftj.wait_for(
        lambda: {p.get("priority") for p in peers().values()} >= {100, 200}, what="both replicas peered"
    )

    def phase(name: str) -> str:
        return str((jobs.get(name).get("status") or {}).get("phase") or "")

    jobs.create(ftj.job_manifest("before"))
    ftj.wait_for(lambda: phase("before") == "Initializing", what="the leader runs the first job")
    before = jobs.get("before")["status"]

    replicas["leader"].kill()  # SIGKILL: no goodbye in the peering object
    killed = time.monotonic()
    jobs.create(ftj.job_manifest("after"))
    ftj.wait_for(lambda: phase("after") in ("Scheduling", "Initializing"), timeout=LIFETIME + 30,
                 what="the standby replica acting")  # fmt: skip
    took_over = time.monotonic() - killed
    print(f"takeover after the leader's SIGKILL: {took_over:.1f} s (peering lifetime {LIFETIME} s)")
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
