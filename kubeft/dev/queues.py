"""The local stack's Kueue queue layout, derived from its simulated GPU nodes (kubeft/dev/nodes.py).

    ResourceFlavor per GPU class  nodeLabels {nvidia.com/gpu.product: <GFD product>},
                                  nodeTaints: the GPU nodes' taint (a job must tolerate it)
    ClusterQueue `kubeft`         one resource group covering cpu, memory, nvidia.com/gpu;
                                  per flavor a nominal quota equal to that class's nodes
                                  (GPUs, CPUs, memory summed over its nodes); every namespace may use it
    LocalQueue `default`          in each namespace that asks (`ensure_local_queue`), pointing at it

Everything here is idempotent: created when missing, replaced to this spec when it differs.
Kueue's objects are read and written at kueue.x-k8s.io/v1beta2 (its storage version in v0.17).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

from kubeft import contract
from kubeft.dev import nodes as gpu_nodes

GROUP = contract.KUEUE_GROUP
VERSION = contract.KUEUE_VERSION
CLUSTER_QUEUE = "kubeft"
LOCAL_QUEUE = "default"  # Kueue's convention for a namespace's default queue (the operator looks for it)
QUEUE_LABEL = contract.LABEL_QUEUE_NAME

# Short, readable flavor names for the stack's GPU classes; any other product gets a slug of its name.
FLAVOR_NAMES = {
    "NVIDIA-L4": "l4",
    "NVIDIA-A100-SXM4-40GB": "a100-40gb",
    "NVIDIA-H100-80GB-HBM3": "h100-80gb",
}
COVERED_RESOURCES = ("cpu", "memory", contract.RESOURCE_GPU)

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def flavor_name(gpu_product: str) -> str:
    return FLAVOR_NAMES.get(gpu_product) or re.sub(r"[^a-z0-9]+", "-", gpu_product.lower()).strip("-")


def _bytes(quantity: str) -> int:
    for suffix, factor in _UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def _gi(n: int) -> str:
    return f"{n // 2**30}Gi" if n % 2**30 == 0 else str(n)


def gpu_classes(nodes: tuple[gpu_nodes.NodeSpec, ...] = gpu_nodes.NODES) -> dict[str, dict[str, str]]:
    """GPU product → the class's total quota {cpu, memory, nvidia.com/gpu}, in the nodes' order."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"cpu": 0, "memory": 0, "gpu": 0})
    for spec in nodes:
        if not spec.gpu_product or not spec.gpu_count:
            continue
        t = totals[spec.gpu_product]
        t["cpu"] += int(spec.cpu)
        t["memory"] += _bytes(spec.memory)
        t["gpu"] += spec.gpu_count
    return {
        product: {"cpu": str(t["cpu"]), "memory": _gi(t["memory"]), contract.RESOURCE_GPU: str(t["gpu"])}
        for product, t in totals.items()
    }


def resource_flavors(nodes: tuple[gpu_nodes.NodeSpec, ...] = gpu_nodes.NODES) -> list[dict[str, Any]]:
    taint = {
        "key": contract.GPU_TAINT_KEY,
        "value": contract.GPU_TAINT_VALUE,
        "effect": contract.GPU_TAINT_EFFECT,
    }
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor_name(product)},
            "spec": {"nodeLabels": {contract.LABEL_GPU_PRODUCT: product}, "nodeTaints": [taint]},
        }
        for product in gpu_classes(nodes)
    ]


def cluster_queue(nodes: tuple[gpu_nodes.NodeSpec, ...] = gpu_nodes.NODES) -> dict[str, Any]:
    flavors = [
        {
            "name": flavor_name(product),
            "resources": [{"name": r, "nominalQuota": quota[r]} for r in COVERED_RESOURCES],
        }
        for product, quota in gpu_classes(nodes).items()
    ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": CLUSTER_QUEUE},
        "spec": {
            "namespaceSelector": {},  # every namespace
            "resourceGroups": [{"coveredResources": list(COVERED_RESOURCES), "flavors": flavors}],
        },
    }


def preempting_queue(name: str, namespace: str, gpu_product: str, gpus: int) -> dict[str, Any]:
    """A small ClusterQueue for one namespace: `gpus` GPUs of one class, and within it a job of a
    higher priority preempts lower ones (tests and demos of Kueue's preemption)."""
    resources = [
        {"name": "cpu", "nominalQuota": "64"},
        {"name": "memory", "nominalQuota": "512Gi"},
        {"name": contract.RESOURCE_GPU, "nominalQuota": str(gpus)},
    ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [
                {
                    "coveredResources": list(COVERED_RESOURCES),
                    "flavors": [{"name": flavor_name(gpu_product), "resources": resources}],
                }
            ],
            "preemption": {"withinClusterQueue": "LowerPriority"},
        },
    }


def local_queue(
    namespace: str, name: str = LOCAL_QUEUE, cluster_queue: str = CLUSTER_QUEUE
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue},
    }


def _ensure(objects: Any, body: dict[str, Any]) -> None:
    """Creates `body` or, when it exists with another spec, replaces its spec."""
    from kubernetes.client.rest import ApiException

    plural = body["kind"].lower() + "s"
    name = body["metadata"]["name"]
    namespace = body["metadata"].get("namespace")
    try:
        if namespace:
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        else:
            objects.create_cluster_custom_object(GROUP, VERSION, plural, body)
        return
    except ApiException as exc:
        if exc.status != 409:
            raise
    if namespace:
        current = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    else:
        current = objects.get_cluster_custom_object(GROUP, VERSION, plural, name)
    if all(current.get("spec", {}).get(k) == v for k, v in body["spec"].items()):
        return  # Kueue's defaults add fields; only ours are compared
    current["spec"].update(body["spec"])
    if namespace:
        objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, current)
    else:
        objects.replace_cluster_custom_object(GROUP, VERSION, plural, name, current)


def _wait_active(objects: Any, plural: str, name: str, namespace: str | None, timeout: float) -> None:
    """Kueue marks a queue Active once it knows every flavor it names; before that it admits nothing."""
    deadline = time.monotonic() + timeout
    while True:
        if namespace:
            obj = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        else:
            obj = objects.get_cluster_custom_object(GROUP, VERSION, plural, name)
        conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        if conds.get("Active", {}).get("status") == "True":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{plural[:-1]} {name} not Active after {timeout:.0f}s: {conds.get('Active')}")
        time.sleep(0.2)


def ensure_cluster_layout(api: Any, timeout: float = 60.0) -> None:
    """The ResourceFlavors and the ClusterQueue `kubeft`; returns once Kueue reports the queue Active."""
    from kubernetes import client

    objects = client.CustomObjectsApi(api)
    for flavor in resource_flavors():
        _ensure(objects, flavor)
    _ensure(objects, cluster_queue())
    _wait_active(objects, "clusterqueues", CLUSTER_QUEUE, None, timeout)


def ensure_local_queue(api: Any, namespace: str, name: str = LOCAL_QUEUE, timeout: float = 60.0) -> str:
    """A LocalQueue `name` in `namespace` feeding the ClusterQueue `kubeft`; returns its name once Active."""
    from kubernetes import client

    objects = client.CustomObjectsApi(api)
    _ensure(objects, local_queue(namespace, name))
    _wait_active(objects, "localqueues", name, namespace, timeout)
    return name
