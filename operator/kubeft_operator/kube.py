"""The operator's API calls: observe a job's world, apply a decision, write status and events.

Everything here is thin; the decisions are in :mod:`.reconcile`. Secret values
are read into memory only to reach the model's config.json and never leave this
module (not logged, not written to any object).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubeft import contract
from kubeft import profile as profiles
from kubeft.kubeapi import create_or_replace

from . import conditions as cond
from . import endpoints, exportcheck, metrics, modelconfig, resources, storageauth
from . import placement as pl
from .api import FineTuneJob
from .informers import Cache
from .reconcile import Decision, Inputs, Observed, PodState, TrainerJob, WorkloadState, iso
from .settings import Settings

Logger = logging.Logger | logging.LoggerAdapter[Any]


class TokenBucket:
    """A client-side rate limit: ``qps`` requests a second on average, bursts of ``burst``.

    ``acquire`` blocks (in the calling worker thread, never kopf's event loop) until a token is
    there; the clock and the sleep are parameters so tests need no real time.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.qps, self.burst, self.clock, self.sleep = qps, burst, clock, sleep
        self.tokens = float(burst)
        self.stamp = clock()
        self.lock = threading.Lock()
        self.waited = 0.0  # seconds callers spent waiting for a token, in all

    def acquire(self) -> None:
        with self.lock:
            now = self.clock()
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.qps)
            self.stamp = now
            self.tokens -= 1.0
            wait = -self.tokens / self.qps if self.tokens < 0 else 0.0
            self.waited += wait
        if wait > 0:
            self.sleep(wait)


class RateLimitedApiClient(client.ApiClient):  # type: ignore[misc]
    """The official client with every request through a :class:`TokenBucket` (QPS and burst)."""

    def __init__(self, configuration: client.Configuration, bucket: TokenBucket) -> None:
        super().__init__(configuration)
        self.bucket = bucket

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        self.bucket.acquire()
        verb, resource = request_kind(method, url)
        metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
        try:
            return super().call_api(method, url, *args, **kwargs)
        except ApiException as exc:
            metrics.API_ERRORS.labels(verb=verb, resource=resource, code=str(exc.status)).inc()
            raise


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_kind(method: str, url: str) -> tuple[str, str]:
    """(verb, resource[/subresource]) of a request, as the API server's request metrics name them:
    ``("list", "pods")``, ``("patch", "finetunejobs/status")``."""
    segs = [s for s in urllib.parse.urlsplit(url).path.split("/") if s]
    start = 2 if segs[:1] == ["api"] else 3
    if len(segs) > start + 2 and segs[start] == "namespaces":
        start += 2  # /namespaces/<ns>/<resource>...; /namespaces/<ns> alone is the namespace itself
    rest = segs[start:]
    if not rest:
        return method.lower(), ""
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = ("get" if named else "list") if method == "GET" else _VERBS.get(method, method.lower())
    return verb, resource


