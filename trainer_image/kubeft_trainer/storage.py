"""Object storage behind one small interface: S3/MinIO (`s3://`), the Hugging Face Hub (`hf://`), local paths.

`ObjectStore` is a bucket: keys in, files out. The job's own bucket (checkpoints, artifacts)
is an `S3Store` when spec.storage.endpoint is an http(s) URL and a `LocalStore` (a directory
per bucket) otherwise, so checkpoint and export code is the same for a pod and a laptop.
Sources (model, dataset) are fetched by URI with `fetch`.

Every call that crosses the network goes through `retry`: exponential backoff with jitter,
forever or until a deadline, and only for errors that can go away (connection refused,
timeouts, 5xx); a wrong key or a missing bucket fails at once.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubeft import contract, webidentity
from kubeft_trainer.errors import InvalidInputError, StorageError, WebIdentityRefusedError

log = logging.getLogger(__name__)

T = TypeVar("T")
# progress(bytes_done, bytes_total, files_done, files_total) of a download
Progress = Callable[[int, int, int, int], None]

# S3 error codes that retrying cannot fix.
PERMANENT_S3_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "NoSuchKey",
        "InvalidBucketName",
        "AllAccessDisabled",
    }
)


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: key relative to the bucket, size in bytes."""

    key: str
    size: int


