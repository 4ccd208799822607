"""kopf registration: thin handlers that read, call :func:`.reconcile.decide`, and apply.

One timer per FineTuneJob drives its whole lifecycle (placement, the trainer Job and its
Kueue admission, suspend, TTL): it re-reads the job each time, so a restart
of the operator, a missed watch event or a stale cache cannot make it act twice.
A finished job has no timer (unless its TTL is to be enforced): it costs no request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from kubeft import contract
from kubeft import profile as profiles

from . import conditions as cond
from . import metrics
from .api import FineTuneJob, InvalidSpec
from .kube import Kube, QuotaExceeded, utcnow
from .reconcile import Inputs, Observed, decide, iso, needs_inputs, quota_wait
from .settings import Settings

Logger = logging.Logger | logging.LoggerAdapter[Any]
SETTINGS = Settings.from_env()  # the timer interval is needed at registration time


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig that KUBECONFIG names at startup time."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    """Loads settings and API clients into ``memo``; our own finalizer and annotation names."""
    settings.persistence.finalizer = f"{contract.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=contract.GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # events are few and written by the reconcile, not log lines
    memo.settings = Settings.from_env()  # fresh per run; only the timer interval is fixed at import
    if memo.settings.peering:  # a replica that stops renewing itself this long is taken for dead
        settings.peering.lifetime = memo.settings.peering_lifetime_seconds
        settings.peering.mandatory = True
    memo.kube = Kube.from_environment(memo.settings)
    metrics.start(memo.settings.metrics_port)
    logger.info("kubeft operator started; trainer image %s", memo.settings.trainer_image)


def needs_ticks(status: Any, spec: Any, **_: Any) -> bool:
    """Whether a job needs its timer: until it finished, and after that only to enforce its TTL.

    kopf stops a timer whose filter no longer matches (and starts it again if it matches again),
    so the thousands of finished jobs a platform keeps cost no API request.
    """
    return (
        status.get("phase") not in contract.TERMINAL_PHASES or spec.get("ttlSecondsAfterFinished") is not None
    )


@kopf.index("", "v1", "namespaces")
def namespace_profiles(
    name: str, labels: Any, annotations: Any, **_: Any
) -> dict[str, tuple[str, ...]] | None:
    """Namespace → the FineTuneProfiles it allows, its label's (the default) first (from the watch:
    no request per tick)."""
    allowed = profiles.allowed_profiles(
        labels.get(profiles.LABEL_PROFILE), annotations.get(profiles.ANNOTATION_ALLOWED)
    )
    return {name: allowed} if allowed else None


@kopf.index(contract.GROUP, contract.VERSION, profiles.PLURAL)
def profile_specs(body: Any, name: str, **_: Any) -> dict[str, profiles.Profile]:
    """FineTuneProfile name → its parsed spec (from the watch)."""
    return {name: profiles.Profile.from_body(body)}


@kopf.on.resume(contract.GROUP, contract.VERSION, profiles.PLURAL)
@kopf.on.create(contract.GROUP, contract.VERSION, profiles.PLURAL)
def bind_profile(name: str, uid: str, memo: Any, logger: Logger, **_: Any) -> None:
    """Each FineTuneProfile gets its ValidatingAdmissionPolicyBinding: the API server then checks
    the jobs of the namespaces labelled with it against its limits at `kubectl apply`."""
    memo.kube.ensure_profile_binding(name, uid)
    logger.info("admission policy %s bound to profile %s", profiles.POLICY, name)


def namespace_profile(
    namespace: str, namespace_profiles: Any, profile_specs: Any, requested: str | None = None
) -> profiles.Profile | None:
    """The Profile of a job of ``namespace`` (naming ``requested`` in spec.profile) from the indexes;
    None when the namespace has none. A profile that does not exist, or that the namespace does not
    allow, comes back as one that refuses every job, saying why."""
    allowed: tuple[str, ...] = next(iter(namespace_profiles.get(namespace, ())), ())
    chosen, why = profiles.choose(namespace, allowed, requested)
    if why is not None:
        return profiles.Profile.refused(requested or "", why)
    if chosen is None:
        return None
    for found in profile_specs.get(chosen, ()):
        return found  # type: ignore[no-any-return]
    return profiles.Profile.refused(chosen, f"FineTuneProfile {chosen} does not exist")


@kopf.on.event(contract.GROUP, contract.VERSION, contract.PLURAL)
def follow_phase(type: str | None, name: str, namespace: str | None, status: Any, **_: Any) -> None:
    """Keeps ``kubeft_operator_job_phase`` true for every job from the watch alone, finished ones
    included (they have no timer), and after an operator restart."""
    metrics.set_phase(namespace or "", name, None if type == "DELETED" else str(status.get("phase") or ""))


@kopf.timer(
    contract.GROUP,
    contract.VERSION,
    contract.PLURAL,
    interval=SETTINGS.reconcile_interval_seconds,
    when=needs_ticks,
)
def reconcile_job(name: str, namespace: str | None, memo: Any, logger: Logger, **kwargs: Any) -> None:
    """Moves one FineTuneJob one step forward (kwargs: kopf's indexes)."""
    assert namespace is not None  # FineTuneJob is namespaced
    started = time.monotonic()
    profile = namespace_profile(
        namespace, kwargs["namespace_profiles"], kwargs["profile_specs"], kwargs["spec"].get("profile")
    )
    try:
        reconcile(memo.kube, memo.settings, namespace, name, logger, profile)
    except kopf.TemporaryError:
        raise
    except Exception as exc:
        metrics.ERRORS.labels(kind=type(exc).__name__).inc()
        raise kopf.TemporaryError(
            f"reconcile failed: {exc}", delay=memo.settings.reconcile_interval_seconds
        ) from exc
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)


