"""What the operator decided for one attempt of a job: the input of the object builders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeft import contract
from kubeft import estimate as est
from kubeft import gguf as spec_gguf

from .placement import GpuClass
from .settings import Settings

GIB = 2**30
MERGED_FORMAT = "merged-16bit"
# what the work volume holds besides the model, checkpoints and exports (datasets, tokenizer, eval
# generations, logs): a share of the sum and a floor
SCRATCH_HEADROOM = 0.10
SCRATCH_FLOOR_BYTES = 2 * GIB


@dataclass(frozen=True)
class Scratch:
    """Bytes of local disk the trainer pod writes, by volume (each an emptyDir with this sizeLimit)."""

    model: int  # the base model downloaded into the work directory (bf16 on disk; 0 from a claim)
    checkpoints: int  # the newest checkpoint written while the one before it uploads
    exports: int  # adapter, merged model, GGUF files, as asked for
    tmp: int
    cache: int

    @property
    def work(self) -> int:
        """The work volume: model + checkpoints + exports, plus headroom, rounded up to a GiB."""
        used = self.model + self.checkpoints + self.exports
        return _gib_ceil(used * (1 + SCRATCH_HEADROOM) + SCRATCH_FLOOR_BYTES)

    @property
    def total(self) -> int:
        """The pod's ephemeral-storage request: every disk-backed volume at its limit."""
        return self.work + self.tmp + self.cache


def _gib_ceil(n: float) -> int:
    return math.ceil(n / GIB) * GIB


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

    @property
    def pod_checkpoint_bytes(self) -> int:
        """One checkpoint as a pod writes it: FSDP shards the estimate's states over the GPUs, and a
        pod holds the shards of all its own GPUs."""
        one = est.checkpoint_bytes(self.estimate)
        return one * self.gpu_count if self.strategy == "fsdp" and self.world_size > 1 else one

    def scratch(self, formats: Sequence[str], model_downloaded: bool) -> Scratch:
        """Local disk by volume for the export ``formats`` (resolved), from the checkpoint estimate.

        The base model is downloaded into the work directory unless it is read from a claim.
        """
        total = self.estimate.total_params
        bf16 = round(total * 2)  # safetensors of the model in 16 bits
        exports = 0
        if self.method != "full":
            exports += self.estimate.adapters  # fp32 adapter weights (kept beside the merged model)
        ggufs = [f for f in formats if spec_gguf.is_gguf(f)]
        if MERGED_FORMAT in formats or ggufs:  # the GGUF files are converted from the merged model
            exports += bf16
        if ggufs:  # the F16 file is always made: it is the quantizer's input
            names = {spec_gguf.F16.name, *ggufs}
            if self.shape is not None:
                exports += sum(spec_gguf.estimated_bytes(self.shape, f) for f in names)
            else:
                exports += bf16 * len(names)
        return Scratch(
            model=bf16 if model_downloaded else 0,
            checkpoints=2 * self.pod_checkpoint_bytes,
            exports=exports,
            tmp=self.settings.trainer_tmp_bytes,
            cache=self.settings.trainer_cache_bytes,
        )
