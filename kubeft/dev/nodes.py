"""The simulated nodes of the local stack: GPU nodes as NVIDIA GPU Feature Discovery labels them.

kwok manages every node labelled KWOK_NODE_LABEL=true: it keeps them Ready and
keeps the capacity/allocatable given here, so the real kube-scheduler sees
`nvidia.com/gpu` counts and GPU labels exactly as on a cluster with the NVIDIA
device plugin and GFD.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kubeft import contract

KWOK_NODE_LABEL = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpu_product: str | None = None  # None: a CPU-only node
    gpu_memory_mib: int = 0
    gpu_count: int = 0
    cpu: str = "32"
    memory: str = "256Gi"
    # local disk for emptyDirs (the trainer pod requests what its checkpoints and exports need)
    ephemeral_storage: str = "1Ti"
    gfd: bool = True  # GPU Feature Discovery labels; False: only `labels` name the GPU (GKE, EKS)
    labels: tuple[tuple[str, str], ...] = ()


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("gpu-l4-0", "NVIDIA-L4", 23034, 1, cpu="16", memory="64Gi", ephemeral_storage="500Gi"),
    NodeSpec("gpu-l4-1", "NVIDIA-L4", 23034, 1, cpu="16", memory="64Gi", ephemeral_storage="500Gi"),
    NodeSpec(
        "gpu-a100-0", "NVIDIA-A100-SXM4-40GB", 40960, 4, cpu="96", memory="1Ti", ephemeral_storage="4Ti"
    ),
    NodeSpec(
        "gpu-h100-0", "NVIDIA-H100-80GB-HBM3", 81559, 8, cpu="192", memory="2Ti", ephemeral_storage="8Ti"
    ),
    NodeSpec("cpu-0", None, cpu="16", memory="64Gi", ephemeral_storage="200Gi"),
)


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        KWOK_NODE_LABEL: "true",
    }
    capacity: dict[str, str] = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "ephemeral-storage": spec.ephemeral_storage,
        "pods": "110",
    }
    taints: list[dict[str, str]] = []
    labels.update(dict(spec.labels))
    if spec.gpu_product and spec.gfd:
        labels.update(
            {
                contract.LABEL_GPU_PRESENT: "true",
                contract.LABEL_GPU_PRODUCT: spec.gpu_product,
                contract.LABEL_GPU_MEMORY: str(spec.gpu_memory_mib),
                contract.LABEL_GPU_COUNT: str(spec.gpu_count),
            }
        )
    if spec.gpu_product:
        capacity[contract.RESOURCE_GPU] = str(spec.gpu_count)
        taints.append(
            {
                "key": contract.GPU_TAINT_KEY,
                "value": contract.GPU_TAINT_VALUE,
                "effect": contract.GPU_TAINT_EFFECT,
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def register(api: Any, nodes: tuple[NodeSpec, ...] = NODES) -> None:
    """Creates the nodes, then their status (the API server takes status only through its subresource)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    for spec in nodes:
        body = node_manifest(spec)
        try:
            core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        core.patch_node_status(spec.name, {"status": body["status"]})


def wait_ready(api: Any, timeout: float = 60.0, nodes: tuple[NodeSpec, ...] = NODES) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    pending = {n.name for n in nodes}
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            node = core.read_node(name)
            ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
            gpus_ok = all(
                (node.status.allocatable or {}).get(contract.RESOURCE_GPU) == str(s.gpu_count)
                for s in nodes
                if s.name == name and s.gpu_count
            )
            if ready and gpus_ok:
                pending.discard(name)
        if pending:
            time.sleep(0.5)
    if pending:
        raise TimeoutError(f"nodes not Ready with their GPUs after {timeout:.0f}s: {sorted(pending)}")
