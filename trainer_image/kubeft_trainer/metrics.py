"""Prometheus metrics of one trainer run, served on /metrics (port $KUBEFT_METRICS_PORT).

Every series carries the labels ``namespace`` and ``job`` (the FineTuneJob) and ``rank`` (the
training process: 0 alone on one GPU; with torchrun every rank serves its own /metrics). Prometheus
renames a scraped ``job``/``namespace`` label that clashes with its own target labels to
``exported_job``/``exported_namespace`` unless the scrape config sets honor_labels (the
chart's PodMonitor does).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

PREFIX = "kubeft_trainer"
LABELS = ("namespace", "job", "rank")

# name: (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "train_loss": ("gauge", "Training loss of the last logged step"),
    "learning_rate": ("gauge", "Learning rate of the last step"),
    "grad_norm": ("gauge", "Gradient norm of the last step (before clipping)"),
    "tokens_per_second": (
        "gauge",
        "Real (non-padding) input tokens per second over the last logging interval",
    ),
    "tokens": ("counter", "Real (non-padding) input tokens trained on"),
    "step": ("gauge", "Optimizer steps done"),
    "total_steps": ("gauge", "Optimizer steps planned"),
    "epoch": ("gauge", "Fractional epoch"),
    "eta_seconds": ("gauge", "Estimated seconds until training ends"),
    "gpu_memory_total_bytes": ("gauge", "Memory of the GPU the trainer runs on"),
    "gpu_memory_allocated_bytes": ("gauge", "GPU memory allocated by tensors"),
    "gpu_memory_reserved_bytes": ("gauge", "GPU memory reserved by the caching allocator"),
    "gpu_memory_peak_allocated_bytes": ("gauge", "Peak GPU memory allocated by tensors"),
    "gpu_memory_peak_reserved_bytes": ("gauge", "Peak GPU memory reserved by the caching allocator"),
    "process_resident_memory_bytes": ("gauge", "Resident memory of the trainer process"),
    "profile_fast": ("gauge", "1 when the trainer runs its fast profile (no checkpointing), 0 when lean"),
    "micro_batch_size": ("gauge", "Rows per micro-batch chosen by the profile"),
    "gradient_accumulation_steps": ("gauge", "Micro-batches per optimizer step chosen by the profile"),
    "gradient_checkpointing": ("gauge", "1 when gradient checkpointing is on"),
    "activation_offloading": ("gauge", "1 when checkpointed activations are offloaded to host memory"),
    "estimated_peak_bytes": ("gauge", "Peak GPU memory the estimator predicts for the chosen profile"),
    "eval_loss": ("gauge", "Loss on the evaluation set"),
    "eval_perplexity": ("gauge", "Perplexity on the evaluation set (exp of eval loss)"),
    "checkpoint_upload_bytes": ("counter", "Bytes of checkpoints uploaded"),
    "checkpoint_upload_retries": ("counter", "Failed checkpoint upload attempts that were retried"),
    "checkpoints": ("counter", "Checkpoints uploaded completely (manifest written)"),
    "dataset_rows_malformed": ("counter", "Dataset rows skipped as malformed"),
    "dataset_rows_usable": ("counter", "Dataset rows used"),
}
UPLOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def metric_name(name: str) -> str:
    """The exposed name (counters get `_total` in the exposition)."""
    kind, _ = METRICS[name]
    return f"{PREFIX}_{name}_total" if kind == "counter" else f"{PREFIX}_{name}"


@dataclass
class TrainerMetrics:
    """The run's collectors, already labelled with its namespace and job."""

    registry: CollectorRegistry
    labels: tuple[str, str, str]
    # gauge families: a labelled series appears on its first value, so a loss is never exported as 0
    gauges: dict[str, Any]
    counters: dict[str, Any]
    upload_seconds: Any
    server: Any = None

    @classmethod
    def create(cls, namespace: str, job: str, rank: int = 0) -> TrainerMetrics:
        registry = CollectorRegistry()
        gauges: dict[str, Any] = {}
        counters: dict[str, Any] = {}
        for name, (kind, help_text) in METRICS.items():
            if kind == "gauge":
                gauges[name] = Gauge(f"{PREFIX}_{name}", help_text, LABELS, registry=registry)
            else:
                counters[name] = Counter(f"{PREFIX}_{name}", help_text, LABELS, registry=registry).labels(
                    namespace, job, str(rank)
                )
        upload = Histogram(
            f"{PREFIX}_checkpoint_upload_duration_seconds",
            "Wall time to upload one checkpoint, retries included",
            LABELS,
            buckets=UPLOAD_BUCKETS,
            registry=registry,
        ).labels(namespace, job, str(rank))
        return cls(registry, (namespace, job, str(rank)), gauges, counters, upload)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Starts the /metrics HTTP server in a daemon thread; returns the bound port (port 0 picks one)."""
        self.server, _ = start_http_server(port, addr=addr, registry=self.registry)
        bound = int(self.server.server_port)
        log.info("serving metrics on http://%s:%d/metrics", addr, bound)
        return bound

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def set(self, name: str, value: float) -> None:
        self.gauges[name].labels(*self.labels).set(value)

    def inc(self, name: str, value: float = 1.0) -> None:
        self.counters[name].inc(value)

    def update_memory(self) -> dict[str, int]:
        """Reads GPU memory (or process RSS) into the gauges and returns the readings."""
        import torch

        readings: dict[str, int] = {"process_resident_memory_bytes": resident_memory_bytes()}
        if torch.cuda.is_available():
            readings.update(
                gpu_memory_total_bytes=torch.cuda.get_device_properties(
                    torch.cuda.current_device()
                ).total_memory,
                gpu_memory_allocated_bytes=torch.cuda.memory_allocated(),
                gpu_memory_reserved_bytes=torch.cuda.memory_reserved(),
                gpu_memory_peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                gpu_memory_peak_reserved_bytes=torch.cuda.max_memory_reserved(),
            )
        for name, value in readings.items():
            self.set(name, value)
        return readings


def resident_memory_bytes() -> int:
    """RSS of this process from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
