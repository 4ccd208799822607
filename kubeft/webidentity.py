"""Storage without static keys: a service-account token exchanged through STS for short-lived keys.

The flow of EKS's IAM roles for service accounts (IRSA), spoken by the trainer and the operator:
the pod has a projected service-account token (audience :data:`DEFAULT_AUDIENCE` unless the
operator is told otherwise) in the file ``$AWS_WEB_IDENTITY_TOKEN_FILE`` and a role in
``$AWS_ROLE_ARN``; ``AssumeRoleWithWebIdentity`` at the STS endpoint (``$AWS_ENDPOINT_URL_STS``, else
the storage endpoint itself, which is where MinIO serves STS) turns them into an access key, secret
key and session token that expire. :class:`WebIdentityProvider` is a ``minio`` credentials provider
that renews them before they expire, reading the token file again each time (the kubelet rotates
it), so a client made once works for a run of any length.

STS refusals raise :class:`WebIdentityError` with the STS's own error code and message (a wrong
audience, an unknown role, an expired token): the message is meant for a job's condition.
"""

from __future__ import annotations

import datetime as dt
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from minio.credentials import Credentials
from minio.credentials.providers import Provider

ENV_ROLE_ARN: Final = "AWS_ROLE_ARN"
ENV_TOKEN_FILE: Final = "AWS_WEB_IDENTITY_TOKEN_FILE"
ENV_STS_ENDPOINT: Final = "AWS_ENDPOINT_URL_STS"  # the AWS SDKs' name for a service-specific endpoint
ENV_SESSION_NAME: Final = "AWS_ROLE_SESSION_NAME"

# EKS's audience for IRSA tokens; the local stack's MinIO uses it as its OpenID client ID too
DEFAULT_AUDIENCE: Final = "sts.amazonaws.com"
TOKEN_VOLUME: Final = "kubeft-storage-token"
TOKEN_DIR: Final = "/var/run/secrets/kubeft.io/storage"
TOKEN_FILE: Final = "token"
TOKEN_SECONDS: Final = 3600  # the projected token's lifetime; the kubelet refreshes it at 80%
SESSION_SECONDS: Final = 3600  # asked of STS; it may give less (MinIO: at least 900)
RENEW_BEFORE_SECONDS: Final = 300.0  # renew keys this long before they expire

_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"


class WebIdentityError(RuntimeError):
    """STS refused the exchange (``code``/``message`` are its own), or could not be reached (code None)."""

    def __init__(self, endpoint: str, role_arn: str, code: str | None, message: str, status: int | None):
        self.endpoint = endpoint
        self.role_arn = role_arn
        self.code = code
        self.status = status
        self.sts_message = message
        what = f"{code}: {message}" if code else message
        super().__init__(f"STS AssumeRoleWithWebIdentity at {endpoint} for role {role_arn} failed: {what}")

    @property
    def permanent(self) -> bool:
        """A refusal (4xx): another attempt with the same token and role gets the same answer."""
        return self.status is not None and 400 <= self.status < 500


def sts_endpoint(storage_endpoint: str, env: Mapping[str, str]) -> str:
    """``$AWS_ENDPOINT_URL_STS`` when set, else the storage endpoint (MinIO serves STS on its S3 port)."""
    return (env.get(ENV_STS_ENDPOINT) or storage_endpoint).rstrip("/")


def _find(element: ET.Element, name: str) -> str | None:
    for tag in (_STS_NS + name, name):
        found = element.find(f".//{tag}")
        if found is not None and found.text is not None:
            return found.text.strip()
    return None


def assume_role(
    endpoint: str,
    token: str,
    role_arn: str,
    session_name: str,
    *,
    duration_seconds: int = SESSION_SECONDS,
    timeout: float = 10.0,
) -> Credentials:
    """``AssumeRoleWithWebIdentity``: a ``minio.credentials.Credentials`` with an expiration.

    Raises :class:`WebIdentityError`: with the STS's code and message when it refuses, without a
    code when it cannot be reached.
    """
    import urllib3

    body = urllib.parse.urlencode(
        {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": "2011-06-15",
            "WebIdentityToken": token,
            "RoleArn": role_arn,
            "RoleSessionName": session_name[:64],
            "DurationSeconds": str(duration_seconds),
        }
    )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    try:
        resp = http.request(
            "POST",
            endpoint + "/",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    except urllib3.exceptions.HTTPError as exc:
        raise WebIdentityError(endpoint, role_arn, None, f"cannot reach it: {exc}", None) from exc
    try:
        root = ET.fromstring(resp.data)
    except ET.ParseError:
        root = None
    if resp.status != 200 or root is None:
        code = _find(root, "Code") if root is not None else None
        message = (_find(root, "Message") if root is not None else None) or f"HTTP {resp.status}"
        raise WebIdentityError(endpoint, role_arn, code or f"HTTP{resp.status}", message, resp.status)
    access, secret = _find(root, "AccessKeyId"), _find(root, "SecretAccessKey")
    session, expiration = _find(root, "SessionToken"), _find(root, "Expiration")
    if not (access and secret and session and expiration):
        raise WebIdentityError(endpoint, role_arn, None, "the answer holds no credentials", resp.status)
    expires = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00")).astimezone(dt.UTC)
    # minio's Credentials compares against naive UTC (datetime.utcnow())
    return Credentials(access, secret, session, expires.replace(tzinfo=None))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class WebIdentityProvider(Provider):
    """A ``minio`` credentials provider: STS keys for a token, renewed before they expire.

    ``token`` is called for every exchange (read the file anew: the kubelet rotates it).
    Thread-safe: a client shared by upload threads asks once.
    """

    def __init__(
        self,
        token: Callable[[], str],
        endpoint: str,
        role_arn: str,
        session_name: str,
        *,
        duration_seconds: int = SESSION_SECONDS,
        timeout: float = 10.0,
    ) -> None:
        self._token = token
        self.endpoint = endpoint
        self.role_arn = role_arn
        self.session_name = session_name
        self.duration_seconds = duration_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        self._credentials: Credentials | None = None
        self.exchanges = 0  # how many times STS was asked (tests, logs)

    def _fresh(self) -> bool:
        creds = self._credentials
        if creds is None or creds.expiration is None:
            return False
        return (creds.expiration - _utcnow()).total_seconds() > RENEW_BEFORE_SECONDS

    def retrieve(self) -> Credentials:
        with self._lock:
            if self._credentials is None or not self._fresh():
                self._credentials = assume_role(
                    self.endpoint,
                    self._token(),
                    self.role_arn,
                    self.session_name,
                    duration_seconds=self.duration_seconds,
                    timeout=self.timeout,
                )
                self.exchanges += 1
            return self._credentials


def token_file(path: str | Path) -> Callable[[], str]:
    """Reads the projected token file each time it is called."""

    def read() -> str:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise WebIdentityError(
                "(none)", "(none)", None, f"cannot read the token file {path}: {exc}", None
            ) from exc

    return read


def provider_from_env(
    storage_endpoint: str, env: Mapping[str, str], session_name: str
) -> WebIdentityProvider | None:
    """The pod's web identity (``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``), or None without one."""
    role, path = env.get(ENV_ROLE_ARN), env.get(ENV_TOKEN_FILE)
    if not role or not path:
        return None
    return WebIdentityProvider(
        token_file(path),
        sts_endpoint(storage_endpoint, env),
        role,
        env.get(ENV_SESSION_NAME) or session_name,
    )
