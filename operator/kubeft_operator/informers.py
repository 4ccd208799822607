"""What the operator knows of the cluster: kept current by watches, read without a request.

kopf indexes (``handlers.py`` registers them) hold the FineTuneJobs, their trainer Jobs, trainer
pods and Kueue Workloads, the GPU nodes and the GPUs bound pods use; kopf fills them from its
watches and runs no handler before they are all filled from the initial listing, so a reconcile
never sees a half-known cluster. A reconcile reads them through :class:`Cache`; the API server is
asked only to act (create, patch) and for the few facts that are read once per placement (the
storage Secret, the LocalQueue, the model config).

The indexes are mutated on kopf's event loop and read from worker threads: each read takes a
snapshot with ``list()`` (one C-level call under the GIL), never iterates a live store.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from kubeft import contract

from . import placement as pl
from .api import FineTuneJob
from .reconcile import Observed, PodState, TrainerJob

Key = tuple[str, str]  # (namespace, FineTuneJob name)

# index names: the kopf index functions in handlers.py carry these names
JOBS = "ftj_bodies"
TRAINER_JOBS = "trainer_jobs"
TRAINER_PODS = "trainer_pods"
WORKLOADS = "trainer_workloads"
NODES = "gpu_node_index"
GPUS_IN_USE = "gpus_in_use"
LOCAL_QUEUES = "local_queue_index"
INDEXES = (JOBS, TRAINER_JOBS, TRAINER_PODS, WORKLOADS, NODES, GPUS_IN_USE, LOCAL_QUEUES)

_DESERIALIZER = client.ApiClient()


def to_model(body: Mapping[str, Any], kind: str) -> Any:
    """A kubernetes client model (``V1Job``, ``V1Pod``) from a watched object's raw dict."""
    return _DESERIALIZER._ApiClient__deserialize(dict(body), kind)


def _version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _first(store: Any) -> Any:
    items = list(store) if store is not None else []
    return items[0] if items else None


class Cache:
    """Read access to the indexes, plus the newest FineTuneJob bodies this operator wrote itself
    (a status patch's response is newer than the watch until its event arrives)."""

    def __init__(self) -> None:
        self._indexes: Mapping[str, Any] = {}
        self.ready = threading.Event()
        self._written: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def attach(self, kwargs: Mapping[str, Any]) -> None:
        """Takes kopf's (live) index objects from a handler's kwargs, the first time one runs."""
        if not self.ready.is_set() and all(name in kwargs for name in INDEXES):
            self._indexes = {name: kwargs[name] for name in kwargs if isinstance(name, str)}
            self.ready.set()

    def index(self, name: str) -> Any:
        return self._indexes.get(name, {})

    def _one(self, name: str, key: Any) -> Any:
        """The value index ``name`` keeps under ``key`` (one object yields it); None if none does."""
        return _first(self.index(name).get(key))

    def job_keys(self) -> list[Key]:
        return list(self.index(JOBS))

    # --- FineTuneJobs --------------------------------------------------------------
    def job_body(self, key: Key) -> dict[str, Any] | None:
        """The newest body known of the job: the watch's, or the one our last write returned."""
        watched = self._one(JOBS, key)
        with self._lock:
            written = self._written.get(key)
            if watched is None:
                self._written.pop(key, None)  # deleted: what we wrote is history
                return None
            if written is not None and _version(written) > _version(watched):
                return written
            self._written.pop(key, None)
        return dict(watched)

    def finished(self, key: Key) -> bool:
        """Whether the job is known and Succeeded or Failed."""
        body = self.job_body(key)
        return body is not None and (body.get("status") or {}).get("phase") in contract.TERMINAL_PHASES

    def remember(self, body: Mapping[str, Any]) -> None:
        """Keeps the FineTuneJob an API write returned, until the watch catches up with it."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._lock:
            self._written[key] = job_entry(body)

    # --- a job's world -------------------------------------------------------------
    def observe(self, job: FineTuneJob) -> Observed:
        """The trainer Job, its pods and its Kueue Workload, as the watches last saw them."""
        from .kube import owned_by  # kube imports this module

        key = (job.namespace, job.name)
        found = self._one(TRAINER_JOBS, key)
        if found is None:
            return Observed()
        trainer = owned_by(found, job)
        pods: dict[str, PodState] = {}
        for job_uid, pod in list(self.index(TRAINER_PODS).get(key) or ()):
            if job_uid == trainer.uid:
                pods[pod.name] = pod
        workload = None
        if trainer.queue:
            workload = self._one(WORKLOADS, (job.namespace, trainer.uid))
        return Observed(trainer=trainer, pods=pods, workload=workload)

    def has_local_queue(self, namespace: str, name: str) -> bool:
        """Whether Kueue's LocalQueue ``namespace/name`` exists (False without Kueue)."""
        return (namespace, name) in self.index(LOCAL_QUEUES)

    def gpu_nodes(self, with_usage: bool) -> list[pl.GpuNode]:
        """Ready GPU nodes; their free GPUs count the bound pods' requests when ``with_usage``."""
        nodes = [_first(store) for store in list(self.index(NODES).values())]
        used: dict[str, int] = {}
        if with_usage:
            for node, store in list(self.index(GPUS_IN_USE).items()):
                used[node] = sum(list(store))
        return pl.gpu_nodes([n for n in nodes if n is not None], used=used)


