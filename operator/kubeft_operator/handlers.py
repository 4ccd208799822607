"""kopf registration: watches that keep the caches and queue jobs, and the few changing handlers.

The FineTuneJobs, their trainer Jobs, trainer pods and Kueue Workloads, and the GPU nodes are
watched into kopf indexes (:mod:`.informers`); every change of one of them puts its FineTuneJob
on the work queue, and the :class:`~.controller.Controller`'s workers reconcile it there. A
finished job costs no request; no job carries a finalizer unless it has ``spec.cleanup: Delete``
(its objects in storage must go before it does). With more than one replica, a Lease elects the
one whose workers act; the others keep their caches warm and take over when its Lease runs out.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from kubeft import contract
from kubeft import profile as profiles

from . import informers, metrics
from .api import FineTuneJob
from .controller import Controller
from .informers import Key
from .kube import Kube
from .leader import LeaseElector
from .settings import Settings

Logger = logging.Logger | logging.LoggerAdapter[Any]


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig that KUBECONFIG names at startup time."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    """Settings, API clients, the work queue and its workers, the leader election."""
    settings.persistence.finalizer = f"{contract.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=contract.GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # events are few and written by the reconcile, not log lines
    # "Handler ... succeeded" for every watch event of every job, pod and Job says nothing
    # (failures are still logged, at ERROR); the reconcile logs what it does itself
    if logging.getLogger("kopf").getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    memo.settings = Settings.from_env()
    kube = Kube.from_environment(memo.settings)
    controller = Controller(kube=kube, settings=memo.settings)
    controller.profile_of = lambda namespace, requested: namespace_profile(
        namespace, controller.cache.index("namespace_profiles"), controller.cache.index("profile_specs"),
        requested,
    )  # fmt: skip
    s = memo.settings
    if s.leader_election_lease:
        controller.elector = LeaseElector(
            kube.api,
            s.leader_election_namespace or os.environ.get("POD_NAMESPACE") or "default",
            s.leader_election_lease,
            duration=s.leader_election_lease_seconds,
            retry=s.leader_election_retry_seconds,
            on_started_leading=controller.enqueue_all,
            on_stopped_leading=lambda: os._exit(1),  # come back as a standby; never act on a lost Lease
        )
    memo.kube, memo.controller = kube, controller
    controller.start()
    metrics.start(s.metrics_port)
    election = f"leader election on Lease {s.leader_election_lease}" if s.leader_election_lease else ""
    logger.info("kubeft operator started; trainer image %s; %d workers; %s",
                s.trainer_image, s.workers, election or "single replica")  # fmt: skip


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    """Stops the workers and gives the Lease up, so a standby takes over at once."""
    controller = getattr(memo, "controller", None)
    if controller is not None:
        controller.stop()


def _enqueue(memo: Any, key: Key | None, kwargs: dict[str, Any], child: bool = True) -> None:
    """Queues the job ``key``; a change of a child (its Job, pod, Workload) of a finished job is
    dropped: nothing can follow from it (its TTL has its own schedule)."""
    controller: Controller | None = getattr(memo, "controller", None)
    if controller is None or key is None:
        return
    controller.cache.attach(kwargs)
    if child and controller.cache.finished(key):
        return
    controller.queue.add(key)


# --- the caches: kopf runs no handler before each is filled from its initial listing ---
@kopf.index(contract.GROUP, contract.VERSION, contract.PLURAL)  # type: ignore[arg-type]  # async: runs on the loop
async def ftj_bodies(namespace: str, name: str, body: Any, **_: Any) -> dict[Key, dict[str, Any]]:
    """(namespace, name) → the FineTuneJob as last watched (without managedFields: memory)."""
    return {(namespace, name): informers.job_entry(body)}


@kopf.index("batch", "v1", "jobs", labels={contract.LABEL_MANAGED_BY: contract.MANAGED_BY})  # type: ignore[arg-type]  # async: runs on the loop
async def trainer_jobs(namespace: str, labels: Any, body: Any, **_: Any) -> Any:
    """(namespace, FineTuneJob) → its trainer Job."""
    return informers.trainer_job_entry(namespace, labels, body)


@kopf.index("", "v1", "pods", labels={contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER})  # type: ignore[arg-type]  # async: runs on the loop
async def trainer_pods(namespace: str, labels: Any, body: Any, **_: Any) -> Any:
    """(namespace, FineTuneJob) → (Job uid, PodState) of each of its trainer pods."""
    return informers.trainer_pod_entry(namespace, labels, body)


@kopf.index(contract.KUEUE_GROUP, contract.KUEUE_VERSION, "workloads")  # type: ignore[arg-type]  # async: runs on the loop
async def trainer_workloads(namespace: str, labels: Any, body: Any, **_: Any) -> Any:
    """(namespace, Job uid) → the Kueue Workload of a Job."""
    return informers.workload_entry(namespace, labels, body)


@kopf.index("", "v1", "nodes")  # type: ignore[arg-type]  # async: runs on the loop
async def gpu_node_index(name: str, body: Any, **_: Any) -> Any:
    """Node → what placement reads of it (GPU nodes only)."""
    return informers.node_entry(name, body)


@kopf.index("", "v1", "pods")  # type: ignore[arg-type]  # async: runs on the loop
async def gpus_in_use(body: Any, **_: Any) -> Any:
    """Node → GPUs that bound, running pods ask for (placement without Kueue prefers free GPUs)."""
    return informers.gpus_in_use_entry(body)


@kopf.index(contract.KUEUE_GROUP, contract.KUEUE_VERSION, "localqueues")  # type: ignore[arg-type]  # async
async def local_queue_index(namespace: str, name: str, **_: Any) -> Any:
    """(namespace, name) of every Kueue LocalQueue (a job without spec.queueName goes to `default`)."""
    return {(namespace, name): True}


# --- changes that put a job on the work queue ----------------------------------------
@kopf.on.event(contract.GROUP, contract.VERSION, contract.PLURAL)
async def job_changed(
    type: str | None, name: str, namespace: str | None, status: Any, memo: Any, **kwargs: Any
) -> None:
    """Any change of a FineTuneJob (deletion included); keeps ``kubeft_operator_job_phase`` true
    for every job from the watch alone, finished ones included."""
    metrics.set_phase(namespace or "", name, None if type == "DELETED" else str(status.get("phase") or ""))
    _enqueue(memo, (namespace or "", name), kwargs, child=False)


@kopf.on.event("batch", "v1", "jobs", labels={contract.LABEL_MANAGED_BY: contract.MANAGED_BY})
async def trainer_job_changed(namespace: str | None, labels: Any, memo: Any, **kwargs: Any) -> None:
    owner = labels.get(contract.LABEL_JOB)
    _enqueue(memo, (namespace or "", owner) if owner else None, kwargs)


@kopf.on.event("", "v1", "pods", labels={contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER})
async def trainer_pod_changed(namespace: str | None, labels: Any, memo: Any, **kwargs: Any) -> None:
    owner = labels.get(contract.LABEL_JOB)
    _enqueue(memo, (namespace or "", owner) if owner else None, kwargs)


@kopf.on.event(contract.KUEUE_GROUP, contract.KUEUE_VERSION, "workloads")
async def workload_changed(namespace: str | None, body: Any, memo: Any, **kwargs: Any) -> None:
    _enqueue(memo, informers.workload_owner(namespace or "", body), kwargs)


@kopf.index("", "v1", "namespaces")
def namespace_profiles(
    name: str, labels: Any, annotations: Any, **_: Any
) -> dict[str, tuple[str, ...]] | None:
    """Namespace → the FineTuneProfiles it allows, its label's (the default) first (from the watch:
    no request per tick)."""
    allowed = profiles.allowed_profiles(
        labels.get(profiles.LABEL_PROFILE), annotations.get(profiles.ANNOTATION_ALLOWED)
    )
    return {name: allowed} if allowed else None


@kopf.index(contract.GROUP, contract.VERSION, profiles.PLURAL)
def profile_specs(body: Any, name: str, **_: Any) -> dict[str, profiles.Profile]:
    """FineTuneProfile name → its parsed spec (from the watch)."""
    return {name: profiles.Profile.from_body(body)}


@kopf.on.resume(contract.GROUP, contract.VERSION, profiles.PLURAL)
@kopf.on.create(contract.GROUP, contract.VERSION, profiles.PLURAL)
def bind_profile(name: str, uid: str, memo: Any, logger: Logger, **_: Any) -> None:
    """Each FineTuneProfile gets its ValidatingAdmissionPolicyBinding: the API server then checks
    the jobs of the namespaces labelled with it against its limits at `kubectl apply`."""
    memo.kube.ensure_profile_binding(name, uid)
    logger.info("admission policy %s bound to profile %s", profiles.POLICY, name)


def namespace_profile(
    namespace: str, namespace_profiles: Any, profile_specs: Any, requested: str | None = None
) -> profiles.Profile | None:
    """The Profile of a job of ``namespace`` (naming ``requested`` in spec.profile) from the indexes;
    None when the namespace has none. A profile that does not exist, or that the namespace does not
    allow, comes back as one that refuses every job, saying why."""
    allowed: tuple[str, ...] = next(iter(namespace_profiles.get(namespace, ())), ())
    chosen, why = profiles.choose(namespace, allowed, requested)
    if why is not None:
        return profiles.Profile.refused(requested or "", why)
    if chosen is None:
        return None
    for found in profile_specs.get(chosen, ()):
        return found  # type: ignore[no-any-return]
    return profiles.Profile.refused(chosen, f"FineTuneProfile {chosen} does not exist")


@kopf.on.delete(
    contract.GROUP,
    contract.VERSION,
    contract.PLURAL,
    when=lambda spec, **_: spec.get("cleanup") == "Delete",
    retries=5,
    backoff=10,
)
def clean_up(body: Any, memo: Any, logger: Logger, namespace: str | None, **kwargs: Any) -> None:
    """``spec.cleanup: Delete``: the run's checkpoints and artifacts go before the job does.

    Only such jobs carry the finalizer. Storage away: retried (5 times, then the job is let go,
    with the objects left and a warning, rather than kept undeletable).
    """
    profile = namespace_profile(
        namespace or "", kwargs["namespace_profiles"], kwargs["profile_specs"], body["spec"].get("profile")
    )
    job = FineTuneJob.from_body(body, profile)
    try:
        where, count = memo.kube.delete_run_objects(job, memo.settings)
    except LookupError as exc:
        logger.warning("spec.cleanup: Delete, but %s: the objects are left in storage", exc)
        return
    except Exception as exc:
        raise kopf.TemporaryError(f"cannot delete the job's objects yet: {exc}", delay=10) from exc
    logger.info("spec.cleanup: Delete: removed %d objects under %s", count, where)
