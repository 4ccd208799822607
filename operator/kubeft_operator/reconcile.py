"""The lifecycle of a FineTuneJob as a pure function: what is observed → what to do.

A FineTuneJob runs as one batch/v1 Job, ``<job>-trainer`` (Indexed, one completion): the Job
controller makes the pods, retries them up to ``backoffLimit`` with its pod failure policy, and
enforces ``activeDeadlineSeconds``; Kueue, when the job is in a queue, admits, preempts and
readmits it. The operator places (method and GPU classes), creates the Job, and translates what
the Job, its pods and its Kueue Workload say into the FineTuneJob's phase, conditions and events.

:func:`decide` takes the job as last read and an :class:`Observed` view of its trainer Job (and,
when the Job is to be created, the cluster's GPU classes and the model shape); it returns the
status fields the operator owns and the actions to take. It never touches the API, so every
transition has a unit test (tests/operator/test_operator_units.py). The Job's name is known before
it exists, so an operator that dies between creating it and recording it adopts it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubeft import contract
from kubeft import estimate as est

from . import conditions as cond
from . import placement as pl
from . import resources
from .api import FineTuneJob
from .plan import Plan
from .settings import Settings

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
    disrupted: str | None = None  # DisruptionTarget=True: eviction, preemption, drain (its reason)
    created: str = ""  # creationTimestamp (RFC 3339): orders the attempts

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def not_counted(self) -> bool:
        """A failure the trainer Job's pod failure policy ignores (no retry is used up)."""
        return self.disrupted is not None or self.exit_code == contract.EXIT_TERMINATED


@dataclass(frozen=True)
class WorkloadState:
    """Kueue's Workload for the trainer Job: whether and where it is admitted, and why not."""

    name: str
    active: bool = True  # spec.active: false while the FineTuneJob is suspended
    admitted: bool = False
    cluster_queue: str = ""
    flavor: str = ""  # the ResourceFlavor assigned to the GPUs
    waiting: str = ""  # why it is not admitted (QuotaReserved=False, or Kueue's inadmissible message)
    evicted: tuple[str, str] | None = None  # Evicted=True: (reason, message)


@dataclass(frozen=True)
class TrainerJob:
    """The batch/v1 Job that runs the trainer."""

    name: str
    uid: str = ""
    suspended: bool = False
    queue: str | None = None  # its kueue.x-k8s.io/queue-name
    failed: int = 0  # counted failures (the pod failure policy's Ignore rules do not count)
    complete: bool = False
    failure: tuple[str, str] | None = None  # Failed=True: (reason, message)
    gpu_product: str | None = None  # the GPU product its pod template is pinned to (Kueue's flavor)
    create_error: str | None = None  # the Job controller's latest FailedCreate message
    deleting: bool = False
    owned: bool = True  # controlled by this FineTuneJob (not a leftover of an earlier one of that name)
    owner_uid: str = ""  # the uid of the FineTuneJob that controls it
    started: bool = False  # the Job controller has started it (status.startTime)
    active: int = 0  # pods it counts as active


@dataclass(frozen=True)
class Observed:
    """The trainer Job, its pods and its Workload, as read now."""

    trainer: TrainerJob | None = None
    pods: Mapping[str, PodState] = field(default_factory=dict)
    workload: WorkloadState | None = None


@dataclass(frozen=True)
class Inputs:
    """Cluster facts gathered for placing the trainer Job (only needed when it is to be created)."""

    classes: Sequence[pl.GpuClass] = ()
    shape: est.ModelShape | None = None
    invalid_reason: str | None = None  # a Validated=False reason: secret or model config problem
    invalid_message: str = ""
    has_hf_token: bool = False
    queue: str | None = None  # the LocalQueue the Job goes to (spec.queueName, else the namespace's default)


@dataclass
class Decision:
    """The outcome: operator-owned status fields to write and actions to apply."""

    status: dict[str, Any]
    create: Plan | None = None
    patch_trainer: dict[str, Any] | None = None  # a merge patch for the trainer Job
    workload_active: tuple[str, bool] | None = None  # (Workload, spec.active): Kueue's suspend
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


