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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubeft import contract

from . import conditions as cond
from . import modelconfig, resources
from . import placement as pl
from .api import FineTuneJob
from .reconcile import Decision, Inputs, PodState, iso
from .settings import Settings

Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass
class Kube:
    """Typed API clients, built once at startup."""

    api: client.ApiClient

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            # KUBECONFIG is read now, not when the kubernetes package was imported
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        return cls(client.ApiClient(configuration))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # --- reading -------------------------------------------------------------------
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The FineTuneJob as stored now (not the possibly older copy of a watch event)."""
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
            )
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def job_pods(self, job: FineTuneJob) -> dict[str, PodState]:
        """The job's trainer pods by name."""
        selector = f"{contract.LABEL_JOB}={job.name},{contract.LABEL_COMPONENT}={contract.COMPONENT_TRAINER}"
        pods = self.core.list_namespaced_pod(job.namespace, label_selector=selector).items
        return {p.metadata.name: pod_state(p) for p in pods if _owned_by(p, job)}

    def delete_run_objects(self, job: FineTuneJob, settings: Settings) -> tuple[str, int]:
        """Deletes the job run's checkpoints and artifacts (spec.cleanup: Delete): (where, how many).

        Raises LookupError when the storage Secret is gone (nothing can be deleted without it).
        """
        name = job.spec.storage.credentials_secret or ""
        secret = _get_or_none(self.core.read_namespaced_secret, name, job.namespace) if name else None
        if secret is None:
            raise LookupError(f"storage.credentialsSecret {name!r} is gone from namespace {job.namespace}")
        creds = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.data or {}).items()}
        bucket = job.spec.storage.bucket or settings.default_bucket
        prefix = contract.job_prefix(job.namespace, job.name, job.uid) + "/"
        count = modelconfig.delete_prefix(
            job.spec.storage.endpoint or settings.default_storage_endpoint,
            creds.get(contract.SECRET_ACCESS_KEY, ""),
            creds.get(contract.SECRET_SECRET_KEY, ""),
            bucket,
            prefix,
            settings.model_config_timeout_seconds,
        )
        return f"s3://{bucket}/{prefix}", count

    def inputs(self, job: FineTuneJob, settings: Settings) -> Inputs:
        """Credentials check, model shape and GPU classes, for placing a pod."""
        secret_name = job.spec.storage.credentials_secret
        if not secret_name:  # the CRD requires it; an object from before that rule may lack it
            return Inputs(
                invalid_reason=cond.INVALID_SPEC,
                invalid_message="spec.storage.credentialsSecret is required (the Secret with the keys)",
            )
        secret = _get_or_none(self.core.read_namespaced_secret, secret_name, job.namespace)
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
        for claim, fields in resources.source_claims(job).items():
            if _get_or_none(self.core.read_namespaced_persistent_volume_claim, claim, job.namespace) is None:
                return Inputs(
                    invalid_reason=cond.CLAIM_NOT_FOUND,
                    invalid_message=(
                        f"{' and '.join(fields)}: PersistentVolumeClaim {claim!r} not found in namespace "
                        f"{job.namespace}; the job waits for it"
                    ),
                )
        creds = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
        try:
            shape = modelconfig.model_shape(
                job.spec,
                endpoint=job.spec.storage.endpoint or settings.default_storage_endpoint,
                credentials=creds,
                hf_endpoint=settings.hf_endpoint,
                timeout=settings.model_config_timeout_seconds,
            )
        except modelconfig.ModelConfigError as exc:
            return Inputs(invalid_reason=cond.MODEL_CONFIG_UNAVAILABLE, invalid_message=str(exc))
        problem = modelconfig.dataset_problem(
            job.spec,
            endpoint=job.spec.storage.endpoint or settings.default_storage_endpoint,
            credentials=creds,
            timeout=settings.model_config_timeout_seconds,
        )
        if problem is not None:
            return Inputs(invalid_reason=problem.reason, invalid_message=problem.message)
        nodes = self.core.list_node().items
        bound = self.core.list_pod_for_all_namespaces(
            field_selector="spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
        ).items
        classes = pl.gpu_classes(pl.gpu_nodes(nodes, bound))
        return Inputs(classes=classes, shape=shape, has_hf_token=contract.SECRET_HF_TOKEN in data)

    # --- writing -------------------------------------------------------------------
    def apply(self, job: FineTuneJob, decision: Decision, logger: Logger) -> None:
        """Deletes and creates children as decided; every step tolerates having been done before."""
        for name in decision.delete_pods:
            try:
                self.core.delete_namespaced_pod(name, job.namespace)
                logger.info("deleted pod %s", name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        plan = decision.create
        if plan is not None:
            ns = job.namespace
            _create(
                lambda: self.core.create_namespaced_service_account(
                    ns, resources.get_service_account(job, plan)
                )
            )
            _create(lambda: self.rbac.create_namespaced_role(ns, resources.get_role(job, plan)))
            _create(
                lambda: self.rbac.create_namespaced_role_binding(ns, resources.get_role_binding(job, plan))
            )
            cm = resources.get_config_map(job, plan)
            if not _create(lambda: self.core.create_namespaced_config_map(ns, cm)):
                self.core.replace_namespaced_config_map(cm.metadata.name, ns, cm)
            pod = resources.get_pod(job, plan)
            try:
                created = _create(lambda: self.core.create_namespaced_pod(ns, pod))
            except ApiException as exc:
                refusal = quota_message(exc)
                if refusal is None:
                    raise
                raise QuotaExceeded(refusal) from exc
            if created:
                logger.info("created pod %s for %s on %s", pod.metadata.name, plan.method, plan.gpu_product)
            else:
                logger.info("pod %s already exists; adopting it", pod.metadata.name)
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
            self.custom.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, job.namespace, contract.PLURAL, job.name, ops,
                _content_type="application/json-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status in (409, 422) and "phase" in changes:
                # the trainer moved the phase meanwhile: its phase stands, the other fields
                # (gpu, vram, pod, podsCreated...) are still ours to record
                rest = {k: v for k, v in changes.items() if k != "phase"}
                self.patch_status(job, rest)
                return False
            if exc.status in (404, 409, 422):
                return False
            raise
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


def _owned_by(pod: client.V1Pod, job: FineTuneJob) -> bool:
    refs = pod.metadata.owner_references or []
    return not job.uid or any(r.uid == job.uid for r in refs)


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
    return PodState(
        name=pod.metadata.name,
        phase=status.phase or "Pending",
        node=pod.spec.node_name if pod.spec else None,
        deleting=pod.metadata.deletion_timestamp is not None,
        exit_code=exit_code,
        reason=reason or status.reason,
        message=message or status.message,
        unschedulable=unschedulable,
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