@dataclass
class Kube:
    """Typed API clients, built once at startup; with a :class:`~.informers.Cache` (the running
    operator) a job's world is read from the watches instead of the API server."""

    api: client.ApiClient
    cache: Cache | None = None

    @classmethod
    def from_environment(cls, settings: Settings | None = None) -> Kube:
        """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config; requests are
        limited to ``settings.api_qps`` a second (bursts of ``api_burst``)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            # KUBECONFIG is read now, not when the kubernetes package was imported
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        s = settings or Settings()
        return cls(RateLimitedApiClient(configuration, TokenBucket(s.api_qps, s.api_burst)))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # --- reading -------------------------------------------------------------------
    def observe(self, job: FineTuneJob) -> Observed:
        """The trainer Job, its pods and its Kueue Workload: from the watches' caches when the
        operator runs them, else read now (each only when there is one)."""
        observed = self.cache.observe(job) if self.cache is not None else self._read(job)
        trainer, pods = observed.trainer, observed.pods
        if (
            trainer is not None
            and trainer.started  # the Job controller has tried to make its pod...
            and not trainer.active  # ...and counts none
            and not trainer.suspended
            and not any(not p.terminated for p in pods.values())
            and not (trainer.complete or trainer.failure)
        ):  # no pod: did the Job controller fail to make one (a ResourceQuota)? Events are not cached
            trainer = replace(trainer, create_error=self._create_error(job.namespace, trainer.uid))
            observed = replace(observed, trainer=trainer)
        return observed

    def _read(self, job: FineTuneJob) -> Observed:
        name = resources.trainer_job_name(job)
        body = _get_or_none(self.batch.read_namespaced_job, name, job.namespace)
        if body is None:
            return Observed()
        pods: dict[str, PodState] = {}
        if body.metadata.uid:
            selector = f"{contract.LABEL_CONTROLLER_UID}={body.metadata.uid}"
            items = self.core.list_namespaced_pod(job.namespace, label_selector=selector).items
            pods = {p.metadata.name: pod_state(p) for p in items}
        trainer = trainer_job_state(body, job)
        workload = self._workload(job.namespace, body.metadata.uid) if trainer.queue else None
        return Observed(trainer=trainer, pods=pods, workload=workload)

    def _create_error(self, namespace: str, uid: str) -> str | None:
        """The Job controller's newest FailedCreate event (a ResourceQuota refusal, for one)."""
        events = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.uid={uid},reason=FailedCreate"
        ).items
        newest = max(events, key=lambda e: e.last_timestamp or e.event_time or e.first_timestamp or 0,
                     default=None)  # fmt: skip
        return str(newest.message) if newest is not None and newest.message else None

    def _workload(self, namespace: str, job_uid: str) -> WorkloadState | None:
        """Kueue's Workload for the Job (by Kueue's job-uid label); None when Kueue made none (yet)."""
        try:
            items = self.custom.list_namespaced_custom_object(
                contract.KUEUE_GROUP, contract.KUEUE_VERSION, namespace, "workloads",
                label_selector=f"{contract.LABEL_KUEUE_JOB_UID}={job_uid}",
            )["items"]  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:  # Kueue is not installed
                return None
            raise
        return workload_state(items[0]) if items else None

    def default_queue(self, job: FineTuneJob, settings: Settings) -> str | None:
        """``spec.queueName``, else the namespace's LocalQueue named ``settings.default_queue_name``."""
        if job.spec.queue_name:
            return job.spec.queue_name
        if not settings.default_queue_name:
            return None
        if self.cache is not None:
            found = self.cache.has_local_queue(job.namespace, settings.default_queue_name)
            return settings.default_queue_name if found else None
        try:
            self.custom.get_namespaced_custom_object(
                contract.KUEUE_GROUP, contract.KUEUE_VERSION, job.namespace, "localqueues",
                settings.default_queue_name,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:  # no such LocalQueue, or no Kueue at all
                return None
            raise
        return settings.default_queue_name

    def delete_run_objects(self, job: FineTuneJob, settings: Settings) -> tuple[str, int]:
        """Deletes the job run's checkpoints and artifacts (spec.cleanup: Delete): (where, how many).

        Raises LookupError when the storage Secret is gone (or not readable), STS refuses a
        web-identity job's token (nothing can be deleted without credentials), or the storage endpoint
        is not one the operator may contact; an STS that cannot be reached raises
        StorageIdentityError (the caller retries).
        """
        refused = endpoints.storage_problem(job, settings)
        if refused:
            raise LookupError(refused)
        if resources.uses_web_identity(job):
            try:
                creds = storageauth.credentials(self.core, job, settings)
            except storageauth.StorageIdentityError as exc:
                if not exc.permanent:
                    raise
                raise LookupError(str(exc)) from exc
        else:
            found = self._storage_credentials(job, settings)  # the Secret: gone, unreadable, keyless
            if isinstance(found, Inputs):
                raise LookupError(found.invalid_message)
            creds = found
        bucket = job.spec.storage.bucket or settings.default_bucket
        prefix = contract.job_prefix(job.namespace, job.name, job.uid) + "/"
        count = modelconfig.delete_prefix(
            job.spec.storage.endpoint or settings.default_storage_endpoint,
            creds.get(contract.SECRET_ACCESS_KEY, ""),
            creds.get(contract.SECRET_SECRET_KEY, ""),
            bucket,
            prefix,
            settings.model_config_timeout_seconds,
            creds.get("sessionToken"),
        )
        return f"s3://{bucket}/{prefix}", count

    def inputs(self, job: FineTuneJob, settings: Settings) -> Inputs:
        """Credentials check, model shape and GPU classes, for placing a pod."""
        refused = endpoints.problem(job, settings)  # before anything is fetched from anywhere
        if refused:
            return Inputs(invalid_reason=cond.ENDPOINT_NOT_ALLOWED, invalid_message=refused)
        found = self._storage_credentials(job, settings)
        if isinstance(found, Inputs):
            return found
        creds = found
        for claim, fields in resources.source_claims(job).items():
            if _get_or_none(self.core.read_namespaced_persistent_volume_claim, claim, job.namespace) is None:
                return Inputs(
                    invalid_reason=cond.CLAIM_NOT_FOUND,
                    invalid_message=(
                        f"{' and '.join(fields)}: PersistentVolumeClaim {claim!r} not found in namespace "
                        f"{job.namespace}; the job waits for it"
                    ),
                )
        try:
            shape = modelconfig.model_shape(
                job.spec,
                endpoint=job.spec.storage.endpoint or settings.default_storage_endpoint,
                credentials=creds,
                hf_endpoint=endpoints.hub_endpoint(job, settings),
                timeout=settings.model_config_timeout_seconds,
            )
        except modelconfig.ModelConfigError as exc:
            return Inputs(invalid_reason=cond.MODEL_CONFIG_UNAVAILABLE, invalid_message=str(exc))
        problem = modelconfig.dataset_problem(
            job.spec,
            endpoint=job.spec.storage.endpoint or settings.default_storage_endpoint,
            credentials=creds,
            timeout=settings.model_config_timeout_seconds,
        ) or exportcheck.problem(self.core, job, shape)
        if problem is not None:
            return Inputs(invalid_reason=problem.reason, invalid_message=problem.message)
        queue = self.default_queue(job, settings)
        # without Kueue the operator prefers a class with a free GPU now
        if self.cache is not None:
            nodes = self.cache.gpu_nodes(with_usage=queue is None)
        else:
            bound = []
            if queue is None:
                bound = self.core.list_pod_for_all_namespaces(
                    field_selector="spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
                ).items
            nodes = pl.gpu_nodes(self.core.list_node().items, bound)
        classes = pl.gpu_classes(nodes)
        hf_token = contract.SECRET_HF_TOKEN in creds and "identity" not in creds
        return Inputs(classes=classes, shape=shape, has_hf_token=hf_token, queue=queue)

    def _storage_credentials(self, job: FineTuneJob, settings: Settings) -> dict[str, str] | Inputs:
        """The job's storage credentials as the operator may use them, or why there are none.

        A Secret's keys when it names one; else (spec.storage.roleArn) the role's session keys for the
        job's own ServiceAccount token, through STS (storageauth).
        """
        secret_name = job.spec.storage.credentials_secret
        if not secret_name and resources.uses_web_identity(job):
            try:
                return storageauth.credentials(self.core, job, settings)
            except storageauth.StorageIdentityError as exc:
                return Inputs(invalid_reason=cond.WEB_IDENTITY_REFUSED, invalid_message=str(exc))
        if not secret_name:  # the admission policy requires one; an object from before it may lack both
            return Inputs(
                invalid_reason=cond.INVALID_SPEC,
                invalid_message=(
                    "spec.storage.credentialsSecret or spec.storage.roleArn is required (the Secret with "
                    "the keys, or the role the job's ServiceAccount token is exchanged for)"
                ),
            )
        try:
            secret = _get_or_none(self.core.read_namespaced_secret, secret_name, job.namespace)
        except ApiException as exc:
            if exc.status != 403:
                raise
            text = cond.secret_forbidden("storage.credentialsSecret", secret_name, job.namespace)
            return Inputs(invalid_reason=cond.SECRET_FORBIDDEN, invalid_message=text)
        if secret is None:
            return Inputs(
                invalid_reason=cond.SECRET_NOT_FOUND,
                invalid_message=(
                    f"storage.credentialsSecret {secret_name!r} not found in namespace {job.namespace}"
                ),
            )
        data = secret.data or {}
        missing = [k for k in (contract.SECRET_ACCESS_KEY, contract.SECRET_SECRET_KEY) if k not in data]
        if missing:
            return Inputs(
                invalid_reason=cond.SECRET_KEY_MISSING,
                invalid_message=f"Secret {secret_name!r} has no key {' or '.join(missing)}",
            )
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}

    def ensure_profile_binding(self, profile_name: str, uid: str) -> None:
        """Creates (or replaces) the admission policy binding of one FineTuneProfile."""
        api = client.AdmissionregistrationV1Api(self.api)
        create_or_replace(
            api.create_validating_admission_policy_binding,
            api.read_validating_admission_policy_binding,
            api.replace_validating_admission_policy_binding,
            profiles.binding(profile_name, uid),
        )

    # --- writing -------------------------------------------------------------------
    def apply(self, job: FineTuneJob, decision: Decision, logger: Logger) -> None:
        """Creates and patches children as decided; every step tolerates having been done before."""
        ns = job.namespace
        name = resources.trainer_job_name(job)
        if decision.patch_trainer is not None:
            try:
                self.batch.patch_namespaced_job(name, ns, decision.patch_trainer)
                logger.info("patched Job %s: %s", name, decision.patch_trainer)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        if decision.workload_active is not None:
            workload, active = decision.workload_active
            try:
                self.custom.patch_namespaced_custom_object(
                    contract.KUEUE_GROUP, contract.KUEUE_VERSION, ns, "workloads", workload,
                    {"spec": {"active": active}}, _content_type="application/merge-patch+json",
                )  # fmt: skip
                logger.info("set Workload %s active=%s", workload, active)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        plan = decision.create
        if plan is not None:
            _create(
                lambda: self.core.create_namespaced_service_account(
                    ns, resources.get_service_account(job, plan)
                )
            )
            _create(lambda: self.rbac.create_namespaced_role(ns, resources.get_role(job, plan)))
            _create(
                lambda: self.rbac.create_namespaced_role_binding(ns, resources.get_role_binding(job, plan))
            )
            if plan.world_size > 1:
                _create(lambda: self.core.create_namespaced_service(ns, resources.get_service(job, plan)))
            cm = resources.get_config_map(job, plan)
            if not _create(lambda: self.core.create_namespaced_config_map(ns, cm)):
                self.core.replace_namespaced_config_map(cm.metadata.name, ns, cm)
            body = resources.get_trainer_job(job, plan)
            try:
                created = _create(lambda: self.batch.create_namespaced_job(ns, body))
            except ApiException as exc:
                refusal = quota_message(exc)
                if refusal is None:
                    raise
                raise QuotaExceeded(refusal) from exc
            where = f"LocalQueue {plan.queue}" if plan.queue else "no queue"
            if created:
                logger.info("created Job %s for %s on %s (%s)", name, plan.method,
                            ", ".join(plan.gpu_products), where)  # fmt: skip
            else:
                logger.info("Job %s already exists; adopting it", name)
        if decision.delete_job:
            try:
                self.custom.delete_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, job.namespace, contract.PLURAL, job.name,
                    propagation_policy="Background",
                )  # fmt: skip
                logger.info("deleted after ttlSecondsAfterFinished")
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def patch_status(self, job: FineTuneJob, changes: dict[str, Any]) -> bool:
        """Writes the changed operator-owned status fields as one JSON patch.

        A phase change is guarded by a ``test`` of the phase read: if the trainer
        moved the phase meanwhile, the patch is refused (False) and the next
        reconcile decides again. Fields the trainer owns are never in ``changes``.
        """
        ops: list[dict[str, Any]] = []
        if not job.status:
            ops.append({"op": "add", "path": "/status", "value": {}})
        elif "phase" in changes and job.status.get("phase"):
            ops.append({"op": "test", "path": "/status/phase", "value": job.status["phase"]})
        for key, value in changes.items():
            path = f"/status/{key}"
            if value is None:
                if key in job.status:
                    ops.append({"op": "remove", "path": path})
            else:
                ops.append({"op": "add", "path": path, "value": value})
        if not ops:
            return True
        try:
            written = self.custom.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, job.namespace, contract.PLURAL, job.name, ops,
                _content_type="application/json-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status in (409, 422) and "phase" in changes:
                # the trainer moved the phase meanwhile: its phase stands, the other fields
                # (gpu, vram, pod, trainerJob...) are still ours to record
                rest = {k: v for k, v in changes.items() if k != "phase"}
                self.patch_status(job, rest)
                return False
            if exc.status in (404, 409, 422):
                return False
            raise
        if self.cache is not None and isinstance(written, dict):
            self.cache.remember(written)  # newer than the watch's copy until its event arrives
        return True

    def event(self, job: FineTuneJob, type_: str, reason: str, message: str) -> None:
        """Posts a Kubernetes Event on the FineTuneJob."""
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{job.name}.{uuid.uuid4().hex[:12]}", namespace=job.namespace),
            involved_object=client.V1ObjectReference(
                api_version=contract.API_VERSION,
                kind=contract.KIND,
                name=job.name,
                namespace=job.namespace,
                uid=job.uid,
            ),
            type=type_,
            reason=reason,
            message=cond.cap(message),
            source=client.V1EventSource(component="kubeft-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component="kubeft.io/operator",
            reporting_instance="kubeft-operator",
        )
        self.core.create_namespaced_event(job.namespace, body)


