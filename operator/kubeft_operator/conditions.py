"""Condition types, reasons and the one helper that sets a condition.

Conditions follow the Kubernetes API conventions: type, status, reason (CamelCase),
message, lastTransitionTime (changes only when status changes), observedGeneration.
"""

from __future__ import annotations

from typing import Any, Final

# --- condition types -----------------------------------------------------------
VALIDATED: Final = "Validated"  # the spec, model config and secret are usable
SCHEDULABLE: Final = "Schedulable"  # a GPU class in the cluster fits the estimate
ADMITTED: Final = "Admitted"  # Kueue admitted the trainer Job (only for jobs in a queue)
SCHEDULED: Final = "Scheduled"  # the trainer pod is bound to a node
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
# kstatus (sigs.k8s.io/cli-utils): what Flux, Argo CD and `kubectl wait --for=condition=Ready` read
READY: Final = "Ready"  # True once the job succeeded: its artifacts are there
RECONCILING: Final = "Reconciling"  # True while the job makes progress (or waits for something to appear)
STALLED: Final = "Stalled"  # True when it cannot go on without someone: failed, or waiting on a fix

# --- reasons -------------------------------------------------------------------
SPEC_VALID: Final = "SpecValid"
INVALID_SPEC: Final = "InvalidSpec"
MODEL_CONFIG_UNAVAILABLE: Final = "ModelConfigUnavailable"
SECRET_NOT_FOUND: Final = "SecretNotFound"
DATASET_NOT_FOUND: Final = "DatasetNotFound"  # an s3:// dataset that does not exist (yet): the job waits
DATASET_UNAVAILABLE: Final = "DatasetUnavailable"  # storage could not be asked
CLAIM_NOT_FOUND: Final = "ClaimNotFound"  # the PersistentVolumeClaim of a pvc:// source does not exist
SECRET_KEY_MISSING: Final = "SecretKeyMissing"
# web identity: STS refused the job's ServiceAccount token for spec.storage.roleArn (or is unreachable)
WEB_IDENTITY_REFUSED: Final = "WebIdentityRefused"
GPU_FITS: Final = "GPUFits"
INSUFFICIENT_GPU_MEMORY: Final = "InsufficientGPUMemory"
NO_GPU_NODES: Final = "NoGPUNodes"
POD_CREATED: Final = "PodCreated"
JOB_CREATED: Final = "JobCreated"  # the trainer Job exists; its pod is the Job controller's to create
QUEUED: Final = "Queued"  # Kueue has not admitted the trainer Job (yet): its message says why
KUEUE_ADMITTED: Final = "Admitted"
PREEMPTED: Final = "Preempted"  # Kueue took the quota back (preemption, eviction): the job waits again
POD_DISRUPTED: Final = "PodDisrupted"  # eviction, node drain, preemption: not counted as a failure
POD_BOUND: Final = "PodBound"
WAITING_FOR_NODE: Final = "WaitingForNode"
BACKOFF: Final = "BackoffWaiting"
JOB_SUSPENDED: Final = "JobSuspended"
JOB_RESUMED: Final = "JobResumed"
COMPLETED: Final = "Completed"
INVALID_INPUT: Final = "InvalidInput"  # trainer exit code 2: retrying cannot help
BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
POD_FAILED: Final = "PodFailed"
POD_LOST: Final = "PodLost"
TRAINER_JOB_LOST: Final = "TrainerJobLost"  # the trainer Job was deleted behind the operator's back
OOM_KILLED: Final = "OOMKilled"
PROFILE_VIOLATION: Final = "ProfileViolation"  # the namespace's FineTuneProfile forbids the job (now)
QUOTA_EXCEEDED: Final = "QuotaExceeded"  # a ResourceQuota refused the trainer pod: the job waits
SECRET_FORBIDDEN: Final = "SecretForbidden"  # the operator may not read the namespace's Secrets (RBAC)
ENDPOINT_NOT_ALLOWED: Final = "EndpointNotAllowed"  # storage or hub outside the profile's (operator's) list

# Waiting reasons that need someone to act (a Secret to create, a spec or cluster to change): Stalled.
# The others (a dataset or claim not there yet, a quota, a retry's backoff) resolve on their own.
NEEDS_INTERVENTION: Final = frozenset(
    {
        INVALID_SPEC,
        SECRET_NOT_FOUND,
        SECRET_KEY_MISSING,
        WEB_IDENTITY_REFUSED,
        INSUFFICIENT_GPU_MEMORY,
        NO_GPU_NODES,
        PROFILE_VIOLATION,
        ENDPOINT_NOT_ALLOWED,
        SECRET_FORBIDDEN,
    }
)

MAX_MESSAGE: Final = 1024


def secret_forbidden(field: str, name: str, namespace: str) -> str:
    """The message of a Secret the operator's RBAC does not let it read (cluster mode, rbac.secrets
    onboarded: the namespace was not onboarded)."""
    return (
        f"{field} {name!r}: the operator may not read Secrets in namespace {namespace} (forbidden); "
        f"onboard the namespace: kubeft onboard {namespace} --profile <profile>, or list it in the chart's "
        "onboardedNamespaces (watchNamespaces in namespaced mode)"
    )


def cap(message: str, limit: int = MAX_MESSAGE) -> str:
    """Shortens a message for a condition or an event."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Returns ``conditions`` with ``type_`` set; lastTransitionTime moves only when the status changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in conditions]
    for c in out:
        if c.get("type") == type_:
            if c.get("status") != value:
                c["lastTransitionTime"] = now
            c.update(status=value, reason=reason, message=cap(message), observedGeneration=generation)
            return out
    out.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": cap(message),
            "lastTransitionTime": now,
            "observedGeneration": generation,
        }
    )
    return out


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of ``type_``, or None."""
    return next((c for c in conditions if c.get("type") == type_), None)


def kstatus(phase: str, reason: str, message: str) -> dict[str, tuple[bool, str, str]]:
    """Ready, Reconciling and Stalled of a job in ``phase``, entered for ``reason`` (``message``).

    Succeeded: Ready. Failed: Stalled. Suspended: none of them true. Pending for a reason that
    needs someone (NEEDS_INTERVENTION): Stalled. Anything else: Reconciling (placed, training,
    or waiting for something that will come).
    """
    ready = phase == "Succeeded"
    stalled = phase == "Failed" or (phase in ("Pending", "Queued") and reason in NEEDS_INTERVENTION)
    reconciling = not (ready or stalled or phase == "Suspended")
    return {
        READY: (ready, reason, message),
        RECONCILING: (reconciling, reason, message),
        STALLED: (stalled, reason, message),
    }