class ObjectStore(Protocol):
    """A bucket. Keys use '/' separators and never start with '/'."""

    bucket: str

    def uri(self, key: str) -> str:
        """A URI users can paste (s3://bucket/key or file:///dir/bucket/key)."""
        ...

    def upload_file(self, local: Path, key: str) -> None: ...

    def download_file(self, key: str, local: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix` (recursive)."""
        ...

    def delete(self, key: str) -> None: ...


# --- retry -------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for storage calls. deadline_seconds None: retry forever (checkpoints are never given up)."""

    initial_seconds: float = 1.0
    max_seconds: float = 30.0
    deadline_seconds: float | None = None


def is_permanent(exc: BaseException) -> bool:
    """True for errors that another attempt cannot fix."""
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        return exc.code in PERMANENT_S3_CODES
    return isinstance(exc, (InvalidInputError, FileNotFoundError, PermissionError, IsADirectoryError))


def retry(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    on_retry: Callable[[BaseException], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Calls `fn` until it succeeds; backs off on transient errors; raises StorageError past the deadline."""
    start = time.monotonic()
    delay = policy.initial_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if isinstance(exc, webidentity.WebIdentityError) and exc.permanent:
                raise WebIdentityRefusedError(f"{what}: {exc}") from exc
            if is_permanent(exc):
                raise
            elapsed = time.monotonic() - start
            if (policy.deadline_seconds is not None and elapsed >= policy.deadline_seconds) or (
                should_stop is not None and should_stop()
            ):
                raise StorageError(
                    f"{what} failed after {attempt} attempts over {elapsed:.0f}s: {exc}"
                ) from exc
            sleep = min(delay, policy.max_seconds) * (0.5 + random.random() / 2)
            log.warning("%s failed (attempt %d: %s); retrying in %.1fs", what, attempt, _short(exc), sleep)
            if on_retry is not None:
                on_retry(exc)
            time.sleep(sleep)
            delay = min(delay * 2, policy.max_seconds)


def _short(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line: it ends up in a condition
    return text if len(text) < 200 else text[:197] + "..."


# --- stores ------------------------------------------------------------------


class LocalStore:
    """A bucket as a directory: <root>/<bucket>/<key>. Writes go through a temp file and a rename."""

    def __init__(self, root: Path, bucket: str) -> None:
        self.root = root
        self.bucket = bucket
        self.base = root / bucket

    def _path(self, key: str) -> Path:
        return self.base / key

    def uri(self, key: str) -> str:
        uri = self._path(key).resolve().as_uri()
        return uri + "/" if key.endswith("/") else uri

    def upload_file(self, local: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(local, tmp)
        tmp.replace(dest)

    def download_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), local)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(dest)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        if not self.base.exists():
            return out
        for path in sorted(self.base.rglob("*")):
            if path.is_file() and not path.name.endswith(".part"):
                key = path.relative_to(self.base).as_posix()
                if key.startswith(prefix):
                    out.append(ObjectInfo(key, path.stat().st_size))
        return out

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # tidy empty directories up to the bucket
        parent = path.parent
        while parent != self.base and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


class S3Store:
    """A bucket on S3/MinIO through the `minio` client."""

    def __init__(self, client: Any, bucket: str, endpoint: str) -> None:
        self.client = client
        self.bucket = bucket
        self.endpoint = endpoint

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def upload_file(self, local: Path, key: str) -> None:
        self.client.fput_object(self.bucket, key, str(local))

    def download_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.client.fget_object(self.bucket, key, str(local))

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes | None:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        try:
            return bytes(resp.read())
        finally:
            resp.close()
            resp.release_conn()

    def list(self, prefix: str) -> list[ObjectInfo]:
        return [
            ObjectInfo(o.object_name, int(o.size or 0))
            for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if not o.is_dir
        ]

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)


def minio_client(endpoint: str, env: dict[str, str] | None = None) -> Any:
    """A Minio client for an http(s) endpoint, with the pod's credentials chain:

    static keys (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, from the job's Secret) when set, else
    web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE: the projected ServiceAccount token
    exchanged through STS AssumeRoleWithWebIdentity at AWS_ENDPOINT_URL_STS or the storage endpoint,
    renewed before the keys expire), else anonymous.

    Short connect timeouts and few urllib3 retries: our own `retry` does the patient waiting,
    with logs and metrics, instead of a library blocking for minutes.
    """
    import urllib3
    from minio import Minio

    env = dict(os.environ) if env is None else env
    if "://" not in endpoint:
        raise InvalidInputError(f"spec.storage.endpoint {endpoint!r}: expected http(s)://host:port")
    scheme, rest = endpoint.split("://", 1)
    if scheme not in ("http", "https"):
        raise InvalidInputError(f"spec.storage.endpoint {endpoint!r}: scheme must be http or https")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=4,
    )
    access = env.get(contract.ENV_S3_ACCESS_KEY)
    secret = env.get(contract.ENV_S3_SECRET_KEY)
    session = "kubeft-trainer-{}-{}".format(
        env.get(contract.ENV_JOB_NAMESPACE, "local"), env.get(contract.ENV_JOB_NAME, "run")
    )
    provider = None if access and secret else webidentity.provider_from_env(endpoint, env, session)
    if provider is not None:
        log.info(
            "storage credentials: web identity, role %s through STS at %s (token %s)",
            provider.role_arn,
            provider.endpoint,
            env.get(webidentity.ENV_TOKEN_FILE),
        )
        return Minio(rest.rstrip("/"), credentials=provider, secure=scheme == "https", http_client=http)
    if not access or not secret:
        log.warning(
            "%s / %s not set: talking to %s anonymously",
            contract.ENV_S3_ACCESS_KEY,
            contract.ENV_S3_SECRET_KEY,
            endpoint,
        )
    return Minio(
        rest.rstrip("/"),
        access_key=access or None,
        secret_key=secret or None,
        secure=scheme == "https",
        http_client=http,
    )


class Storage:
    """The stores of one run: the job's bucket plus source fetching from any URI."""

    def __init__(
        self, endpoint: str | None, bucket: str, local_root: Path, policy: RetryPolicy | None = None
    ):
        self.endpoint = endpoint
        self.policy = policy or RetryPolicy()
        self.local_root = local_root
        self._client: Any = None
        self.job_store: ObjectStore = self.store(bucket)

    @property
    def is_s3(self) -> bool:
        return bool(self.endpoint) and not str(self.endpoint).startswith("file://")

    def store(self, bucket: str) -> ObjectStore:
        """The bucket `bucket` on the job's endpoint (or under the local root)."""
        if self.is_s3:
            if self._client is None:
                self._client = minio_client(str(self.endpoint))
            return S3Store(self._client, bucket, str(self.endpoint))
        root = Path(str(self.endpoint)[len("file://") :]) if self.endpoint else self.local_root
        return LocalStore(root, bucket)

    def fetch(self, uri: str, dest: Path, what: str, progress: Progress | None = None) -> Path:
        """Makes `uri` available locally and returns the local path (a file or a directory).

        `progress(bytes_done, bytes_total, files_done, files_total)` is called before and after
        every file an s3:// source downloads.

        s3://bucket/key → the object, or every object under the prefix; hf://org/name[@rev]
        → a Hub snapshot (hf://datasets/org/name for a dataset repo); pvc://claim/path → the path
        in the claim, which the operator mounted read-only at $KUBEFT_PVC_ROOT/claim; anything
        else is a local path (or file://). Missing sources are InvalidInputError: a retry cannot
        create them.
        """
        if uri.startswith("s3://"):
            return self._fetch_s3(uri, dest, what, progress or (lambda *_: None))
        if uri.startswith("hf://"):
            return self._fetch_hf(uri, dest, what)
        if uri.startswith("pvc://"):
            return self._pvc_path(uri, what)
        path = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
        if not path.exists():
            raise InvalidInputError(f"{what} {uri}: no such file or directory")
        return path

    @staticmethod
    def _pvc_path(uri: str, what: str) -> Path:
        """A pvc:// source read in place from its mounted claim (nothing is copied)."""
        claim = contract.pvc_claim(uri)
        rel = uri[len("pvc://") :].partition("/")[2].strip("/")
        if not claim or not rel:
            raise InvalidInputError(f"{what} {uri}: expected pvc://<claim>/<path>")
        mount = Path(os.environ.get(contract.ENV_PVC_ROOT, contract.PVC_ROOT)) / claim
        if not mount.is_dir():
            raise InvalidInputError(
                f"{what} {uri}: the claim {claim} is not mounted at {mount} (the operator mounts the "
                "claims of pvc:// sources; is this pod the operator's?)"
            )
        path = mount / rel
        if not path.exists():
            raise InvalidInputError(f"{what} {uri}: no such file or directory in the claim {claim}")
        return path

    def _fetch_s3(self, uri: str, dest: Path, what: str, progress: Progress) -> Path:
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise InvalidInputError(f"{what} {uri}: expected s3://bucket/key")
        if not self.is_s3:
            raise InvalidInputError(f"{what} {uri}: an s3:// source needs spec.storage.endpoint")
        store = self.store(bucket)
        objects = retry(lambda: store.list(key), f"listing {uri}", self._bounded())
        exact = [o for o in objects if o.key == key]
        if exact:
            target = dest / Path(key).name
            progress(0, exact[0].size, 0, 1)
            retry(lambda: store.download_file(key, target), f"downloading {uri}", self._bounded())
            progress(exact[0].size, exact[0].size, 1, 1)
            return target
        prefix = key if key.endswith("/") or not key else key + "/"
        under = [o for o in objects if o.key.startswith(prefix)]
        if not under:
            raise InvalidInputError(f"{what} {uri}: no such object or prefix in bucket {bucket}")
        total, done = sum(o.size for o in under), 0
        progress(0, total, 0, len(under))
        for n, obj in enumerate(under, 1):
            rel = obj.key[len(prefix) :]
            target = dest / rel
            retry(
                lambda o=obj, t=target: store.download_file(o.key, t),  # type: ignore[misc]
                f"downloading s3://{bucket}/{obj.key}",
                self._bounded(),
            )  # type: ignore[misc]
            done += obj.size
            progress(done, total, n, len(under))
        log.info("fetched %s: %d files, %d bytes", uri, len(under), sum(o.size for o in under))
        return dest

    def _fetch_hf(self, uri: str, dest: Path, what: str) -> Path:
        from huggingface_hub import snapshot_download

        name = uri[len("hf://") :]
        repo_type = "model"
        if name.startswith("datasets/") or what.startswith("spec.dataset"):
            repo_type, name = "dataset", name.removeprefix("datasets/")
        name, _, split = name.partition(":")
        repo, _, revision = name.partition("@")
        try:
            path = snapshot_download(
                repo_id=repo,
                revision=revision or None,
                repo_type=repo_type,
                local_dir=str(dest),
                token=os.environ.get(contract.ENV_HF_TOKEN) or None,
            )
        except Exception as exc:
            text = _short(exc)
            token = os.environ.get(contract.ENV_HF_TOKEN)
            if "GatedRepoError" in text or " 401 " in text or " 403 " in text:
                text += (
                    " (gated: accept the model's terms on the hub with the account of the token in hfToken)"
                    if token
                    else " (gated or private: put an hfToken in the credentials Secret)"
                )
            raise InvalidInputError(
                f"{what} {uri}: cannot download from the Hugging Face Hub: {text}"
            ) from exc
        if split:  # the split's data file, not the download's bookkeeping under .cache/
            files = visible_files(Path(path), f"*{split}*")
            if not files:
                raise InvalidInputError(f"{what} {uri}: no files for split {split!r} in the repository")
            return files[0]
        return Path(path)

    def _bounded(self) -> RetryPolicy:
        # Downloads at start-up wait a while for storage to come back, but not forever.
        return RetryPolicy(self.policy.initial_seconds, self.policy.max_seconds, deadline_seconds=600.0)


def visible_files(root: Path, pattern: str = "*") -> list[Path]:
    """Files under `root` matching `pattern`, sorted, leaving out hidden files and folders (.cache/, ...)."""
    return sorted(
        p
        for p in root.rglob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def dir_files(root: Path) -> Iterable[Path]:
    """Files under `root`, sorted, relative paths."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
