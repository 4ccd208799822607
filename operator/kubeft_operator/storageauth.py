"""The operator's own storage reads of a web-identity job, done as that job's identity.

A job with ``spec.storage.roleArn`` (no Secret) gets no operator-wide keys: to check its dataset,
read its model's config.json or delete its run's objects (spec.cleanup), the operator asks the
TokenRequest API for a short-lived token of the job's trainer ServiceAccount, with the audience
the trainer's projected token has, and exchanges it through STS for the role's keys, exactly as
the trainer does. What the job could not read, the operator does not read for it.

Keys are cached per (namespace, ServiceAccount, role, STS endpoint, audience) until a few
minutes before they expire; the model-config and dataset caches are keyed by that identity
(``identity`` in the credentials mapping), not by the changing keys.
"""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import webidentity

from . import resources
from .api import FineTuneJob
from .settings import Settings

TOKEN_SECONDS = 600  # the TokenRequest API's minimum; the token is used once, at once

_lock = threading.Lock()
_providers: dict[tuple[str, str, str, str, str], webidentity.WebIdentityProvider] = {}


class StorageIdentityError(RuntimeError):
    """The job's identity could not be turned into storage keys; the message is for its condition.

    ``permanent``: STS refused (asking again gets the same answer until someone fixes the role, its
    trust or the audience); otherwise it could not be asked (unreachable, the API server refused a
    token).
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def identity(job: FineTuneJob, settings: Settings) -> str:
    """What the caches are keyed by for a web-identity job: whose token, for which role, where."""
    endpoint = webidentity.sts_endpoint(
        job.spec.storage.endpoint or settings.default_storage_endpoint,
        {webidentity.ENV_STS_ENDPOINT: settings.web_identity_sts_endpoint},
    )
    return "\0".join(
        (
            "webIdentity",
            job.namespace,
            resources.trainer_name(job),
            job.spec.storage.role_arn or "",
            endpoint,
            settings.web_identity_audience,
        )
    )


def _token(core: client.CoreV1Api, job: FineTuneJob, settings: Settings) -> str:
    """A token of the job's trainer ServiceAccount (created here if the job has none yet)."""
    name = resources.trainer_name(job)
    req = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[settings.web_identity_audience], expiration_seconds=TOKEN_SECONDS
        )
    )
    try:
        return str(core.create_namespaced_service_account_token(name, job.namespace, req).status.token)
    except ApiException as exc:
        if exc.status != 404:
            raise StorageIdentityError(
                f"cannot get a token of ServiceAccount {job.namespace}/{name}: {exc.status} {exc.reason}"
            ) from exc
    # the trainer's ServiceAccount is made with the pod's other objects; the check comes first
    try:
        core.create_namespaced_service_account(job.namespace, resources.get_service_account(job, None))
    except ApiException as exc:
        if exc.status != 409:
            raise
    return str(core.create_namespaced_service_account_token(name, job.namespace, req).status.token)


def credentials(core: client.CoreV1Api, job: FineTuneJob, settings: Settings) -> dict[str, str]:
    """The role's keys for the job's own identity: accessKey, secretKey, sessionToken and identity.

    Raises :class:`StorageIdentityError` when STS refuses (wrong audience, unknown role, a role
    that does not trust this issuer) or cannot be reached.
    """
    key_text = identity(job, settings)
    _, _, _, role, endpoint, audience = key_text.split("\0")
    key = (job.namespace, resources.trainer_name(job), role, endpoint, audience)
    with _lock:
        provider = _providers.get(key)
        if provider is None:
            provider = _providers[key] = webidentity.WebIdentityProvider(
                lambda: _token(core, job, settings),
                endpoint,
                role,
                resources.session_name(job, "operator"),
                timeout=settings.model_config_timeout_seconds,
            )
    try:
        creds: Any = provider.retrieve()
    except ApiException as exc:
        raise StorageIdentityError(
            f"cannot get a token of ServiceAccount {job.namespace}/{resources.trainer_name(job)}: "
            f"{exc.status} {exc.reason}"
        ) from exc
    except webidentity.WebIdentityError as exc:
        raise StorageIdentityError(
            f"{exc}; check spec.storage.roleArn and that the role trusts this cluster's "
            f"service-account issuer for audience {audience!r} (the operator's webIdentityAudience)",
            permanent=exc.permanent,
        ) from exc
    return {
        "accessKey": creds.access_key,
        "secretKey": creds.secret_key,
        "sessionToken": creds.session_token or "",
        "identity": key_text,
    }


def clear_cache() -> None:
    """Forgets the cached keys (tests)."""
    with _lock:
        _providers.clear()
