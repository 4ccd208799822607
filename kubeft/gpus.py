"""Known GPU products and their memory, for nodes whose GPU Feature Discovery labels are incomplete.

Keys are the values of the ``nvidia.com/gpu.product`` label as GPU Feature
Discovery writes them (spaces become dashes); values are the memory per GPU in
MiB as ``nvidia.com/gpu.memory`` reports it (what NVML calls total memory).
"""

from __future__ import annotations

from typing import Final

MIB: Final = 1024 * 1024

# product label → memory per GPU in MiB (NVML total memory)
GPU_MEMORY_MIB: Final[dict[str, int]] = {
    "Tesla-T4": 15360,
    "NVIDIA-T4": 15360,
    "NVIDIA-A10G": 23028,
    "NVIDIA-A10": 23028,
    "NVIDIA-L4": 23034,
    "NVIDIA-GeForce-RTX-3090": 24576,
    "NVIDIA-GeForce-RTX-4090": 24564,
    "NVIDIA-RTX-A6000": 49140,
    "NVIDIA-L40": 46068,
    "NVIDIA-L40S": 46068,
    "NVIDIA-A100-PCIE-40GB": 40960,
    "NVIDIA-A100-SXM4-40GB": 40960,
    "NVIDIA-A100-80GB-PCIe": 81920,
    "NVIDIA-A100-SXM4-80GB": 81920,
    "NVIDIA-H100-PCIe": 81559,
    "NVIDIA-H100-80GB-HBM3": 81559,
    "NVIDIA-H100-NVL": 95830,
    "NVIDIA-H200": 143771,
    "NVIDIA-H200-NVL": 143771,
    "NVIDIA-B200": 183359,
}


def memory_mib(product: str) -> int | None:
    """Memory per GPU in MiB for a known product label, else None.

    Matching ignores case, and a product reported with a ``-SHARED`` suffix (time
    slicing) resolves to its base product.
    """
    wanted = product.strip().upper().removesuffix("-SHARED")
    for name, mib in GPU_MEMORY_MIB.items():
        if name.upper() == wanted:
            return mib
    return None


def memory_bytes(product: str) -> int | None:
    """Memory per GPU in bytes for a known product label, else None."""
    mib = memory_mib(product)
    return None if mib is None else mib * MIB