# --- what the index functions keep of each object --------------------------------------
def job_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """A FineTuneJob's body as kept: everything but ``metadata.managedFields`` (often its biggest part)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def trainer_job_entry(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any]) -> Any:
    """{(namespace, FineTuneJob): TrainerJob} for a Job the operator made (labelled with its job)."""
    from .kube import trainer_job_state

    owner = labels.get(contract.LABEL_JOB)
    return {(namespace, owner): trainer_job_state(to_model(body, "V1Job"))} if owner else None


def trainer_pod_entry(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any]) -> Any:
    """{(namespace, FineTuneJob): (Job uid, PodState)} for a trainer pod."""
    from .kube import pod_state

    owner = labels.get(contract.LABEL_JOB)
    if not owner or labels.get(contract.LABEL_COMPONENT) != contract.COMPONENT_TRAINER:
        return None
    job_uid = labels.get(contract.LABEL_CONTROLLER_UID, "")
    return {(namespace, owner): (job_uid, pod_state(to_model(body, "V1Pod")))}


def workload_entry(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any]) -> Any:
    """{(namespace, Job uid): WorkloadState} for a Kueue Workload of a Job."""
    from .kube import workload_state

    job_uid = labels.get(contract.LABEL_KUEUE_JOB_UID)
    return {(namespace, job_uid): workload_state(dict(body))} if job_uid else None


def workload_owner(namespace: str, body: Mapping[str, Any]) -> Key | None:
    """The FineTuneJob whose trainer Job a Workload admits (its owner Job is ``<job>-trainer``)."""
    from .resources import TRAINER_JOB_SUFFIX

    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        name = str(ref.get("name") or "")
        if ref.get("kind") == "Job" and name.endswith(TRAINER_JOB_SUFFIX):
            return namespace, name[: -len(TRAINER_JOB_SUFFIX)]
    return None


def node_entry(name: str, body: Mapping[str, Any]) -> Any:
    """{node: the parts of a GPU node placement reads}; None for a node without GPUs."""
    status = body.get("status") or {}
    if not (status.get("allocatable") or {}).get(contract.RESOURCE_GPU):
        return None
    meta = body.get("metadata") or {}
    return {
        name: {
            "metadata": {"name": name, "labels": dict(meta.get("labels") or {})},
            "spec": {"unschedulable": (body.get("spec") or {}).get("unschedulable")},
            "status": {
                "allocatable": {contract.RESOURCE_GPU: status["allocatable"][contract.RESOURCE_GPU]},
                "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"],
            },
        }
    }


def gpus_in_use_entry(body: Mapping[str, Any]) -> Any:
    """{node: GPUs} for a bound pod that has not ended and asks for GPUs."""
    spec = body.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    n = pl.pod_gpus(spec.get("containers") or [])
    return {node: n} if n else None


__all__ = ["Cache", "Key", "TrainerJob"]
