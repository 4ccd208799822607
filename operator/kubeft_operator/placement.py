"""GPU placement: which GPU class a job runs on, and with which method. Pure functions.

A GPU class is one GPU product with its memory per GPU. Facts come from GPU Feature
Discovery labels (or, without GFD, GKE's accelerator label or an EKS node's EC2 instance
type: :func:`kubeft.gpus.node_gpu`) and the ``nvidia.com/gpu`` allocatable; a missing memory
label is filled from :mod:`kubeft.gpus`. The choice: the smallest class whose
memory covers the estimate plus a safety margin and that has enough free GPUs on
one node now; when none has free GPUs, the smallest class that fits (the pod waits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeft import contract, gpus
from kubeft import estimate as est

from . import conditions as cond


@dataclass(frozen=True)
class GpuNode:
    """One schedulable node with GPUs."""

    name: str
    product: str
    memory_bytes: int
    gpus: int  # allocatable
    free: int  # allocatable minus requests of pods bound to it
    selector: tuple[str, str]  # the label that names its GPU, and its value (kubeft.gpus.node_gpu)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuClass:
    """All nodes of one GPU product."""

    product: str
    memory_bytes: int
    nodes: tuple[GpuNode, ...]

    @property
    def max_gpus_per_node(self) -> int:
        return max((n.gpus for n in self.nodes), default=0)

    @property
    def free(self) -> int:
        return sum(n.free for n in self.nodes)

    @property
    def node_selectors(self) -> dict[str, tuple[str, ...]]:
        """Label → values that pick exactly this class's nodes (one label per way of naming the GPU)."""
        out: dict[str, set[str]] = {}
        for n in self.nodes:
            out.setdefault(n.selector[0], set()).add(n.selector[1])
        return {label: tuple(sorted(values)) for label, values in sorted(out.items())}


@dataclass(frozen=True)
class Placement:
    """The decision: a class and a method, or the reason nothing fits."""

    ok: bool
    reason: str
    message: str
    method: est.Method
    estimate: est.Estimate | None
    gpu_class: GpuClass | None = None
    waiting: bool = False  # fits, but no free GPUs right now
    fitting: tuple[GpuClass, ...] = ()  # every class whose memory covers the need, smallest first


def _get(obj: Any, *path: str) -> Any:
    """Reads a field from a kubernetes client model or from a dict (camelCase keys)."""
    for key in path:
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            camel = key.split("_")[0] + "".join(w.title() for w in key.split("_")[1:])
            obj = obj.get(camel, obj.get(key))
        else:
            obj = getattr(obj, key, None)
    return obj


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _ready(node: Any) -> bool:
    if _get(node, "spec", "unschedulable"):
        return False
    for c in _get(node, "status", "conditions") or []:
        if _get(c, "type") == "Ready":
            return bool(_get(c, "status") == "True")
    return False


def pod_gpus(containers: Iterable[Any]) -> int:
    """GPUs a pod's containers ask for (limits, else requests)."""
    n = 0
    for c in containers:
        limits = _get(c, "resources", "limits") or {}
        requests = _get(c, "resources", "requests") or {}
        n += _int(limits.get(contract.RESOURCE_GPU) or requests.get(contract.RESOURCE_GPU) or 0)
    return n


def gpu_nodes(
    nodes: Iterable[Any], pods: Iterable[Any] = (), used: Mapping[str, int] | None = None
) -> list[GpuNode]:
    """Ready GPU nodes with their free GPU count: ``used`` GPUs per node, or those the (bound,
    running) ``pods`` of the whole cluster ask for."""
    used = dict(used or {})
    for pod in pods:
        node_name = _get(pod, "spec", "node_name")
        if not node_name or _get(pod, "status", "phase") in ("Succeeded", "Failed"):
            continue
        used[node_name] = used.get(node_name, 0) + pod_gpus(_get(pod, "spec", "containers") or [])
    out: list[GpuNode] = []
    for node in nodes:
        labels: Mapping[str, str] = _get(node, "metadata", "labels") or {}
        alloc = _int((_get(node, "status", "allocatable") or {}).get(contract.RESOURCE_GPU, 0))
        gpu = gpus.node_gpu(labels)
        if alloc <= 0 or gpu is None or not _ready(node):
            continue
        product = gpu.product
        mib = _int(labels.get(contract.LABEL_GPU_MEMORY)) or gpus.memory_mib(product) or 0
        if mib <= 0:
            continue  # unknown product without a memory label: cannot reason about it
        name = str(_get(node, "metadata", "name"))
        out.append(
            GpuNode(
                name=name,
                product=product,
                memory_bytes=mib * gpus.MIB,
                gpus=alloc,
                free=max(0, alloc - used.get(name, 0)),
                labels=dict(labels),
                selector=(gpu.label, gpu.value),
            )
        )
    return out


def gpu_classes(nodes: Iterable[GpuNode]) -> list[GpuClass]:
    """Nodes grouped by product, smallest memory first."""
    by_product: dict[str, list[GpuNode]] = {}
    for n in nodes:
        by_product.setdefault(n.product, []).append(n)
    classes = [
        GpuClass(product=p, memory_bytes=min(n.memory_bytes for n in ns), nodes=tuple(ns))
        for p, ns in by_product.items()
    ]
    return sorted(classes, key=lambda c: (c.memory_bytes, c.product))


