"""What the operator decided for one attempt of a job: the input of the object builders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kubeft import contract
from kubeft import estimate as est

from .placement import GpuClass
from .settings import Settings


@dataclass(frozen=True)
class Plan:
    """Placement, estimate and resolved defaults for the trainer Job."""

    method: est.Method
    gpu_classes: tuple[GpuClass, ...]  # the classes its pod may run on (Kueue picks one when queued)
    gpu_count: int
    estimate: est.Estimate
    profiles: dict[str, est.Estimate] = field(default_factory=dict)
    shape: est.ModelShape | None = None
    endpoint: str = ""
    bucket: str = ""
    has_hf_token: bool = False
    queue: str | None = None  # the Kueue LocalQueue; None: the Job runs at once
    strategy: est.Strategy = "ddp"  # resolved; with more than one GPU, how they share the work
    nodes: int = 1  # pods of the Indexed Job, one per node, each with gpu_count GPUs
    settings: Settings = field(default_factory=Settings)

    @property
    def world_size(self) -> int:
        return self.gpu_count * self.nodes

    @property
    def gpu_products(self) -> tuple[str, ...]:
        return tuple(c.product for c in self.gpu_classes)

    @property
    def gpu_memory_bytes(self) -> int:
        """The least memory per GPU among the allowed classes: what the trainer may count on."""
        return min(c.memory_bytes for c in self.gpu_classes)

    @property
    def gpu_node_selectors(self) -> dict[str, tuple[str, ...]]:
        """Label → values that pick exactly the allowed classes' nodes (GFD's product label by default)."""
        out: dict[str, set[str]] = {}
        for c in self.gpu_classes:
            selectors = c.node_selectors or {contract.LABEL_GPU_PRODUCT: (c.product,)}
            for label, values in selectors.items():
                out.setdefault(label, set()).update(values)
        return {label: tuple(sorted(values)) for label, values in sorted(out.items())}

    def estimate_doc(self) -> dict[str, Any]:
        """``status.vram`` / job.json ``estimate``: the placement estimate plus the trainer's profiles."""
        doc = self.estimate.to_dict()
        doc["profiles"] = {name: e.to_dict() for name, e in self.profiles.items()}
        doc["checkpointBytes"] = est.checkpoint_bytes(self.estimate)
        return doc

    @property
    def grace_period_seconds(self) -> int:
        """The trainer pod's termination grace period: room to write and upload a final checkpoint."""
        s = self.settings
        seconds = 2 * est.checkpoint_bytes(self.estimate) / s.checkpoint_bytes_per_second
        return s.termination_grace_floor_seconds + math.ceil(seconds)
