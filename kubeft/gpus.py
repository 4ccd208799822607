"""Known GPU products and their memory, and how to tell a node's GPU from its labels.

Products are named as NVIDIA GPU Feature Discovery writes the ``nvidia.com/gpu.product``
label (spaces become dashes); memory is per GPU in MiB, as ``nvidia.com/gpu.memory``
reports it (what NVML calls total memory).

A node's GPU (:func:`node_gpu`) comes from the first of: GPU Feature Discovery's product label;
GKE's ``cloud.google.com/gke-accelerator`` (GKE does not run GFD by default); the EC2
instance type of an EKS node (``node.kubernetes.io/instance-type``). The label that told is
also what the trainer pod's node affinity pins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from kubeft import contract

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


LABEL_GFD_PRODUCT: Final = contract.LABEL_GPU_PRODUCT
LABEL_GKE_ACCELERATOR: Final = "cloud.google.com/gke-accelerator"
LABEL_INSTANCE_TYPE: Final = "node.kubernetes.io/instance-type"

# GKE accelerator label values (cloud.google.com/gke-accelerator) → product
GKE_ACCELERATORS: Final[dict[str, str]] = {
    "nvidia-tesla-t4": "Tesla-T4",
    "nvidia-l4": "NVIDIA-L4",
    "nvidia-tesla-a100": "NVIDIA-A100-SXM4-40GB",
    "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h100-mega-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h200-141gb": "NVIDIA-H200",
    "nvidia-b200": "NVIDIA-B200",
}

# EC2 instance families with NVIDIA GPUs (the part of the instance type before the dot) → product
EC2_FAMILIES: Final[dict[str, str]] = {
    "g4dn": "Tesla-T4",
    "g5": "NVIDIA-A10G",
    "g6": "NVIDIA-L4",
    "g6e": "NVIDIA-L40S",
    "p4d": "NVIDIA-A100-SXM4-40GB",
    "p4de": "NVIDIA-A100-SXM4-80GB",
    "p5": "NVIDIA-H100-80GB-HBM3",
    "p5e": "NVIDIA-H200",
    "p5en": "NVIDIA-H200",
}


@dataclass(frozen=True)
class NodeGpu:
    """A node's GPU product and the label that says so (the affinity pins that label)."""

    product: str
    label: str
    value: str


def node_gpu(labels: Mapping[str, str]) -> NodeGpu | None:
    """The GPU product of a node from its labels (GFD, GKE, EC2 instance type), or None."""
    gfd = labels.get(LABEL_GFD_PRODUCT)
    if gfd:
        return NodeGpu(gfd, LABEL_GFD_PRODUCT, gfd)
    gke = labels.get(LABEL_GKE_ACCELERATOR, "")
    if gke in GKE_ACCELERATORS:
        return NodeGpu(GKE_ACCELERATORS[gke], LABEL_GKE_ACCELERATOR, gke)
    instance = labels.get(LABEL_INSTANCE_TYPE, "")
    family = instance.partition(".")[0]
    if family in EC2_FAMILIES:
        return NodeGpu(EC2_FAMILIES[family], LABEL_INSTANCE_TYPE, instance)
    return None