class QuotaExceeded(Exception):
    """The API server refused to create an object because a ResourceQuota of the namespace is used up."""


def quota_message(exc: ApiException) -> str | None:
    """The quota's own words when ``exc`` is a ResourceQuota refusal (403 "exceeded quota"), else None."""
    if exc.status != 403:
        return None
    try:
        message = str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        message = str(exc.body or "")
    return message if "exceeded quota" in message else None


def _create(call: Any) -> bool:
    """Runs a create call; False if the object already exists."""
    try:
        call()
        return True
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise


def trainer_job_state(body: client.V1Job, job: FineTuneJob | None = None) -> TrainerJob:
    """The parts of the trainer Job the lifecycle looks at (``owned`` by ``job``, when given)."""
    spec = body.spec or client.V1JobSpec(template=client.V1PodTemplateSpec())
    status = body.status or client.V1JobStatus()
    conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
    failed = conditions.get("Failed")
    template = spec.template.spec if spec.template else None
    selector = (template.node_selector or {}) if template else {}
    owner = next((r.uid for r in body.metadata.owner_references or [] if r.controller), "")
    trainer = TrainerJob(
        name=body.metadata.name,
        uid=body.metadata.uid or "",
        suspended=bool(spec.suspend),
        queue=(body.metadata.labels or {}).get(contract.LABEL_QUEUE_NAME),
        failed=status.failed or 0,
        complete="Complete" in conditions,
        failure=(failed.reason or "Failed", failed.message or "") if failed is not None else None,
        gpu_product=selector.get(contract.LABEL_GPU_PRODUCT),
        deleting=body.metadata.deletion_timestamp is not None,
        owner_uid=owner,
        started=status.start_time is not None,
        active=status.active or 0,
    )
    return owned_by(trainer, job) if job is not None else trainer


