"""The reconcile loop: worker threads take FineTuneJob keys off a work queue and move each job
one step forward.

A key is queued when the job or anything of it changes (watch events: the job, its trainer Job,
pods and Kueue Workload) and, besides that, only when the job waits on time: a job waiting for an
input that is outside the cluster's watches (a Secret, a dataset upload, a GPU class, room in a
quota) is looked at again with backoff, a finished job once more when its TTL ends, and a running
job after ``resync_seconds`` as a safety net (that costs no request: everything comes from the
caches). A finished job without a TTL is never looked at again. kopf timers are not used: each
would put a finalizer on every job.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubeft import contract
from kubeft import profile as profiles

from . import conditions as cond
from . import metrics
from .api import FineTuneJob, InvalidSpec
from .informers import Cache, Key
from .kube import Kube, QuotaExceeded, utcnow
from .leader import LeaseElector
from .reconcile import Decision, Inputs, Observed, decide, iso, needs_inputs, parse_time, quota_wait
from .settings import Settings
from .workqueue import Backoff, WorkQueue

log = logging.getLogger("kubeft.controller")
Logger = logging.Logger | logging.LoggerAdapter[Any]
ProfileOf = Callable[[str, "str | None"], "profiles.Profile | None"]  # (namespace, spec.profile)


@dataclass
class Controller:
    """The queue, the caches, the leader election and the workers of one operator process."""

    kube: Kube
    settings: Settings
    cache: Cache = field(default_factory=Cache)
    queue: WorkQueue[Key] = field(default_factory=WorkQueue)
    elector: LeaseElector | None = None
    profile_of: ProfileOf = lambda namespace, requested: None
    backoff: Backoff[Key] = field(init=False)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.settings.reconcile_interval_seconds, self.settings.retry_max_seconds)
        self.kube.cache = self.cache  # the reconcile reads a job's world from the watches

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    def start(self) -> None:
        """Starts the workers, then the election (single replica: leads at once)."""
        for i in range(self.settings.workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.elector is not None:
            self.elector.start()

    def stop(self) -> None:
        self.queue.shutdown()
        if self.elector is not None:
            self.elector.stop()

    def enqueue_all(self) -> None:
        """Every known job once (this replica just became the leader)."""
        for key in self.cache.job_keys():
            self.queue.add(key)

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                if not self.leading:
                    continue  # the leader acts; this replica only keeps its caches warm
                self.cache.ready.wait()
                after = self.process(key)
                if after is None:  # waits for nothing: an earlier schedule (a backoff) is void
                    self.queue.forget(key)
                else:
                    self.queue.add_after(key, after)
            except Exception as exc:
                metrics.ERRORS.labels(kind=type(exc).__name__).inc()
                delay = self.backoff.next(key)
                log.warning("reconcile of %s/%s failed (again in %.0f s): %s", *key, delay, exc)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)

    def process(self, key: Key) -> float | None:
        """Reconciles one job; seconds until it must be looked at again without an event (None: never)."""
        namespace, name = key
        started = time.monotonic()
        try:
            body = self.cache.job_body(key)
            if body is None:  # deleted
                metrics.set_phase(namespace, name, None)
                self.queue.forget(key)
                self.backoff.reset(key)
                return None
            logger = logging.LoggerAdapter(log, {"job": f"{namespace}/{name}"})
            requested = (body.get("spec") or {}).get("profile")
            decision = reconcile(
                self.kube, self.settings, body, logger, self.profile_of(namespace, requested)
            )
            return self.requeue_after(key, body, decision)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    def requeue_after(self, key: Key, body: dict[str, Any], decision: Decision | None) -> float | None:
        """When to look at the job again if nothing of it changes meanwhile."""
        status = dict(body.get("status") or {})
        phase = decision.status.get("phase", status.get("phase")) if decision else status.get("phase")
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        if phase in contract.TERMINAL_PHASES:
            self.backoff.reset(key)
            ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
            done = parse_time((decision.status if decision else {}).get("completionTime")) or parse_time(
                status.get("completionTime")
            )
            if ttl is None or done is None or (decision is not None and decision.delete_job):
                return None
            return max(1.0, (done + dt.timedelta(seconds=int(ttl)) - utcnow()).total_seconds() + 1)
        if decision is None or phase in ("", "Pending"):
            return self.backoff.next(key)  # waits on something no watch reports: look again later
        if phase == "Scheduling" and decision.status.get("pod", status.get("pod")) is None:
            return self.backoff.next(key)  # a Job without a pod yet: a ResourceQuota may refuse it
        self.backoff.reset(key)
        return self.settings.resync_seconds or None


def reconcile(
    kube: Kube, settings: Settings, body: dict[str, Any], logger: Logger,
    profile: profiles.Profile | None = None, now: dt.datetime | None = None,
) -> Decision | None:  # fmt: skip
    """Decides for one job as last seen, applies the decision and writes the status.

    None when there was nothing to decide (an invalid spec, a job being deleted).
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    now = now or utcnow()
    try:
        job = FineTuneJob.from_body(body, profile)
    except InvalidSpec as exc:
        logger.warning("invalid spec: %s", exc)
        stub = FineTuneJob.model_construct(
            name=name, namespace=namespace, uid=meta.get("uid", ""), status=dict(body.get("status") or {})
        )
        conditions = stub.status.get("conditions") or []
        for type_, (value, why, text) in {
            cond.VALIDATED: (False, cond.INVALID_SPEC, str(exc)),
            **cond.kstatus("Pending", cond.INVALID_SPEC, str(exc)),
        }.items():
            conditions = cond.set_condition(
                conditions, type_, value, why, text, generation=meta.get("generation") or 0, now=iso(now)
            )
        changes = {"phase": "Pending", "conditions": conditions}
        if any(stub.status.get(k) != v for k, v in changes.items()):
            kube.patch_status(stub, changes)
        metrics.set_phase(namespace, name, "Pending")
        return None
    if job.deletion_timestamp:
        return None
    observed = kube.observe(job) if job.phase not in contract.TERMINAL_PHASES else Observed()
    inputs = None
    if needs_inputs(job, observed):
        violations = job.profile_violations(settings.default_bucket)
        if violations and job.profile is not None:  # the profile was tightened after the job was made
            text = (
                violations[0] if job.profile.refusal
                else f"FineTuneProfile {job.profile.name} forbids this job now: {'; '.join(violations)}"
            )  # fmt: skip
            inputs = Inputs(invalid_reason=cond.PROFILE_VIOLATION, invalid_message=text)
        else:
            inputs = kube.inputs(job, settings)
    decision = decide(job, observed, inputs, settings, now)
    try:
        kube.apply(job, decision, logger)
    except QuotaExceeded as exc:
        logger.info("quota: %s", exc)
        decision = quota_wait(job, str(exc), now)
    changes = {k: v for k, v in decision.status.items() if job.status.get(k) != v}
    if changes and not kube.patch_status(job, changes):
        logger.info("status moved meanwhile; deciding again on its next change")
        return decision
    for type_, reason, message in decision.events:
        kube.event(job, type_, reason, message)
    if decision.placement is not None:
        p = decision.placement
        result = "unschedulable" if not p.ok else ("waiting" if p.waiting else "placed")
        product = p.gpu_class.product if p.gpu_class else ""
        metrics.PLACEMENTS.labels(result=result, gpu_product=product, method=p.method).inc()
        if "phase" in changes:
            logger.info("placement: %s", p.message)
    metrics.set_phase(namespace, name, decision.status.get("phase", job.phase))
    return decision
