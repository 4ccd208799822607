"""Exports: the LoRA adapter, and a merged 16-bit model that `AutoModelForCausalLM.from_pretrained` loads.

``merged-16bit`` for QLoRA dequantises the NF4 base the adapter was trained against (not
the original bf16 weights: the adapter learnt to correct the quantised ones), merges the
adapter and saves bf16 safetensors (fp16 on GPUs without bf16) with the tokenizer and a
config without quantization_config. Exports are uploaded under
``<namespace>/<job>/artifacts/<format>/``.
"""

from __future__ import annotations

import gc
import logging
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
) -> Path:
    """A standalone 16-bit model: base (dequantised for qlora) + merged adapter, or the fully tuned model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = save_dtype(hw)
    if method == "full":
        model = full_model
    else:
        from peft import PeftModel

        assert adapter_dir is not None
        base = load_model(base_dir, method, hw)
        if method == "qlora":
            base = base.dequantize(dtype=hw.dtype)
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


def artifact_prefix(namespace: str, job: str, fmt: str) -> str:
    return f"{contract.artifacts_prefix(namespace, job)}/{fmt}"
