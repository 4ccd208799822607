"""Reports progress to the FineTuneJob's status subresource, only the fields the trainer owns.

The trainer owns ``phase`` while its pod runs (Initializing, Training, Evaluating, Exporting),
``progress`` (with ``progress.message`` for dataset warnings), ``checkpoints``, ``artifacts`` and
``metrics``; the operator owns the rest (message, conditions, vram, gpu, node, pod, restarts) and the
final phase. A failure reaches the operator through the termination message, not the status.

Updates are merged locally and sent as one JSON merge patch at most every
`interval` seconds by a background thread, so a thousand trainers cannot flood the API
server; `close()` sends what is left. A status that cannot be patched (API server away,
object deleted, RBAC) is logged and never fails the training run.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any

from kubeft import contract

log = logging.getLogger(__name__)

PHASE_INITIALIZING = "Initializing"
PHASE_TRAINING = "Training"
PHASE_EVALUATING = "Evaluating"
PHASE_EXPORTING = "Exporting"
TRAINER_PHASES = (PHASE_INITIALIZING, PHASE_TRAINING, PHASE_EVALUATING, PHASE_EXPORTING)
OWNED_FIELDS = ("phase", "progress", "checkpoints", "artifacts", "metrics")


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

    def close(self) -> None:
        """Sends anything pending and stops."""


class KubeStatusReporter(StatusReporter):
    """Patches `finetunejobs/<name>/status` with merge patches, rate-limited."""

    def __init__(self, api: Any, namespace: str, name: str, interval: float = 5.0) -> None:
        super().__init__()
        self.api = api
        self.namespace = namespace
        self.name = name
        self.interval = interval
        self.patches_sent = 0
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

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=self.interval + 30)


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


def make_reporter(enabled: bool, namespace: str, name: str, interval: float) -> StatusReporter:
    """A KubeStatusReporter when enabled and a cluster is reachable, else a local-only reporter."""
    if enabled:
        api = kube_custom_objects_api()
        if api is not None:
            log.info(
                "reporting status to %s/%s %s (at most every %.0fs)",
                namespace,
                contract.PLURAL,
                name,
                interval,
            )
            return KubeStatusReporter(api, namespace, name, interval)
        log.info("not in a cluster and no KUBECONFIG: status reporting disabled")
    return StatusReporter()
