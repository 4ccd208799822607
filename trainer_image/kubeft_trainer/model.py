"""Model loading for the three methods, the LoRA config, and the facts the start banner prints.

* ``qlora``: NF4 weights with double quantisation (bitsandbytes), bf16 compute on GPUs that
  have it. No fp32 upcast of embeddings/norms (TRL's own preparation; peft's
  prepare_model_for_kbit_training would upcast them, costing memory and speed).
* ``lora``: the base in bf16 (fp16 on GPUs without bf16), frozen; LoRA adapters trained.
* ``full``: every weight trained.

On CPU (CI, laptops) weights and compute are float32: CPU bf16 matmuls are slow and the
models there are tiny.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubeft_trainer.config import LoraSpec
from kubeft_trainer.errors import InvalidInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    """Where training runs and which dtype it computes in."""

    device: str  # "cuda" | "cpu"
    name: str
    memory_bytes: int
    dtype: torch.dtype

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def bf16(self) -> bool:
        return self.dtype == torch.bfloat16

    @property
    def fp16(self) -> bool:
        return self.dtype == torch.float16


def detect_hardware() -> Hardware:
    """The first CUDA GPU if there is one, else the CPU."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Hardware("cuda", props.name, int(props.total_memory), dtype)
    try:
        import os

        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = 0
    return Hardware("cpu", platform.processor() or platform.machine(), int(mem), torch.float32)


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer; a pad token is set (eos) when it has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot load a tokenizer from the model at {model_dir}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(hw: Hardware, fsdp: bool = False) -> Any:
    """NF4 + double quantisation, compute in the hardware's dtype.

    Under FSDP the packed 4-bit weights are stored in the compute dtype (``bnb_4bit_quant_storage``):
    FSDP shards and gathers tensors of one dtype per unit, the adapters' and norms' dtype.
    """
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": hw.dtype} if fsdp else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=hw.dtype,
        **extra,
    )


def load_model(
    model_dir: Path,
    method: str,
    hw: Hardware,
    attn_implementation: str = "sdpa",
    device: int = 0,
    fsdp: bool = False,
) -> Any:
    """The base model for `method` (qlora | lora | full) on `hw`.

    `attn_implementation`: ``sdpa``, or :data:`kubeft_trainer.attention.ATTN_IMPLEMENTATION` for
    padding-free packed rows (registered here). `device`: the CUDA device (the local rank under
    torchrun). `fsdp`: loaded for FSDP to shard (host memory; QLoRA quantised onto the device with
    its storage in the compute dtype).
    """
    from transformers import AutoModelForCausalLM

    from kubeft_trainer import attention

    if attn_implementation == attention.ATTN_IMPLEMENTATION:
        attention.register()
    kwargs: dict[str, Any] = {"dtype": hw.dtype, "attn_implementation": attn_implementation}
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config(hw, fsdp)
    if hw.cuda and (not fsdp or method == "qlora"):
        # bitsandbytes quantises on the GPU; FSDP moves the others' shards there itself
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot load the model at {model_dir}: {exc}") from exc
    model.config.use_cache = False  # the KV cache only costs memory while training
    return model


def lora_config(spec: LoraSpec) -> Any:
    """peft LoraConfig from spec.hyperparameters.lora."""
    from peft import LoraConfig

    targets: str | list[str] = list(spec.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft only expands the string form
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=spec.dropout,
        target_modules=targets,
        use_rslora=spec.rslora,
        use_dora=spec.dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit packed weights count as the parameters they hold."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= param.element_size() * 2  # two 4-bit values per byte of storage
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def versions() -> dict[str, str]:
    """Versions of the libraries the run depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in (
        "torch",
        "transformers",
        "peft",
        "trl",
        "bitsandbytes",
        "accelerate",
        "datasets",
        "liger-kernel",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def liger_available(hw: Hardware) -> bool:
    """Liger's fused kernels need CUDA (Triton) and the package."""
    if not hw.cuda:
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True
