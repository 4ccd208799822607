"""Prometheus metrics of the operator (served on KUBEFT_METRICS_PORT at /metrics)."""

from __future__ import annotations

import threading
from collections import Counter as _Count
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILE_SECONDS = Histogram(
    "kubeft_operator_reconcile_duration_seconds",
    "Time spent in one reconcile of a FineTuneJob.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PLACEMENTS = Counter(
    "kubeft_operator_placement_decisions_total",
    "Placement decisions: result (placed, waiting, unschedulable), GPU product and method.",
    ["result", "gpu_product", "method"],
)
ERRORS = Counter(
    "kubeft_operator_reconcile_errors_total",
    "Reconciles that failed, by kind of error.",
    ["kind"],
)

API_REQUESTS = Counter(
    "kubeft_operator_api_requests_total",
    "API requests the operator made itself (its watches not included), by verb and resource.",
    ["verb", "resource"],
)

API_ERRORS = Counter(
    "kubeft_operator_api_errors_total",
    "API requests of the operator answered with an error (404 and 409 are expected ones), by code.",
    ["verb", "resource", "code"],
)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()
_server_started = False


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    """Records a job's phase (None: the job is gone) for ``kubeft_operator_jobs``."""
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase or "Pending"


class _JobsByPhase(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubeft_operator_jobs", "FineTuneJobs by phase.", labels=["phase"])
        per_job = GaugeMetricFamily(
            "kubeft_operator_job_phase",
            "1 for each FineTuneJob's current phase (the alerts of charts/kubeft/files/alerts.yaml).",
            labels=["namespace", "job", "phase"],
        )
        with _lock:
            phases = dict(_phases)
        for phase, n in sorted(_Count(phases.values()).items()):
            family.add_metric([phase], n)
        for (namespace, name), phase in sorted(phases.items()):
            per_job.add_metric([namespace, name, phase], 1)
        yield family
        yield per_job


REGISTRY.register(_JobsByPhase())


def start(port: int) -> None:
    """Serves /metrics on ``port`` once per process (0: not at all)."""
    global _server_started
    if port and not _server_started:
        start_http_server(port)
        _server_started = True
