"""What the operator decided for one attempt of a job: the input of the object builders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kubeft import estimate as est

from .settings import Settings


@dataclass(frozen=True)
class Plan:
    """Placement, estimate and resolved defaults for the trainer pod of one attempt."""

    attempt: int
    method: est.Method
    gpu_product: str
    gpu_memory_bytes: int
    gpu_count: int
    estimate: est.Estimate
    profiles: dict[str, est.Estimate] = field(default_factory=dict)
    shape: est.ModelShape | None = None
    endpoint: str = ""
    bucket: str = ""
    has_hf_token: bool = False
    settings: Settings = field(default_factory=Settings)
    # label → values of the chosen class's nodes (empty: GFD's product label with gpu_product)
    gpu_node_selectors: dict[str, tuple[str, ...]] = field(default_factory=dict)

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
