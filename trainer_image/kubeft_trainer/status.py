"""Reports progress to the FineTuneJob's status subresource, only the fields the trainer owns.

The trainer owns ``phase`` while its pod trains (Training, Evaluating, Exporting: the operator
sets every other phase, Initializing included), ``progress`` (with ``progress.message`` for what
initialisation is doing and dataset warnings), ``checkpoints``, ``artifacts`` and ``metrics``
(kubeft.contract.TRAINER_STATUS_FIELDS); the operator owns the rest
(kubeft.contract.OPERATOR_STATUS_FIELDS) and the final phase. A failure reaches the operator
through the termination message, not the status.

Updates are merged locally and sent as one JSON merge patch at most every
`interval` seconds by a background thread, so a thousand trainers cannot flood the API
server; `close()` sends what is left. A status that cannot be patched (API server away,
object deleted, RBAC) is logged and never fails the training run.

Events (`event()`) are few (what the dataset's lengths look like) and go out at once as
core/v1 Events on the FineTuneJob, best-effort like the status: an Event that cannot be
created is logged, and after a 403 (the trainer's Role lacks ``create`` on ``events``) no
more are tried.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import threading
import time
import uuid
from typing import Any

from kubeft import contract

log = logging.getLogger(__name__)

PHASE_TRAINING = contract.PHASE_TRAINING
PHASE_EVALUATING = contract.PHASE_EVALUATING
PHASE_EXPORTING = contract.PHASE_EXPORTING
TRAINER_PHASES = contract.TRAINER_PHASES
OWNED_FIELDS = ("phase", *contract.TRAINER_STATUS_FIELDS)
EVENT_TYPES = ("Normal", "Warning")
EVENT_MESSAGE_LIMIT = 1024
EVENT_TIMEOUT_SECONDS = 10


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class StatusReporter:
    """Collects status updates; this base class only keeps them (local runs without a cluster)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []  # (type, reason, message), as posted
        self._lock = threading.Lock()

    def update(self, **fields: Any) -> None:
        """Merges `fields` (only trainer-owned ones) into the pending status."""
        unknown = set(fields) - set(OWNED_FIELDS)
        if unknown:
            raise ValueError(f"status fields {sorted(unknown)} belong to the operator")
        if "phase" in fields and fields["phase"] not in TRAINER_PHASES:
            raise ValueError(f"phase {fields['phase']!r} is not one the trainer sets")
        with self._lock:
            _merge(self.state, fields)
            self._dirty()

    def _dirty(self) -> None:
        """Called (under the lock) after each update."""

    def event(self, type_: str, reason: str, message: str) -> None:
        """Posts an Event (Normal or Warning) on the FineTuneJob; this base class only keeps it."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"event type {type_!r} is not one of {EVENT_TYPES}")
        message = _cap(message)
        with self._lock:
            self.events.append((type_, reason, message))
        self._post(type_, reason, message)

    def _post(self, type_: str, reason: str, message: str) -> None:
        """Sends one Event (nothing here: local runs have no cluster)."""

    def close(self) -> None:
        """Sends anything pending and stops."""


class KubeStatusReporter(StatusReporter):
    """Patches `finetunejobs/<name>/status` with merge patches, rate-limited."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        name: str,
        interval: float = 5.0,
        core: Any = None,
        uid: str = "",
    ) -> None:
        super().__init__()
        self.api = api
        self.core = core  # CoreV1Api for Events; None: no Events
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.interval = interval
        self.patches_sent = 0
        self.events_sent = 0
        self._events_disabled = core is None
        self._pending: dict[str, Any] = {}
        self._last_sent = 0.0
        self._wake = threading.Event()
        self._stop = False
        self._disabled = False
        self._thread = threading.Thread(target=self._run, name="status-reporter", daemon=True)
        self._thread.start()

    def update(self, **fields: Any) -> None:
        super().update(**fields)
        with self._lock:
            _merge(self._pending, fields)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            wait = self._last_sent + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._flush()
            if self._stop:
                return

    def _flush(self) -> None:
        with self._lock:
            body, self._pending = self._pending, {}
        if not body or self._disabled:
            return
        self._last_sent = time.monotonic()
        try:
            self.api.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, self.namespace, contract.PLURAL, self.name, {"status": body}
            )
            self.patches_sent += 1
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status in (403, 404):
                log.warning(
                    "cannot patch status of %s/%s (%s %s); status reporting disabled",
                    self.namespace,
                    self.name,
                    status,
                    getattr(exc, "reason", ""),
                )
                self._disabled = True
                return
            log.warning("status patch failed (%s); will retry with the next update", exc)
            with self._lock:  # keep what was not sent; newer values win
                merged = body
                _merge(merged, self._pending)
                self._pending = merged

    def _post(self, type_: str, reason: str, message: str) -> None:
        if self._events_disabled:
            return
        try:
            self.core.create_namespaced_event(
                self.namespace,
                event_body(self.namespace, self.name, self._job_uid(), type_, reason, message),
                _request_timeout=EVENT_TIMEOUT_SECONDS,
            )
            self.events_sent += 1
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 403:
                log.warning(
                    "cannot create events in %s (403 %s): the trainer's Role needs create on events; "
                    "events disabled",
                    self.namespace,
                    getattr(exc, "reason", ""),
                )
                self._events_disabled = True
                return
            log.warning("event %s not posted (%s)", reason, exc)

    def _job_uid(self) -> str:
        # kubectl describe matches Events by the object's uid; the operator's job.json carries it,
        # a local --config may not: read it once from the object (the Role allows get).
        if not self.uid:
            try:
                obj = self.api.get_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, self.namespace, contract.PLURAL, self.name
                )
                self.uid = str(obj["metadata"]["uid"])
            except Exception as exc:
                log.debug("cannot read the uid of %s/%s: %s", self.namespace, self.name, exc)
        return self.uid

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=self.interval + 30)