def needs_inputs(job: FineTuneJob, observed: Observed) -> bool:
    """Whether :func:`decide` may create the trainer Job now (then the caller gathers :class:`Inputs`)."""
    if job.deletion_timestamp or job.phase in TERMINAL_PHASES or job.spec.suspend:
        return False
    return observed.trainer is None


class _Builder:
    """Accumulates status changes, conditions and events for one decision."""

    def __init__(self, job: FineTuneJob, now: dt.datetime) -> None:
        self.job = job
        self.now = now
        self.status: dict[str, Any] = {}
        self.conditions: list[dict[str, Any]] = list(job.status.get("conditions") or [])
        self.events: list[tuple[str, str, str]] = []
        self._why = ("", "")
        self.admission = ""  # "admitted by ClusterQueue … on flavor …": said when the job moves on

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


def _newest(pods: Mapping[str, PodState], *, live: bool) -> PodState | None:
    """The newest pod that is still going (``live``) or that ended (not ``live``)."""
    found = [p for p in pods.values() if (not p.terminated and not p.deleting) == live]
    if not live:
        found = [p for p in found if p.terminated]
    return max(found, key=lambda p: (p.created, p.name), default=None)


def decide(
    job: FineTuneJob,
    observed: Observed,
    inputs: Inputs | None,
    settings: Settings,
    now: dt.datetime,
) -> Decision:
    """The next step for ``job``. ``inputs`` is required when :func:`needs_inputs` says so."""
    b = _Builder(job, now)
    spec = job.spec
    trainer, workload = observed.trainer, observed.workload

    # --- finished: only the TTL is left to enforce
    if job.phase in TERMINAL_PHASES:
        done = parse_time(job.status.get("completionTime"))
        ttl = spec.ttl_seconds_after_finished
        expired = ttl is not None and done is not None and now >= done + dt.timedelta(seconds=ttl)
        return Decision(status={}, delete_job=expired)

    if trainer is not None and not trainer.owned:  # a Job of this name left by an earlier FineTuneJob
        text = f"Job {trainer.name} belongs to an earlier FineTuneJob of this name; waiting for it to go"
        b.phase("Pending", text, cond.TRAINER_JOB_LOST)
        return b.result()

    # --- suspend / resume: the trainer Job's suspend (Kueue's, through the Workload, when queued)
    if spec.suspend:
        b.condition(cond.SUSPENDED, True, cond.JOB_SUSPENDED, "spec.suspend is true; checkpoints are kept")
        b.phase("Suspended", "suspended; set spec.suspend to false to resume from the latest checkpoint",
                cond.JOB_SUSPENDED)  # fmt: skip
        b.status["pod"] = None
        return b.result(**_set_suspend(trainer, workload, True))
    resumed: dict[str, Any] = {}
    if job.phase == "Suspended":
        b.condition(
            cond.SUSPENDED, False, cond.JOB_RESUMED, "resumed; a new pod continues from the latest checkpoint"
        )
        b.events.append(("Normal", cond.JOB_RESUMED, "resumed"))
        resumed = _set_suspend(trainer, workload, False)

    if trainer is None:
        return _create(b, job, inputs, settings, lost=bool(job.status.get("trainerJob")))
    if trainer.deleting:
        b.phase("Pending", f"Job {trainer.name} is being deleted; a new one follows", cond.TRAINER_JOB_LOST)
        return b.result()
    b.status["trainerJob"] = trainer.name
    pods = observed.pods
    _record_failures(b, trainer, pods)

    # --- the Job's outcome
    if trainer.complete:
        b.condition(cond.SUCCEEDED, True, cond.COMPLETED, f"Job {trainer.name} completed")
        b.status["completionTime"] = iso(now)
        b.status["pod"] = None
        b.phase("Succeeded", f"Job {trainer.name} completed", cond.COMPLETED)
        return b.result()
    if trainer.failure is not None:
        return _failed(b, trainer, pods)

    # --- queued: Kueue has not admitted the Job (or took it back)
    if trainer.queue:
        _follow_queue(b, trainer, workload)
        if trainer.suspended:  # waiting for admission (its old pod, if any, is being stopped)
            return b.result(**resumed)
    elif trainer.suspended:  # not queued, suspended: only a resume unsuspends it
        resumed = resumed or {"patch_trainer": {"spec": {"suspend": False}}}

    # --- admitted (or not queued): follow the pods
    pod = _newest(pods, live=True)
    if pod is not None:
        b.status["pod"] = pod.name
        _follow_pod(b, pod)
        return b.result(**resumed)
    b.status["pod"] = None
    last = _newest(pods, live=False)
    if last is None or last.phase != "Succeeded":  # a pod that succeeded: the Job completes next
        b.status["node"] = None
    if trainer.create_error and "exceeded quota" in trainer.create_error:
        _quota(b, trainer.create_error)
        return b.result(**resumed)
    if last is not None and last.phase == "Failed":
        reason, message = _failure_text(last)
        if last.not_counted:
            text = (
                f"pod {last.name} was stopped ({last.disrupted or 'SIGTERM'}) after saving a checkpoint; "
                f"not counted as a failure: a new pod resumes from the latest checkpoint"
            )
        else:
            text = (
                f"attempt {last.name} failed ({reason}: {message}); retry {trainer.failed}/"
                f"{spec.backoff_limit} from the latest checkpoint once the Job controller's backoff passes"
            )
        b.condition(cond.SCHEDULED, False, cond.BACKOFF, cond.cap(text))
        b.phase("Pending", text, reason if not last.not_counted else cond.POD_DISRUPTED, warning=True)
        return b.result(**resumed)
    if job.phase != "Scheduling":
        text = f"Job {trainer.name} is starting its pod"
        b.phase("Scheduling", f"{b.admission}; {text}" if b.admission else text, cond.JOB_CREATED)
    return b.result(**resumed)