def eligible_classes(
    classes: Sequence[GpuClass],
    *,
    gpu_count: int,
    products: Sequence[str] = (),
    node_selector: Mapping[str, str] | None = None,
    min_memory_bytes: int = 0,
    node_count: int = 1,
) -> list[GpuClass]:
    """Classes the spec allows: product filter, node selector, minimum memory, and at least
    ``node_count`` nodes with ``gpu_count`` GPUs each."""
    out: list[GpuClass] = []
    wanted = {p.upper() for p in products}
    for c in classes:
        if wanted and c.product.upper() not in wanted:
            continue
        if c.memory_bytes < min_memory_bytes:
            continue
        nodes = tuple(
            n
            for n in c.nodes
            if n.gpus >= gpu_count and all(n.labels.get(k) == v for k, v in (node_selector or {}).items())
        )
        if len(nodes) >= node_count:
            out.append(GpuClass(product=c.product, memory_bytes=c.memory_bytes, nodes=nodes))
    return out


def required_bytes(estimate: est.Estimate, margin: float) -> int:
    """GPU memory a job needs: the estimate plus the safety margin."""
    return int(estimate.total * (1.0 + margin))


def nodes_text(n: int) -> str:
    return "a ready node" if n == 1 else f"{n} ready nodes"


def _gib(n: int) -> str:
    return f"{n / est.GIB:.1f} GiB"


def choose(
    classes: Sequence[GpuClass],
    estimates: Mapping[est.Method, est.Estimate],
    requested: str,
    *,
    gpu_count: int = 1,
    margin: float = 0.10,
    queued: bool = False,
    node_count: int = 1,
) -> Placement:
    """Picks the method (``auto``: the most accurate that fits the largest class) and the GPU class.

    ``classes`` are the eligible classes (see :func:`eligible_classes`); ``estimates``
    holds one estimate per method that may be chosen. ``queued``: the job goes to a Kueue queue,
    which picks the class (its ResourceFlavor) among those that fit, by its quotas; free GPUs
    are not looked at here.
    """
    order: list[est.Method] = (
        [m for m in est.METHODS if m in estimates] if requested == "auto" else [requested]  # type: ignore[list-item]
    )
    first: est.Method = order[0] if requested != "auto" else order[-1]  # report qlora's need when auto fails
    if not classes:
        return Placement(
            ok=False,
            reason=cond.NO_GPU_NODES,
            message=(
                f"no GPU class has {nodes_text(node_count)} with {gpu_count} GPU{'s' * (gpu_count > 1)} "
                "each matching the job's gpuProducts, nodeSelector and gpuMemory"
            ),
            method=first,
            estimate=estimates[first],
        )
    largest = max(classes, key=lambda c: c.memory_bytes)
    method = next(
        (m for m in order if required_bytes(estimates[m], margin) <= largest.memory_bytes),
        None,
    )
    if method is None:
        need = required_bytes(estimates[first], margin)
        tried = "any method" if requested == "auto" else f"method {requested}"
        return Placement(
            ok=False,
            reason=cond.INSUFFICIENT_GPU_MEMORY,
            message=(
                f"{tried} needs {_gib(need)} per GPU (estimate {_gib(estimates[first].total)} "
                f"+ {margin:.0%} margin); the largest GPU in the cluster is {largest.product} "
                f"with {_gib(largest.memory_bytes)}"
            ),
            method=first,
            estimate=estimates[first],
        )
    estimate = estimates[method]
    need = required_bytes(estimate, margin)
    fitting = [c for c in classes if c.memory_bytes >= need]
    free = [c for c in fitting if sum(1 for n in c.nodes if n.free >= gpu_count) >= node_count]
    chosen = (free or fitting)[0]
    why_method = ""
    if requested == "auto":
        better = [m for m in order[: order.index(method)]]
        why_method = f"method auto chose {method}" + (
            f" ({', '.join(better)} would need more than the largest GPU, {largest.product}); "
            if better
            else "; "
        )
    need_text = (
        f"{why_method}needs {_gib(need)} per GPU (estimate {_gib(estimate.total)} + {margin:.0%} margin): "
    )
    smallest = f"{fitting[0].product} ({_gib(fitting[0].memory_bytes)}) is the smallest GPU that fits"
    if queued:
        chosen = fitting[0]
        names = ", ".join(c.product for c in fitting)
        where = f"fits {names}; Kueue picks among them by its quotas"
        free = fitting
    elif not free:
        where = f"{smallest}, no GPU of it is free now; the pod waits for one"
    elif chosen is fitting[0]:
        where = smallest
    else:
        where = f"{smallest} but none is free now; {chosen.product} is the smallest with a free GPU"
    message = need_text + where
    return Placement(
        ok=True,
        reason=cond.GPU_FITS,
        message=message,
        method=method,
        estimate=estimate,
        gpu_class=chosen,
        waiting=not free,
        fitting=tuple(fitting),
    )
