"""Which network endpoints the operator may contact for a job, decided before it contacts any.

The operator itself fetches from a job's storage endpoint (config.json of an ``s3://`` model, the
dataset check, ``spec.cleanup: Delete``) and from a Hugging Face hub (config.json of an ``hf://``
model). Both come from the job or its profile, so without a check a tenant could make the operator
request any URL inside the cluster's network (SSRF). An endpoint must be allowed by:

* the job's FineTuneProfile: ``limits.storageEndpointPrefixes`` and ``limits.hubEndpointPrefixes``;
* the operator-wide ``KUBEFT_ALLOWED_ENDPOINTS`` (comma-separated URL prefixes; empty: any), which
  also covers namespaces without a profile.

Prefixes match at a ``/`` boundary (:func:`kubeft.profile.endpoint_allowed`).
"""

from __future__ import annotations

from kubeft.profile import endpoint_allowed

from .api import FineTuneJob
from .settings import Settings


def storage_endpoint(job: FineTuneJob, settings: Settings) -> str:
    """The storage endpoint the operator talks to for ``job``."""
    return job.spec.storage.endpoint or settings.default_storage_endpoint


def hub_endpoint(job: FineTuneJob, settings: Settings) -> str:
    """The hub the operator reads ``job``'s hf:// model from: its profile's, else the operator's."""
    return job.profile.hub_endpoint(settings.hf_endpoint) if job.profile else settings.hf_endpoint


def _problem(what: str, endpoint: str, job: FineTuneJob, settings: Settings, limit: str) -> str | None:
    profile_prefixes = getattr(job.profile.limits, limit) if job.profile else None
    if profile_prefixes is not None and not endpoint_allowed(endpoint, profile_prefixes):
        camel = "storageEndpointPrefixes" if limit.startswith("storage") else "hubEndpointPrefixes"
        assert job.profile is not None
        return (
            f"{what} {endpoint} is not allowed by FineTuneProfile {job.profile.name} "
            f"({camel}: {', '.join(profile_prefixes)}); the operator did not contact it"
        )
    if settings.allowed_endpoints and not endpoint_allowed(endpoint, settings.allowed_endpoints):
        return (
            f"{what} {endpoint} is not in the operator's allowed endpoints (KUBEFT_ALLOWED_ENDPOINTS: "
            f"{', '.join(settings.allowed_endpoints)}); the operator did not contact it"
        )
    return None


def storage_problem(job: FineTuneJob, settings: Settings) -> str | None:
    """Why the operator must not contact ``job``'s storage endpoint; None when it may."""
    return _problem(
        "the storage endpoint", storage_endpoint(job, settings), job, settings, "storage_endpoint_prefixes"
    )


def problem(job: FineTuneJob, settings: Settings) -> str | None:
    """Why the operator must not contact an endpoint it needs for ``job``; None when it may."""
    found = storage_problem(job, settings)
    if found is None and job.spec.model.source.startswith("hf://") and job.spec.model.architecture is None:
        found = _problem(
            "the Hugging Face hub", hub_endpoint(job, settings), job, settings, "hub_endpoint_prefixes"
        )
    return found