def _set_suspend(trainer: TrainerJob | None, workload: WorkloadState | None, suspend: bool) -> dict[str, Any]:
    """The actions that (un)suspend the trainer Job: Kueue's Workload when it is queued, else the Job."""
    if trainer is None:
        return {}
    if trainer.queue:
        if workload is not None and workload.active == suspend:
            return {"workload_active": (workload.name, not suspend)}
        if workload is None and suspend and not trainer.suspended:
            return {"patch_trainer": {"spec": {"suspend": True}}}
        return {}
    if trainer.suspended != suspend:
        return {"patch_trainer": {"spec": {"suspend": suspend}}}
    return {}


def _record_failures(b: _Builder, trainer: TrainerJob, pods: Mapping[str, PodState]) -> None:
    """restarts, lastFailure and one Warning event for each failed attempt the job has not reported."""
    # restarts: failures that led to another pod (the one that failed the Job did not)
    b.status["restarts"] = max(0, trainer.failed - (1 if trainer.failure is not None else 0))
    last = _newest(pods, live=False)
    if last is None or last.phase != "Failed":
        return
    recorded = b.job.status.get("lastFailure") or {}
    if recorded.get("pod") == last.name:
        return
    reason, message = _failure_text(last)
    if last.not_counted:
        reason = cond.POD_DISRUPTED
        message = f"{last.disrupted or 'terminated by SIGTERM'}: {message}"
    b.status["lastFailure"] = {
        "pod": last.name,
        "reason": reason,
        "message": cond.cap(message),
        "exitCode": last.exit_code,
        "time": iso(b.now),
    }
    b.events.append(("Warning", cond.POD_DISRUPTED if last.not_counted else cond.POD_FAILED,
                     cond.cap(f"pod {last.name}: {reason}: {message}")))  # fmt: skip