@kopf.on.delete(
    contract.GROUP,
    contract.VERSION,
    contract.PLURAL,
    when=lambda spec, **_: spec.get("cleanup") == "Delete",
    retries=5,
    backoff=10,
)
def clean_up(body: Any, memo: Any, logger: Logger, namespace: str | None, **kwargs: Any) -> None:
    """``spec.cleanup: Delete``: the run's checkpoints and artifacts go before the job does.

    Only such jobs carry the finalizer. Storage away: retried (5 times, then the job is let go,
    with the objects left and a warning, rather than kept undeletable).
    """
    profile = namespace_profile(
        namespace or "", kwargs["namespace_profiles"], kwargs["profile_specs"], body["spec"].get("profile")
    )
    job = FineTuneJob.from_body(body, profile)
    try:
        where, count = memo.kube.delete_run_objects(job, memo.settings)
    except LookupError as exc:
        logger.warning("spec.cleanup: Delete, but %s: the objects are left in storage", exc)
        return
    except Exception as exc:
        raise kopf.TemporaryError(f"cannot delete the job's objects yet: {exc}", delay=10) from exc
    logger.info("spec.cleanup: Delete: removed %d objects under %s", count, where)


def reconcile(
    kube: Kube, settings: Settings, namespace: str, name: str, logger: Logger,
    profile: profiles.Profile | None = None,
) -> None:  # fmt: skip
    """Reads the job and its trainer Job, decides, applies the decision and writes the status."""
    body = kube.get_job(namespace, name)
    if body is None:
        return
    try:
        job = FineTuneJob.from_body(body, profile)
    except InvalidSpec as exc:
        meta = body["metadata"]
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
                conditions, type_, value, why, text, generation=meta.get("generation") or 0, now=iso(utcnow())
            )
        kube.patch_status(stub, {"phase": "Pending", "conditions": conditions})
        return
    if job.deletion_timestamp:
        return
    now = utcnow()
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
        logger.info("status moved meanwhile; deciding again on the next tick")
        return
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