def _cap(message: str, limit: int = EVENT_MESSAGE_LIMIT) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def event_body(namespace: str, name: str, uid: str, type_: str, reason: str, message: str) -> Any:
    """A core/v1 Event about the FineTuneJob `name`, reported by this trainer pod."""
    from kubernetes import client

    now = dt.datetime.now(dt.UTC)
    return client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:12]}", namespace=namespace),
        involved_object=client.V1ObjectReference(
            api_version=contract.API_VERSION,
            kind=contract.KIND,
            name=name,
            namespace=namespace,
            uid=uid or None,
        ),
        type=type_,
        reason=reason,
        message=message,
        source=client.V1EventSource(component="kubeft-trainer"),
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        reporting_component="kubeft.io/trainer",
        reporting_instance=os.environ.get("HOSTNAME", "kubeft-trainer"),
    )


def kube_custom_objects_api() -> Any | None:
    """CustomObjectsApi from the in-cluster service account, or $KUBECONFIG; None when neither is there."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        elif os.environ.get("KUBECONFIG"):
            config.load_kube_config(config_file=os.environ["KUBECONFIG"], client_configuration=configuration)
        else:
            return None
    except config.ConfigException as exc:
        log.warning("no usable Kubernetes config (%s); status reporting disabled", exc)
        return None
    return client.CustomObjectsApi(client.ApiClient(configuration))


def make_reporter(enabled: bool, namespace: str, name: str, interval: float, uid: str = "") -> StatusReporter:
    """A KubeStatusReporter when enabled and a cluster is reachable, else a local-only reporter."""
    if enabled:
        api = kube_custom_objects_api()
        if api is not None:
            from kubernetes import client

            log.info(
                "reporting status to %s/%s %s (at most every %.0fs)",
                namespace,
                contract.PLURAL,
                name,
                interval,
            )
            core = client.CoreV1Api(api.api_client)
            return KubeStatusReporter(api, namespace, name, interval, core=core, uid=uid)
        log.info("not in a cluster and no KUBECONFIG: status reporting disabled")
    return StatusReporter()