def _failed(b: _Builder, trainer: TrainerJob, pods: Mapping[str, PodState]) -> Decision:
    """The Job failed: say why in the FineTuneJob's words, with the last attempt's own message."""
    job_reason, job_message = trainer.failure or ("", "")
    last = _newest(pods, live=False)
    reason, message = _failure_text(last) if last is not None else ("Error", job_message)
    attempt = last.name if last is not None else trainer.name
    invalid = last is not None and last.exit_code == contract.EXIT_INVALID_INPUT
    if job_reason == "PodFailurePolicy" and invalid:
        # the trainer's own reason when it gave one (ExportFailed: a registry refused the credentials)
        why = reason if reason not in ("", "Error", cond.INVALID_INPUT) else cond.INVALID_INPUT
        what = "rejected its input" if why == cond.INVALID_INPUT else f"stopped ({why})"
        text = f"the trainer {what} (not retried): {message}"
    elif job_reason == "BackoffLimitExceeded":
        why = cond.OOM_KILLED if reason == cond.OOM_KILLED else cond.BACKOFF_LIMIT_EXCEEDED
        limit = b.job.spec.backoff_limit
        text = f"backoffLimit ({limit}) reached; last attempt {attempt}: {reason}: {message}"
    elif job_reason == "DeadlineExceeded":
        deadline = b.job.spec.active_deadline_seconds
        why, text = cond.DEADLINE_EXCEEDED, f"the job was active for activeDeadlineSeconds={deadline}"
    else:
        why, text = job_reason or "Failed", f"Job {trainer.name} failed: {job_message}"
    b.status["completionTime"] = iso(b.now)
    b.status["pod"] = None
    b.phase("Failed", text, why if why != cond.OOM_KILLED else cond.BACKOFF_LIMIT_EXCEEDED, warning=True)
    b.condition(cond.FAILED, True, why, text)
    return b.result()


def _follow_queue(b: _Builder, trainer: TrainerJob, workload: WorkloadState | None) -> None:
    """Admitted, or Queued with Kueue's own words (and Preempted when Kueue took the job back)."""
    queue = {"name": trainer.queue or ""}
    if workload is not None:
        queue |= {"clusterQueue": workload.cluster_queue, "flavor": workload.flavor}
        queue["workload"] = workload.name
        queue = {k: v for k, v in queue.items() if v}
    b.status["queue"] = queue
    where = f"LocalQueue {trainer.queue}"
    if workload is not None and workload.admitted and not trainer.suspended:
        on = f" on flavor {workload.flavor}" if workload.flavor else ""
        b.admission = f"admitted by ClusterQueue {workload.cluster_queue}{on}"
        before = cond.get_condition(b.conditions, cond.ADMITTED) or {}
        b.condition(cond.ADMITTED, True, cond.KUEUE_ADMITTED, b.admission)
        if before.get("status") != "True":
            b.events.append(("Normal", cond.KUEUE_ADMITTED, f"{b.admission} (LocalQueue {trainer.queue})"))
        if trainer.gpu_product:
            gpu = dict(b.job.status.get("gpu") or {})
            memory = next((c.get("memoryBytes") for c in gpu.get("candidates") or []
                           if c.get("product") == trainer.gpu_product), None)  # fmt: skip
            gpu.update(product=trainer.gpu_product, **({"memoryBytes": memory} if memory else {}))
            b.status["gpu"] = gpu
        return
    if workload is None:
        text = f"queued in {where}: waiting for Kueue to make a Workload for Job {trainer.name}"
        reason = cond.QUEUED
    elif workload.evicted is not None and workload.evicted[0] != "Deactivated":
        reason = cond.PREEMPTED
        text = (
            f"{workload.evicted[0].lower()} by Kueue ({workload.evicted[1]}); queued again in {where}, "
            f"the job resumes from its latest checkpoint once readmitted"
        )
    else:
        reason = cond.QUEUED
        text = f"queued in {where}" + (f": {workload.waiting}" if workload.waiting else "")
    b.condition(cond.ADMITTED, False, reason, cond.cap(text))
    if trainer.suspended:
        b.status["pod"] = None
        b.status["node"] = None
        b.phase("Queued", text, reason, warning=reason == cond.PREEMPTED)


