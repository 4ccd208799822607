"""Exports: the LoRA adapter, and a merged 16-bit model that `AutoModelForCausalLM.from_pretrained` loads.

``merged-16bit`` for QLoRA dequantises the NF4 base the adapter was trained against (not
the original bf16 weights: the adapter learnt to correct the quantised ones), merges the
adapter and saves bf16 safetensors (fp16 on GPUs without bf16) with the tokenizer and a
config without quantization_config. Exports are uploaded under
``<namespace>/<job>/artifacts/<format>/``.

The merge needs the whole 16-bit model in memory, which a GPU chosen for QLoRA training
often does not have (a 14B model trains in 4 bits on a 24 GB GPU; its 16-bit copy is 28 GB).
:func:`plan_merge` builds it on the GPU when it has room, else in host memory, else not at all:
the job still succeeds with its adapter, and says why the merged model is missing.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kubeft import contract
from kubeft_trainer.model import Hardware, load_model
from kubeft_trainer.storage import ObjectStore, RetryPolicy, dir_files, retry

log = logging.getLogger(__name__)

ADAPTER = "adapter"
MERGED = "merged-16bit"


def save_dtype(hw: Hardware) -> torch.dtype:
    """The 16-bit dtype merged weights are saved in."""
    return torch.float16 if hw.fp16 else torch.bfloat16


# Room the merge needs over the 16-bit weights themselves: a layer dequantised at a time,
# merge temporaries, save buffers (GPU); the host keeps a little more (no caching allocator).
GPU_MERGE_FACTOR = 1.15
HOST_MERGE_FACTOR = 1.3


@dataclass(frozen=True)
class MergePlan:
    """Where the merged 16-bit model is built: ``cuda``, ``cpu``, or None (not at all), and why."""

    device: str | None
    reason: str


def plan_merge(weights_bytes: int, gpu_free: int | None, host_free: int | None) -> MergePlan:
    """The GPU when its free memory holds the 16-bit model, else host memory, else nowhere.

    `weights_bytes`: the 16-bit model (2 bytes per parameter; 0 when unknown: try the GPU).
    `gpu_free` / `host_free`: free memory, None when there is no GPU / the host's is unknown.
    """
    gib = 2**30
    if gpu_free is not None and weights_bytes * GPU_MERGE_FACTOR <= gpu_free:
        return MergePlan(
            "cuda", f"on the GPU ({weights_bytes / gib:.1f} GiB model, {gpu_free / gib:.1f} GiB free)"
        )
    gpu = "no GPU" if gpu_free is None else f"the GPU has {gpu_free / gib:.1f} GiB free"
    if host_free is None or weights_bytes * HOST_MERGE_FACTOR <= host_free:
        return MergePlan("cpu", f"in host memory ({weights_bytes / gib:.1f} GiB model; {gpu})")
    return MergePlan(
        None,
        f"merged-16bit not exported: the 16-bit model takes {weights_bytes / gib:.1f} GiB and neither "
        f"the GPU ({gpu}) nor the host ({host_free / gib:.1f} GiB free) has room; the adapter is exported, "
        "merge it where there is memory (peft: PeftModel.from_pretrained(base, adapter).merge_and_unload())",
    )


def export_adapter(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """adapter_model.safetensors + adapter_config.json (+ tokenizer) of a trained PeftModel."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    log.info("adapter exported to %s", out_dir)
    return out_dir


def export_merged(
    base_dir: Path,
    method: str,
    hw: Hardware,
    tokenizer: Any,
    out_dir: Path,
    adapter_dir: Path | None = None,
    full_model: Any = None,
    device: str = "cuda",
) -> Path:
    """A standalone 16-bit model: base (dequantised for qlora) + merged adapter, or the fully tuned model.

    `device` ``cpu`` builds a LoRA/QLoRA merge in host memory even on a GPU machine.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = save_dtype(hw)
    if method == "full":
        model = full_model
    else:
        from peft import PeftModel

        assert adapter_dir is not None
        where = replace(hw, device="cpu") if device == "cpu" else hw
        base = load_model(base_dir, method, where)
        if method == "qlora":
            base = base.dequantize(dtype=where.dtype)
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model = model.to(dtype)
    model.config.use_cache = True
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    if method != "full":
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    log.info("merged %s model exported to %s", str(dtype).removeprefix("torch."), out_dir)
    return out_dir


def upload_dir(store: ObjectStore, local: Path, prefix: str, policy: RetryPolicy) -> tuple[str, int]:
    """Uploads every file under `local` to `prefix/`; returns (uri, bytes)."""
    total = 0
    for rel in dir_files(local):
        key = f"{prefix}/{rel.as_posix()}"
        path = local / rel
        retry(lambda p=path, k=key: store.upload_file(p, k), f"uploading {key}", policy)  # type: ignore[misc]
        total += path.stat().st_size
    uri = store.uri(prefix + "/")
    log.info("uploaded %s (%d bytes)", uri, total)
    return uri, total


def artifact_prefix(job_root: str, fmt: str) -> str:
    """Where one export format of the job run lands."""
    return f"{contract.artifacts_prefix(job_root)}/{fmt}"
