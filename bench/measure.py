"""Measurements shared by every trainer the bench runs: timing, memory (torch and NVML), MFU, versions."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peak used for MFU (datasheet, SXM parts).
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "liger-kernel")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    try:
        import torch

        out["cuda"] = str(torch.version.cuda)
    except ImportError:
        pass
    return out


def peak_flops(gpu_name: str) -> float:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in gpu_name:
            return value
    return 0.0


def pin_one_gpu(env: MutableMapping[str, str] | None = None) -> str:
    """Pins this process (and its children) to one GPU: ``CUDA_VISIBLE_DEVICES=0`` unless set.

    On a multi-GPU host an unpinned HF Trainer wraps the model in DataParallel (TRL refuses it,
    the plain recipe silently doubles its batch), and NVML would read another device than the
    one that trains. Returns the device the variable names.
    """
    target = os.environ if env is None else env
    target.setdefault("CUDA_VISIBLE_DEVICES", "0")
    return target["CUDA_VISIBLE_DEVICES"]


def nvml_device(pynvml: Any, visible: str | None) -> Any:
    """The NVML handle of the first device ``CUDA_VISIBLE_DEVICES`` names (index or UUID), else device 0.

    NVML numbers every device of the host whatever ``CUDA_VISIBLE_DEVICES`` says, so CUDA's
    device 0 is NVML's device ``visible[0]``.
    """
    first = (visible or "").split(",")[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByUUID(first)
    return pynvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)


class NvmlSampler:
    """Polls the device's used memory (NVML) in a thread; `peak_bytes` is the peak over the baseline.

    The baseline is read before this process touches CUDA, so the peak includes the CUDA
    context and every allocator's reservations (what the scheduler must fit), not only
    PyTorch's caching allocator. The device is the one CUDA sees as 0 (:func:`nvml_device`).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = nvml_device(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
            self.baseline = self._used()
        except Exception:  # no NVML (CPU runs)
            self._handle = None

    def _used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def start(self) -> NvmlSampler:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(self.interval)

    def now_bytes(self) -> int:
        return self._used() - self.baseline if self._handle is not None else 0

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak = max(self.peak, self._used())
        return self.peak_bytes

    @property
    def peak_bytes(self) -> int:
        return max(0, self.peak - self.baseline) if self._handle is not None else 0


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_timer_callback(warmup_steps: int) -> Any:
    """A TrainerCallback that times optimizer steps after `warmup_steps` and counts tokens seen then."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.warm = warmup_steps
            self.t0: float | None = None
            self.tok0 = 0
            self.t_end: float | None = None
            self.tok_end = 0
            self.steps_timed = 0
            self.losses: list[tuple[int, float]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == self.warm:
                _sync()
                self.t0 = time.perf_counter()
                self.tok0 = int(state.num_input_tokens_seen)
            if self.t0 is not None and state.global_step > self.warm:
                _sync()
                self.t_end = time.perf_counter()
                self.tok_end = int(state.num_input_tokens_seen)
                self.steps_timed = state.global_step - self.warm

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append((int(state.global_step), float(logs["loss"])))

        def result(self) -> dict[str, Any]:
            if self.t0 is None or self.t_end is None:
                return {"seconds": 0.0, "tokens": 0, "tokens_per_s": 0.0, "steps_timed": 0}
            dt = self.t_end - self.t0
            toks = self.tok_end - self.tok0
            return {
                "seconds": round(dt, 3),
                "tokens": toks,
                "tokens_per_s": round(toks / dt, 1) if dt > 0 else 0.0,
                "steps_timed": self.steps_timed,
                "seconds_per_step": round(dt / max(1, self.steps_timed), 4),
            }

    return Timer()


def make_profile_callback(start_step: int, steps: int, out: Path) -> Any:
    """Profiles optimizer steps [start_step, start_step + steps) and writes a kernel table to `out`."""
    import torch
    from transformers import TrainerCallback

    class Prof(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.prof: Any = None
            self.t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == start_step and self.prof is None:
                _sync()
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.prof is not None and state.global_step == start_step + steps:
                _sync()
                wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                events = self.prof.key_averages()
                gpu_total = sum(e.self_device_time_total for e in events) / 1e6
                with out.open("w") as f:
                    f.write(f"wall {wall:.3f}s over {steps} steps; summed kernel time {gpu_total:.3f}s\n")
                    f.write(
                        events.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90)
                    )
                self.prof = None

    return Prof()


def model_flops_per_token(shape: dict[str, Any], method: str) -> float:
    """Matmul FLOPs per token of one training step, without recomputation (MFU's numerator).

    Frozen-base methods (LoRA/QLoRA) do the forward (2N) and the input gradient (2N); full
    fine-tuning also the weight gradient (2N). N counts the linear layers and the LM head.
    """
    from kubeft.estimate import ModelShape

    ms = ModelShape.from_config(shape)
    n = ms.num_layers * ms.linear_params_per_layer + ms.vocab_size * ms.hidden_size
    return (6.0 if method == "full" else 4.0) * n


def attention_flops(shape: dict[str, Any], lengths: list[int]) -> float:
    """Causal attention FLOPs of training on samples of `lengths` (forward + backward ≈ 3× forward)."""
    from kubeft.estimate import ModelShape

    ms = ModelShape.from_config(shape)
    fwd = sum(2.0 * n * n * ms.q_dim * ms.num_layers for n in lengths)  # QK^T and PV, causal half
    return 3.0 * fwd


def cuda_context_bytes(nvml: NvmlSampler) -> int:
    """Starts CUDA in this process and returns what its context takes on the device (NVML).

    ``torch.cuda.init()`` alone creates no context (it is made on the first allocation), so one
    tiny tensor is allocated; the allocator's own reservation for it is not counted. 0 on CPU.
    """
    import torch

    if not torch.cuda.is_available():
        return 0
    torch.cuda.init()
    probe = torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    used = nvml.now_bytes() - int(torch.cuda.memory_reserved())
    del probe
    return max(0, used)


class Memory:
    """Peak memory of this process: torch's allocator and NVML."""

    def __init__(self) -> None:
        self.nvml = NvmlSampler().start()

    def reset(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def result(self) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {"nvml_peak_bytes": self.nvml.stop()}
        if torch.cuda.is_available():
            out["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
            out["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
            out["gpu"] = torch.cuda.get_device_name(0)
            out["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(0).total_memory)
        return out


def gib(n: float) -> float:
    return round(n / 2**30, 2)