def _follow_pod(b: _Builder, pod: PodState) -> None:
    job = b.job
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
    elif pod.phase != "Running" and job.phase in ("", "Pending", "Queued", "Suspended"):
        b.phase("Scheduling", f"{b.admission + '; ' if b.admission else ''}pod {pod.name} created",
                cond.POD_CREATED)  # fmt: skip


def _quota(b: _Builder, message: str) -> None:
    """A ResourceQuota refused the trainer pod: the job waits (Pending), saying the quota's words.

    The Job controller keeps trying (with its backoff); no attempt is counted. The Warning event is
    sent once per wait, not per try.
    """
    text = f"the namespace's ResourceQuota refused the trainer pod; waiting for room: {message}"
    previous = next((c for c in b.conditions if c.get("type") == cond.SCHEDULED), {})
    b.condition(cond.SCHEDULED, False, cond.QUOTA_EXCEEDED, cond.cap(text))
    b.phase("Pending", text, cond.QUOTA_EXCEEDED, warning=True)
    if previous.get("reason") == cond.QUOTA_EXCEEDED:
        b.events = [e for e in b.events if e[1] != cond.QUOTA_EXCEEDED]
    elif not any(e[1] == cond.QUOTA_EXCEEDED for e in b.events):
        b.events.append(("Warning", cond.QUOTA_EXCEEDED, cond.cap(text)))


def _place(
    spec: Any, shape: est.ModelShape, classes: Sequence[pl.GpuClass], settings: Settings, queued: bool
) -> tuple[pl.Placement, est.Strategy, dict[est.Method, est.Estimate]]:
    """Method, strategy and GPU class. ``auto`` strategy: DDP when a replica fits one GPU, else FSDP
    (whichever lets the more accurate method fit; DDP on a tie). One GPU: no strategy to choose."""
    wanted = spec.distributed.strategy
    strategies: tuple[est.Strategy, ...] = ("ddp", "fsdp") if wanted == "auto" else (wanted,)
    why_ddp = ""
    if spec.world_size == 1:
        strategies = ("ddp",)
    elif wanted == "auto" and spec.hyperparameters.optimizer in est.OPTIMIZERS_NO_FSDP:
        strategies = ("ddp",)  # a bitsandbytes optimizer cannot step FSDP's shards
        why_ddp = f"strategy auto chose ddp (optimizer {spec.hyperparameters.optimizer} cannot use fsdp); "
    options = []
    for strategy in strategies:
        estimates = {
            m: est.estimate(shape, est.Setup.from_spec(spec, m, strategy)) for m in spec.candidate_methods()
        }
        res = spec.resources
        choice = pl.choose(classes, estimates, spec.method, gpu_count=res.gpus, margin=settings.memory_margin,
                           queued=queued, node_count=res.nodes)  # fmt: skip
        options.append((choice, strategy, estimates))
    fitting = [o for o in options if o[0].ok]
    if not fitting:
        return options[0]
    if why_ddp:
        choice, strategy, estimates = fitting[0]
        return replace(choice, message=why_ddp + choice.message), strategy, estimates
    rank = {m: i for i, m in enumerate(est.METHODS)}  # most accurate first
    best = min(fitting, key=lambda o: (rank[o[0].method], strategies.index(o[1])))
    if len(strategies) > 1:
        choice, strategy, estimates = best
        why = "a replica fits one GPU" if strategy == "ddp" else "no replica fits one GPU: sharded"
        best = (
            replace(choice, message=f"strategy auto chose {strategy} ({why}); {choice.message}"),
            strategy,
            estimates,
        )
    return best


def quota_wait(job: FineTuneJob, message: str, now: dt.datetime) -> Decision:
    """Creating the trainer Job itself was refused by a ResourceQuota (e.g. on count/jobs.batch)."""
    b = _Builder(job, now)
    _quota(b, message)
    return b.result()


