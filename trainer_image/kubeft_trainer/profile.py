"""Lean or fast: how the trainer spends the GPU it was given.

The optimizer step never changes: ``batchSize × gradientAccumulation`` rows per step, same
learning rate, same samples. What changes is how a step is cut into micro-batches and what is
kept for the backward pass:

* ``lean`` (the default when the GPU is tight): gradient checkpointing. On deep models whose
  kept layer inputs outweigh one layer's activations, those inputs go to pinned host memory and
  the room goes to micro-batches twice as large (half the accumulation) at no more GPU memory:
  a QLoRA step is bound by the CPU's per-call overhead, which is paid per micro-batch. Only when
  the pinned inputs take at most half of the host memory the container has free (its cgroup
  limit, else the machine's): an automatic speed-up must not get the pod OOM-killed.
* ``fast`` (chosen when the placed GPU has room): no gradient checkpointing (no recomputed
  forward) and the largest micro-batch whose estimated peak stays under 90% of the GPU's memory.
* ``configured``: exactly the spec's settings (CPU runs, or ``KUBEFT_TRAINER_PROFILE=configured``).

``KUBEFT_TRAINER_PROFILE`` (auto | lean | fast | configured) overrides the choice; ``auto``
picks fast when the estimator (kubeft.estimate, the operator's own) says it fits the GPU of the
placement (``placement.gpuMemoryBytes``, else the device's memory) with 10% headroom.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubeft import estimate as est

log = logging.getLogger(__name__)

ENV_PROFILE = "KUBEFT_TRAINER_PROFILE"
PROFILES = ("auto", "lean", "fast", "configured")
HEADROOM = 0.10  # fast mode stays under (1 - HEADROOM) of the GPU's memory
HOST_SHARE = 0.5  # offloaded layer inputs may pin at most this share of the free host memory


@dataclass(frozen=True)
class Profile:
    """The chosen profile: micro-batching and memory savers, with the estimate and the reason."""

    name: str  # lean | fast | configured
    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    offload_activations: bool
    estimated_bytes: int | None
    reason: str

    def describe(self) -> str:
        ckpt = "on" if self.gradient_checkpointing else "off"
        if self.gradient_checkpointing and self.offload_activations:
            ckpt += " (offloaded to host)"
        est_gib = f", estimated peak {self.estimated_bytes / 2**30:.1f} GiB" if self.estimated_bytes else ""
        return (
            f"profile {self.name}: micro-batch {self.micro_batch} × accumulation {self.grad_accum}, "
            f"gradient checkpointing {ckpt}{est_gib} — {self.reason}"
        )


def _splits(batch: int, accum: int) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) pairs with the same rows per step, largest micro-batch first."""
    return [(batch * k, accum // k) for k in range(accum, 0, -1) if accum % k == 0]


def shape_of(model_dir: Path | None) -> est.ModelShape | None:
    if model_dir is None:
        return None
    try:
        return est.ModelShape.from_file(model_dir)
    except est.EstimateError as exc:
        log.warning("no estimate for this model (%s): using the lean profile", exc)
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def available_host_memory(root: Path = Path("/")) -> int | None:
    """Host memory this process can still use: the cgroup's limit less its usage, or MemAvailable.

    The smaller of what the container's memory cgroup (v2, else v1) and the kernel's
    ``MemAvailable`` allow; None when neither can be read.
    """
    candidates: list[int] = []
    cg = root / "sys/fs/cgroup"
    for limit_file, usage_file in (
        (cg / "memory.max", cg / "memory.current"),
        (cg / "memory/memory.limit_in_bytes", cg / "memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and limit < 2**60:  # v1 writes a huge number for no limit
            candidates.append(max(0, limit - (usage or 0)))
            break
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    return min(candidates) if candidates else None


def choose(
    spec: Any,
    method: str,
    shape: est.ModelShape | None,
    cuda: bool,
    gpu_memory: int,
    placement: Mapping[str, Any],
    requested: str = "auto",
    host_memory: int | None = None,
) -> Profile:
    """The profile for this run (see the module docstring).

    `host_memory`: the host memory free to this process (:func:`available_host_memory`); None
    when unknown (offloading is then not limited).
    """
    hp = spec.hyperparameters
    configured = Profile(
        "configured", hp.batch_size, hp.gradient_accumulation, hp.gradient_checkpointing, False, None, ""
    )
    if requested not in PROFILES:
        log.warning("%s=%r is not one of %s; using auto", ENV_PROFILE, requested, ", ".join(PROFILES))
        requested = "auto"
    if requested == "configured":
        return replace(configured, reason=f"{ENV_PROFILE}=configured")
    if not cuda:
        return replace(configured, reason="no GPU: the spec's settings as they are")
    if not hp.packing:
        return replace(configured, reason="packing is off: the spec's settings as they are")
    placed = placement.get("gpuMemoryBytes")
    memory = int(placed) if isinstance(placed, (int, float)) and placed > 0 else int(gpu_memory)
    budget = int(memory * (1 - HEADROOM))
    where = f"{memory / 2**30:.0f} GiB GPU" + (" (placement)" if placed else "")
    base = est.Setup.from_spec(spec, method)  # type: ignore[arg-type]  # resolved: never auto

    def estimate(setup: est.Setup) -> int | None:
        if shape is None:
            return None
        try:
            return est.estimate(shape, setup).total
        except est.EstimateError:
            return None

    if requested in ("auto", "fast") and shape is not None:
        for mb, ga in _splits(hp.batch_size, hp.gradient_accumulation):
            setup = replace(est.fast(base), micro_batch=mb)
            need = estimate(setup)
            if need is not None and need <= budget:
                why = "requested" if requested == "fast" else "the GPU has room"
                return Profile(
                    "fast",
                    mb,
                    ga,
                    False,
                    False,
                    need,
                    f"{why}: no checkpointing at micro-batch {mb} needs {need / 2**30:.1f} GiB "
                    f"≤ 90% of the {where}",
                )
        if requested == "fast":
            reason = (
                f"fast requested but even micro-batch {hp.batch_size} without checkpointing "
                f"exceeds 90% of the {where}"
            )
        else:
            reason = f"the {where} has no room for the fast profile"
    elif requested == "fast":
        reason = "fast requested but the model's shape is unknown (no estimate)"
    else:
        reason = "requested" if requested == "lean" else "the model's shape is unknown (no estimate)"
    # lean: checkpointing at the spec's micro-batch; with the layer inputs offloaded to host memory,
    # twice the micro-batch when that needs no more GPU memory (deep models, where the kept layer
    # inputs outweigh one layer's activations)
    lean_ref = est.lean(base)
    ref = estimate(lean_ref)
    if hp.gradient_accumulation % 2 == 0 and ref is not None and shape is not None:
        doubled = replace(lean_ref, micro_batch=hp.batch_size * 2, offload_activations=True)
        need = estimate(doubled)
        pinned = est.offload_host_bytes(shape, doubled)
        if need is not None and need <= ref:
            if host_memory is not None and pinned > HOST_SHARE * host_memory:
                reason += (
                    f"; checkpoints stay on the GPU: offloading them would pin {pinned / 2**30:.1f} GiB "
                    f"of host memory, more than half of the {host_memory / 2**30:.1f} GiB free"
                )
            else:
                return Profile(
                    "lean",
                    hp.batch_size * 2,
                    hp.gradient_accumulation // 2,
                    True,
                    True,
                    need,
                    f"{reason}; checkpoints offloaded to host memory ({pinned / 2**30:.1f} GiB pinned) make "
                    f"room for micro-batch {hp.batch_size * 2} within the checkpointed peak",
                )
    return Profile("lean", hp.batch_size, hp.gradient_accumulation, True, False, ref, reason)