def owned_by(trainer: TrainerJob, job: FineTuneJob) -> TrainerJob:
    """``trainer`` with ``owned`` said for ``job`` (a job not created yet owns what it finds)."""
    return replace(trainer, owned=not job.uid or trainer.owner_uid == job.uid)


def workload_state(body: dict[str, Any]) -> WorkloadState:
    """The parts of a Kueue Workload the lifecycle looks at (kueue.x-k8s.io/v1beta2)."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}

    def true(type_: str) -> dict[str, Any] | None:
        c = conditions.get(type_)
        return c if c is not None and c.get("status") == "True" else None

    admission = status.get("admission") or {}
    flavor = ""
    for assignment in admission.get("podSetAssignments") or []:
        flavors = assignment.get("flavors") or {}
        flavor = flavors.get(contract.RESOURCE_GPU) or next(iter(flavors.values()), "") or flavor
    reserved = conditions.get("QuotaReserved") or {}
    waiting = str(reserved.get("message") or "") if reserved.get("status") != "True" else ""
    evicted = true("Evicted")
    return WorkloadState(
        name=str(body["metadata"]["name"]),
        active=(body.get("spec") or {}).get("active", True) is not False,
        admitted=true("Admitted") is not None,
        cluster_queue=str(admission.get("clusterQueue") or ""),
        flavor=str(flavor),
        waiting=waiting,
        evicted=(str(evicted.get("reason") or ""), str(evicted.get("message") or "")) if evicted else None,
    )


def _get_or_none(read: Callable[[str, str], Any], name: str, namespace: str) -> Any:
    """The object `read` returns, or None when the API server says it does not exist (404)."""
    try:
        return read(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None


def pod_state(pod: client.V1Pod) -> PodState:
    """The parts of a pod the lifecycle looks at, including the trainer container's termination."""
    status = pod.status or client.V1PodStatus()
    exit_code = reason = message = None
    for cs in status.container_statuses or []:
        term = cs.state.terminated if cs.state else None
        if cs.name == contract.TRAINER_CONTAINER and term is not None:
            exit_code, reason, message = term.exit_code, term.reason, term.message
            reason, message = _trainer_termination(reason, message)
    unschedulable = next(
        (
            c.message
            for c in status.conditions or []
            if c.type == "PodScheduled" and c.status == "False" and c.message
        ),
        None,
    )
    disrupted = next(
        (
            c.reason or "disrupted"
            for c in status.conditions or []
            if c.type == "DisruptionTarget" and c.status == "True"
        ),
        None,
    )
    return PodState(
        name=pod.metadata.name,
        phase=status.phase or "Pending",
        node=pod.spec.node_name if pod.spec else None,
        deleting=pod.metadata.deletion_timestamp is not None,
        exit_code=exit_code,
        reason=reason or status.reason,
        message=message or status.message,
        unschedulable=unschedulable,
        disrupted=disrupted,
        created=iso(pod.metadata.creation_timestamp) if pod.metadata.creation_timestamp else "",
    )


def _trainer_termination(reason: str | None, message: str | None) -> tuple[str | None, str | None]:
    """The trainer writes its termination message as JSON {reason, message}; a container
    reason with meaning of its own (OOMKilled) wins over the trainer's."""
    try:
        doc = json.loads(message or "")
    except ValueError:
        return reason, message
    if not isinstance(doc, dict):
        return reason, message
    if reason in (None, "", "Error"):
        reason = doc.get("reason") or reason
    return reason, doc.get("message") or message


def utcnow() -> dt.datetime:
    """Now, timezone-aware (a seam for tests)."""
    return dt.datetime.now(dt.UTC)


__all__ = ["Kube", "iso", "pod_state", "utcnow"]
