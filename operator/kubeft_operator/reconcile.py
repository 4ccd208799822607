"""The lifecycle of a FineTuneJob as a pure function: what is observed → what to do.

:func:`decide` takes the job (as last read), its pods and, when a pod is to be
placed, the cluster's GPU classes and the model shape; it returns the status
fields the operator owns and the actions to take. It never touches the API, so
every transition has a unit test (tests/operator/test_reconcile.py).

Pods are named ``<job>-trainer-<n>`` with ``n = status.podsCreated``: the name of
the next pod is known before it exists, so an operator that dies between creating
a pod and recording it adopts the same pod instead of creating a second one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeft import contract
from kubeft import estimate as est

from . import conditions as cond
from . import placement as pl
from . import resources
from .api import FineTuneJob
from .plan import Plan
from .settings import Settings

RUNNING_PHASES = contract.RUNNING_PHASES
TRAINER_PHASES = contract.TRAINER_PHASES
TERMINAL_PHASES = contract.TERMINAL_PHASES
OOM_HINT = "the trainer ran out of memory: try a smaller batchSize or maxSeqLength, or method qlora"


@dataclass(frozen=True)
class PodState:
    """What the operator needs to know about one trainer pod."""

    name: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    node: str | None = None
    deleting: bool = False
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    unschedulable: str | None = None  # the scheduler's reason why no node fits (PodScheduled=False)

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Inputs:
    """Cluster facts gathered for placing a pod (only needed when a pod is to be created)."""

    classes: Sequence[pl.GpuClass] = ()
    shape: est.ModelShape | None = None
    invalid_reason: str | None = None  # a Validated=False reason: secret or model config problem
    invalid_message: str = ""
    has_hf_token: bool = False


@dataclass
class Decision:
    """The outcome: operator-owned status fields to write and actions to apply."""

    status: dict[str, Any]
    create: Plan | None = None
    delete_pods: list[str] = field(default_factory=list)
    delete_job: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    placement: pl.Placement | None = None


def iso(t: dt.datetime) -> str:
    """RFC 3339 timestamp as Kubernetes writes it."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> dt.datetime | None:
    """Parses an RFC 3339 timestamp from the status; None if absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def backoff_seconds(restarts: int, settings: Settings) -> float:
    """Delay before attempt ``restarts + 1``: base × 2^(restarts-1), capped."""
    return float(min(settings.backoff_max_seconds, settings.backoff_base_seconds * 2 ** max(0, restarts - 1)))


def current_pod_name(job: FineTuneJob) -> str:
    """The pod the job runs or is about to create."""
    recorded = job.status.get("pod")
    if recorded:
        return str(recorded)
    return resources.pod_name(job, int(job.status.get("podsCreated") or 0))


def needs_inputs(job: FineTuneJob, pods: Mapping[str, PodState], now: dt.datetime) -> bool:
    """Whether :func:`decide` may create a pod now (then the caller gathers :class:`Inputs`)."""
    if job.deletion_timestamp or job.phase in TERMINAL_PHASES or job.spec.suspend:
        return False
    if job.status.get("pod"):
        return False
    pod = pods.get(current_pod_name(job))
    if pod is not None and not pod.deleting:
        return False
    retry = parse_time(job.status.get("nextRetryTime"))
    return not (retry and now < retry)


class _Builder:
    """Accumulates status changes, conditions and events for one decision."""

    def __init__(self, job: FineTuneJob, now: dt.datetime) -> None:
        self.job = job
        self.now = now
        self.status: dict[str, Any] = {}
        self.conditions: list[dict[str, Any]] = list(job.status.get("conditions") or [])
        self.events: list[tuple[str, str, str]] = []
        self._why = ("", "")

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.conditions = cond.set_condition(
            self.conditions, type_, status, reason, message, generation=self.job.generation, now=iso(self.now)
        )

    def phase(self, phase: str, message: str, reason: str, warning: bool = False) -> None:
        if self.job.phase != phase:
            self.events.append(("Warning" if warning else "Normal", reason, f"{phase}: {message}"))
        self.status["phase"] = phase
        self.status["message"] = cond.cap(message)
        self._why = (reason, message)

    def result(self, **kw: Any) -> Decision:
        if "phase" in self.status:  # kstatus follows every phase the operator sets
            reason, message = self._why
            for type_, (value, why, text) in cond.kstatus(self.status["phase"], reason, message).items():
                self.condition(type_, value, why, text)
        self.status["conditions"] = self.conditions
        self.status["observedGeneration"] = self.job.generation
        return Decision(status=self.status, events=self.events, **kw)


def _failure_text(pod: PodState) -> tuple[str, str]:
    reason = pod.reason or ("OOMKilled" if pod.exit_code == 137 else "Error")
    message = (pod.message or "").strip()
    if pod.exit_code is not None:
        message = f"exit code {pod.exit_code}" + (f": {message}" if message else "")
    oom = reason == cond.OOM_KILLED or any(
        s in message for s in ("CUDA out of memory", "OutOfMemoryError", "OOMKilled")
    )
    if oom:
        reason = cond.OOM_KILLED
        message = f"{message}; {OOM_HINT}" if message else OOM_HINT
    return reason, message or "no message"


def decide(
    job: FineTuneJob,
    pods: Mapping[str, PodState],
    inputs: Inputs | None,
    settings: Settings,
    now: dt.datetime,
) -> Decision:
    """The next step for ``job``. ``inputs`` is required when :func:`needs_inputs` says so."""
    b = _Builder(job, now)
    spec = job.spec
    name = current_pod_name(job)
    pod = pods.get(name)
    live = [p.name for p in pods.values() if not p.terminated and not p.deleting]

    def fail(reason: str, message: str) -> Decision:
        b.phase("Failed", message, reason, warning=True)
        b.condition(cond.FAILED, True, reason, message)
        b.status["completionTime"] = iso(now)
        return b.result(delete_pods=live)

    # --- finished: only the TTL is left to enforce
    if job.phase in TERMINAL_PHASES:
        done = parse_time(job.status.get("completionTime"))
        ttl = spec.ttl_seconds_after_finished
        expired = ttl is not None and done is not None and now >= done + dt.timedelta(seconds=ttl)
        return Decision(status={}, delete_pods=live, delete_job=expired)

    # --- suspend / resume (a suspended job's deadline clock stands still, as a batch/v1 Job's)
    if spec.suspend:
        b.condition(cond.SUSPENDED, True, cond.JOB_SUSPENDED, "spec.suspend is true; checkpoints are kept")
        b.phase("Suspended", "suspended; set spec.suspend to false to resume from the latest checkpoint",
                cond.JOB_SUSPENDED)  # fmt: skip
        b.status["pod"] = None
        return b.result(delete_pods=live)
    if job.phase == "Suspended":
        b.condition(
            cond.SUSPENDED, False, cond.JOB_RESUMED, "resumed; a new pod continues from the latest checkpoint"
        )
        b.events.append(("Normal", cond.JOB_RESUMED, "resumed"))
        if job.status.get("startTime"):  # the deadline counts again from now (batch/v1 resets it too)
            b.status["activeSince"] = iso(now)

    # --- deadline, like batch/v1 Job: from the first pod's start, or from the last resume
    since = parse_time(
        b.status.get("activeSince") or job.status.get("activeSince") or job.status.get("startTime")
    )
    deadline = spec.active_deadline_seconds
    if deadline is not None and since is not None and now >= since + dt.timedelta(seconds=deadline):
        return fail(cond.DEADLINE_EXCEEDED, f"the job was active for activeDeadlineSeconds={deadline}")

    # --- the current pod exists: follow it
    if pod is not None and not pod.deleting:
        b.status["pod"] = pod.name
        if not job.status.get("pod"):  # adopted after an operator restart
            b.status["podsCreated"] = int(job.status.get("podsCreated") or 0) + 1
        if pod.phase == "Succeeded":
            b.condition(cond.SUCCEEDED, True, cond.COMPLETED, f"pod {pod.name} completed")
            b.status["completionTime"] = iso(now)
            b.phase("Succeeded", f"pod {pod.name} completed", cond.COMPLETED)
            return b.result()
        if pod.phase == "Failed":
            return _after_failure(b, pod, fail, settings)
        if pod.node:
            b.status["node"] = pod.node
            b.condition(cond.SCHEDULED, True, cond.POD_BOUND, f"pod {pod.name} is bound to node {pod.node}")
        else:
            waiting = f"pod {pod.name} waits for a node"
            if pod.unschedulable:  # e.g. an unbound claim, GPUs held by others, a taint not tolerated
                waiting += f": {pod.unschedulable}"
            b.condition(cond.SCHEDULED, False, cond.WAITING_FOR_NODE, waiting)
            if pod.unschedulable and job.phase == "Scheduling":
                b.status["message"] = cond.cap(waiting)
        if pod.phase == "Running" and job.phase not in (*TRAINER_PHASES, "Initializing"):
            b.phase("Initializing", f"pod {pod.name} is running on {pod.node}", cond.POD_BOUND)
        elif job.phase in ("", "Pending", "Suspended"):
            b.phase("Scheduling", f"pod {pod.name} created", cond.POD_CREATED)
        return b.result()

    # --- the recorded pod is gone while the job was running: node lost or pod deleted
    if job.status.get("pod") and job.phase in RUNNING_PHASES:
        lost = PodState(name=name, phase="Failed", reason=cond.POD_LOST,
                        message=f"pod {name} disappeared (its node went away or it was deleted)")  # fmt: skip
        return _after_failure(b, lost, fail, settings)
    if job.status.get("pod"):  # e.g. a suspended pod still terminating: forget it
        b.status["pod"] = None

    retry = parse_time(job.status.get("nextRetryTime"))
    if retry and now < retry:
        return b.result()
    if inputs is None:  # the caller did not expect a placement: decide on the next tick
        return b.result()

    # --- validate and place
    if inputs.invalid_reason or inputs.shape is None:
        reason = inputs.invalid_reason or cond.MODEL_CONFIG_UNAVAILABLE
        b.condition(cond.VALIDATED, False, reason, inputs.invalid_message)
        b.phase("Pending", inputs.invalid_message, reason, warning=True)
        return b.result()
    b.condition(cond.VALIDATED, True, cond.SPEC_VALID, "spec, model config and credentials are usable")

    methods = spec.candidate_methods()
    try:
        estimates = {m: est.estimate(inputs.shape, est.Setup.from_spec(spec, m)) for m in methods}
    except est.EstimateError as exc:
        b.condition(cond.VALIDATED, False, cond.INVALID_SPEC, str(exc))
        b.phase("Pending", str(exc), cond.INVALID_SPEC, warning=True)
        return b.result()
    res = spec.resources
    min_memory = 0
    if res.gpu_memory != "auto":
        min_memory = parse_quantity_bytes(res.gpu_memory)
    classes = pl.eligible_classes(
        inputs.classes,
        gpu_count=res.gpus,
        products=res.gpu_products,
        node_selector=res.node_selector,
        min_memory_bytes=min_memory,
    )
    choice = pl.choose(classes, estimates, spec.method, gpu_count=res.gpus, margin=settings.memory_margin)
    vram = choice.estimate.to_dict() if choice.estimate else {}
    vram["profile"] = "configured"
    vram["reason"] = choice.message
    b.status["vram"] = vram
    if not choice.ok or choice.gpu_class is None:
        b.condition(cond.SCHEDULABLE, False, choice.reason, choice.message)
        b.phase("Pending", choice.message, choice.reason, warning=True)
        return b.result(placement=choice)
    b.condition(cond.SCHEDULABLE, True, cond.GPU_FITS, choice.message)
    gpu = choice.gpu_class
    b.status["gpu"] = {"product": gpu.product, "memoryBytes": gpu.memory_bytes, "count": res.gpus}
    seq = int(job.status.get("podsCreated") or 0)
    while resources.pod_name(job, seq) in pods:  # a pod of that name is still terminating
        seq += 1
    plan = Plan(
        attempt=seq,
        method=choice.method,
        gpu_product=gpu.product,
        gpu_node_selectors=gpu.node_selectors,
        gpu_memory_bytes=gpu.memory_bytes,
        gpu_count=res.gpus,
        estimate=estimates[choice.method],
        profiles=est.estimate_profiles(inputs.shape, est.Setup.from_spec(spec, choice.method)),
        shape=inputs.shape,
        endpoint=spec.storage.endpoint or settings.default_storage_endpoint,
        bucket=spec.storage.bucket or settings.default_bucket,
        has_hf_token=inputs.has_hf_token,
        settings=settings,
    )
    pod_name = resources.pod_name(job, seq)
    b.status.update(pod=pod_name, podsCreated=seq + 1, nextRetryTime=None, node=None)
    b.status.setdefault("startTime", job.status.get("startTime") or iso(now))
    b.status.setdefault("activeSince", job.status.get("activeSince") or b.status["startTime"])
    b.condition(cond.SCHEDULED, False, cond.WAITING_FOR_NODE, f"pod {pod_name} created, waiting for a node")
    b.phase("Scheduling", f"pod {pod_name} created; {choice.message}", cond.POD_CREATED)
    return b.result(create=plan, placement=choice)


def quota_wait(job: FineTuneJob, message: str, now: dt.datetime) -> Decision:
    """The trainer pod was refused by a ResourceQuota: the job waits (Pending), saying the quota's words.

    No attempt is counted and nothing is recorded as created; every tick tries again, so the pod
    is made as soon as the quota has room. The Warning event is sent once per wait, not per try.
    """
    b = _Builder(job, now)
    text = f"the namespace's ResourceQuota refused the trainer pod; waiting for room: {message}"
    previous = next((c for c in b.conditions if c.get("type") == cond.SCHEDULED), {})
    b.condition(cond.SCHEDULED, False, cond.QUOTA_EXCEEDED, cond.cap(text))
    b.phase("Pending", text, cond.QUOTA_EXCEEDED, warning=True)
    if previous.get("reason") == cond.QUOTA_EXCEEDED:
        b.events.clear()
    elif not b.events:  # already Pending for another reason: the wait for quota is news
        b.events.append(("Warning", cond.QUOTA_EXCEEDED, cond.cap(text)))
    return b.result()


def _after_failure(b: _Builder, pod: PodState, fail: Any, settings: Settings) -> Decision:
    """A failed or lost attempt: retry with backoff, or fail the job."""
    job = b.job
    reason, message = _failure_text(pod)
    b.status["lastFailure"] = {
        "pod": pod.name,
        "reason": reason,
        "message": cond.cap(message),
        "exitCode": pod.exit_code,
        "time": iso(b.now),
    }
    b.status["pod"] = None
    b.status["node"] = None
    if pod.exit_code == contract.EXIT_INVALID_INPUT:
        return fail(cond.INVALID_INPUT, f"the trainer rejected its input (not retried): {message}")  # type: ignore[no-any-return]
    if job.restarts >= job.spec.backoff_limit:
        text = (
            f"backoffLimit ({job.spec.backoff_limit}) reached; last attempt {pod.name}: {reason}: {message}"
        )
        decision: Decision = fail(cond.BACKOFF_LIMIT_EXCEEDED, text)
        if reason == cond.OOM_KILLED:
            decision.status["conditions"] = cond.set_condition(
                decision.status["conditions"], cond.FAILED, True, cond.OOM_KILLED, text,
                generation=job.generation, now=iso(b.now),
            )  # fmt: skip
        return decision
    restarts = job.restarts + 1
    delay = backoff_seconds(restarts, settings)
    b.status["restarts"] = restarts
    b.status["nextRetryTime"] = iso(b.now + dt.timedelta(seconds=delay))
    text = (
        f"attempt {pod.name} failed ({reason}: {message}); retry {restarts}/{job.spec.backoff_limit} "
        f"in {delay:.0f}s from the latest checkpoint"
    )
    b.condition(cond.SCHEDULED, False, cond.BACKOFF, text)
    b.phase("Pending", text, reason, warning=True)
    b.events.append(("Warning", cond.POD_FAILED, cond.cap(text)))
    return b.result()


_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "": 1,
}  # fmt: skip


def parse_quantity_bytes(value: str | int) -> int:
    """Bytes of a memory quantity (``40Gi``, ``48G``, ``1073741824``); the schema checked its form."""
    if isinstance(value, int):
        return value
    s = value.strip()
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if suffix and s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * _SUFFIX[suffix])
    return int(float(s))