def _create(b: _Builder, job: FineTuneJob, inputs: Inputs | None, settings: Settings, lost: bool) -> Decision:
    """Validates, places and plans the trainer Job."""
    spec = job.spec
    if inputs is None:  # the caller did not expect a placement: decide on the next tick
        return b.result()
    if inputs.invalid_reason or inputs.shape is None:
        reason = inputs.invalid_reason or cond.MODEL_CONFIG_UNAVAILABLE
        b.condition(cond.VALIDATED, False, reason, inputs.invalid_message)
        b.phase("Pending", inputs.invalid_message, reason, warning=True)
        return b.result()
    b.condition(cond.VALIDATED, True, cond.SPEC_VALID, "spec, model config and credentials are usable")

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
        node_count=res.nodes,
    )
    try:
        choice, strategy, estimates = _place(
            spec, inputs.shape, classes, settings, queued=inputs.queue is not None
        )
    except est.EstimateError as exc:
        b.condition(cond.VALIDATED, False, cond.INVALID_SPEC, str(exc))
        b.phase("Pending", str(exc), cond.INVALID_SPEC, warning=True)
        return b.result()
    vram = choice.estimate.to_dict() if choice.estimate else {}
    vram["profile"] = "configured"
    vram["reason"] = choice.message
    b.status["vram"] = vram
    if not choice.ok or choice.gpu_class is None:
        b.condition(cond.SCHEDULABLE, False, choice.reason, choice.message)
        b.phase("Pending", choice.message, choice.reason, warning=True)
        return b.result(placement=choice)
    b.condition(cond.SCHEDULABLE, True, cond.GPU_FITS, choice.message)
    # queued: every class that fits, Kueue picks the flavor; else the one class chosen here
    allowed = choice.fitting if inputs.queue else (choice.gpu_class,)
    gpu: dict[str, Any] = {"count": res.gpus}
    if len(allowed) == 1:
        gpu |= {"product": allowed[0].product, "memoryBytes": allowed[0].memory_bytes}
    if inputs.queue:
        gpu["candidates"] = [{"product": c.product, "memoryBytes": c.memory_bytes} for c in allowed]
    b.status["gpu"] = gpu
    if spec.world_size > 1:
        b.status["distributed"] = {
            "strategy": strategy, "worldSize": spec.world_size, "nodes": res.nodes, "gpusPerNode": res.gpus,
            "globalBatch": spec.global_batch,
        }  # fmt: skip
    plan = Plan(
        method=choice.method,
        gpu_classes=tuple(allowed),
        gpu_count=res.gpus,
        estimate=estimates[choice.method],
        profiles=est.estimate_profiles(inputs.shape, est.Setup.from_spec(spec, choice.method, strategy)),
        shape=inputs.shape,
        endpoint=spec.storage.endpoint or settings.default_storage_endpoint,
        bucket=spec.storage.bucket or settings.default_bucket,
        has_hf_token=inputs.has_hf_token,
        queue=inputs.queue,
        strategy=strategy,
        nodes=res.nodes,
        settings=settings,
    )
    name = resources.trainer_job_name(job)
    b.status.update(trainerJob=name, pod=None, node=None)
    b.status.setdefault("startTime", job.status.get("startTime") or iso(b.now))
    if lost:
        b.events.append(("Warning", cond.TRAINER_JOB_LOST, f"Job {name} was gone; created it again"))
    if inputs.queue:
        text = f"Job {name} created in LocalQueue {inputs.queue}; Kueue admits it; {choice.message}"
        b.status["queue"] = {"name": inputs.queue}
        b.condition(cond.ADMITTED, False, cond.QUEUED, f"queued in LocalQueue {inputs.queue}")
        b.phase("Queued", text, cond.JOB_CREATED)
    else:
        b.condition(cond.SCHEDULED, False, cond.WAITING_FOR_NODE, f"Job {name} created, waiting for a node")
        b.phase("Scheduling", f"Job {name} created; {choice.message}", cond.JOB_CREATED)
    return b.result(create=plan, placement=choice)


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
