"""docs/argocd/finetunejob-health.lua, run by a real Lua (lupa), on statuses the operator writes.

Each case is a status :func:`kubeft_operator.reconcile.decide` produced, so the health check is
held against the operator's actual phases and kstatus conditions, not hand-written ones.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from kubeft_operator import conditions as cond
from kubeft_operator import placement as pl
from kubeft_operator.api import FineTuneJob
from kubeft_operator.reconcile import (
    Inputs,
    Observed,
    PodState,
    TrainerJob,
    WorkloadState,
    decide,
    quota_wait,
)
from kubeft_operator.settings import Settings

from kubeft import contract
from kubeft import estimate as est

SCRIPT = (Path(__file__).resolve().parents[2] / "docs" / "argocd" / "finetunejob-health.lua").read_text()
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
GPU_NODE = {
    "metadata": {"name": "a100", "labels": {contract.LABEL_GPU_PRODUCT: "NVIDIA-A100-SXM4-40GB"}},
    "spec": {},
    "status": {
        "allocatable": {contract.RESOURCE_GPU: "4"},
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}
CLASSES = pl.gpu_classes(pl.gpu_nodes([GPU_NODE], []))
RUNNING = {
    "phase": "Training",
    "trainerJob": "j-trainer",
    "pod": "j-trainer-0-x",
    "startTime": "2026-11-30T11:00:00Z",
}
NONE = Observed()


def job(status: dict[str, Any] | None = None, **spec: Any) -> FineTuneJob:
    body = {
        "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "model": {"source": "s3://models/m/"},
            "dataset": {"source": "s3://data/train.jsonl"},
            "storage": {"credentialsSecret": "creds"},
            **spec,
        },
        "status": status or {},
    }
    return FineTuneJob.from_body(body)


def health(status: dict[str, Any], generation: int = 1) -> tuple[str, str]:
    """What Argo CD would show: the script run as Argo runs it, with ``obj`` set."""
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    obj = {"metadata": {"name": "j", "generation": generation}, "status": status}
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return str(hs["status"]), str(hs["message"])


def placed() -> dict[str, Any]:
    return decide(
        job(), NONE, Inputs(classes=CLASSES, shape=est.known_shape("llama-3.2-1b")), Settings(), NOW
    ).status


def statuses() -> dict[str, tuple[dict[str, Any], str, str]]:
    """case → (status written by the operator, Argo CD health, a word its message must hold)."""
    huge = Inputs(classes=CLASSES, shape=est.known_shape("llama-3.1-70b"))
    secret = Inputs(
        invalid_reason=cond.SECRET_NOT_FOUND, invalid_message="storage.credentialsSecret 'creds' not found"
    )
    later = Inputs(
        invalid_reason=cond.DATASET_NOT_FOUND, invalid_message="s3://data/train.jsonl does not exist yet"
    )
    ok = PodState("j-trainer-0-x", "Succeeded", "node-1")
    bad = PodState("j-trainer-0-x", "Failed", "node-1", exit_code=2, message="dataset has no usable row")
    done = Observed(TrainerJob("j-trainer", complete=True), {ok.name: ok})
    failed = Observed(
        TrainerJob("j-trainer", failed=1, failure=("PodFailurePolicy", "exit code 2")), {bad.name: bad}
    )
    waiting = WorkloadState(
        "wl", waiting="insufficient unused quota for nvidia.com/gpu in flavor l4, 1 more needed"
    )
    queued = Observed(TrainerJob("j-trainer", suspended=True, queue="team-a"), {}, waiting)
    quota = "exceeded quota: gpus, requested: requests.nvidia.com/gpu=1"

    def status(j: FineTuneJob, observed: Observed, inputs: Inputs | None = None) -> dict[str, Any]:
        return decide(j, observed, inputs, Settings(), NOW).status

    return {
        "placed": (placed(), "Progressing", "Scheduling"),
        "nothing fits": (status(job(method="full"), NONE, huge), "Degraded", "InsufficientGPUMemory"),
        "secret missing": (status(job(), NONE, secret), "Degraded", "SecretNotFound"),
        "dataset not there yet": (status(job(), NONE, later), "Progressing", "Pending"),
        "quota": (quota_wait(job(), quota, NOW).status, "Progressing", "exceeded quota"),
        "succeeded": (status(job(status=RUNNING), done), "Healthy", "completed"),
        "failed": (status(job(status=RUNNING), failed), "Degraded", "InvalidInput"),
        "queued": (status(job(status={"phase": "Queued", "trainerJob": "j-trainer"}), queued), "Progressing",
                   "Queued: queued in LocalQueue team-a: insufficient"),
        "suspended": (status(job(suspend=True), NONE), "Suspended", "suspended"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(statuses()))
def test_argocd_health_follows_the_operators_status(case: str) -> None:
    status, expected, word = statuses()[case]
    got, message = health(status)
    assert got == expected, (case, message)
    assert word in message, (case, message)


def test_a_job_the_operator_has_not_seen_yet_is_progressing() -> None:
    assert health({}) == ("Progressing", "waiting for the kubeft operator")
    # the spec changed since the status was written (e.g. suspend flipped): not the old verdict
    status, _, _ = statuses()["succeeded"]
    assert health(status, generation=2) == (
        "Progressing",
        "the operator has not acted on the latest spec yet",
    )
