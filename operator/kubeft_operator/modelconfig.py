"""What the operator reads from storage before it places a pod.

* A model's config.json for the VRAM estimate: from S3/MinIO, the Hugging Face hub, or the spec.
  Failures raise :class:`ModelConfigError` with a message meant for the job's ``Validated``
  condition; the operator never crashes on an unreadable model.
* Whether the job's ``s3://`` datasets exist (:func:`dataset_problem`), so that a job applied
  before its data (a GitOps repository, a pipeline) waits with a condition instead of starting a
  GPU pod that can only fail.

Results are cached per source and credentials (a digest of the Secret's keys, or a web-identity
job's identity: its ServiceAccount, role and STS, kubeft_operator.storageauth) for a few minutes
(the operator asks every time it places a pod, and a model's shape does not change under a fixed
source); a missing dataset is not cached, so its upload is seen on the next tick. Keyed by the
credentials too: what one tenant's keys could read is never vouched for another's.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeft import estimate as est

from . import conditions as cond
from .api import FineTuneJobSpec

CACHE_SECONDS = 300.0
_cache: dict[tuple[str, str, str], tuple[float, est.ModelShape]] = {}


def credentials_key(credentials: Mapping[str, str]) -> str:
    """A digest of the storage Secret's keys: what the caches are keyed by, besides the source.

    A result that one namespace's credentials could read is never handed to a job whose own
    credentials were not asked (another tenant, or the same one after a key rotation).
    """
    if credentials.get("identity"):  # web identity: the keys change with every session, the identity not
        return hashlib.sha256(credentials["identity"].encode()).hexdigest()
    text = "\0".join(f"{k}={credentials.get(k, '')}" for k in ("accessKey", "secretKey", "hfToken"))
    return hashlib.sha256(text.encode()).hexdigest()


_lock = threading.Lock()


class ModelConfigError(RuntimeError):
    """The model's config.json could not be read or understood (message says why and what to do)."""


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    return bucket, key


def config_key(prefix: str) -> str:
    """Object key of config.json under a model prefix (or the key itself if it names a .json file)."""
    if prefix.endswith(".json"):
        return prefix
    prefix = prefix.strip("/")
    return f"{prefix}/config.json" if prefix else "config.json"


def _parse(raw: bytes, where: str) -> est.ModelShape:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelConfigError(f"{where} is not a JSON object")
    try:
        return est.ModelShape.from_config(data)
    except est.EstimateError as exc:
        raise ModelConfigError(f"{where}: {exc}; set spec.model.architecture to estimate anyway") from exc


def _s3_client(
    endpoint: str, access_key: str, secret_key: str, timeout: float, session_token: str | None = None
) -> Any:
    """A MinIO/S3 client with short timeouts and one retry (the operator must not hang on storage)."""
    import urllib3
    from minio import Minio

    url = urllib.parse.urlparse(endpoint)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=urllib3.Retry(total=1, backoff_factor=0.2),
    )
    return Minio(
        url.netloc,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token or None,
        secure=url.scheme == "https",
        http_client=http,
    )


def delete_prefix(
    endpoint: str,
    access_key: str,
    secret_key: str,
    bucket: str,
    prefix: str,
    timeout: float,
    session_token: str | None = None,
) -> int:
    """Deletes every object under ``prefix`` in ``bucket``; returns how many there were."""
    client = _s3_client(endpoint, access_key, secret_key, timeout, session_token)
    names = [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True)]
    if names:
        from minio.deleteobjects import DeleteObject

        errors = list(client.remove_objects(bucket, [DeleteObject(n) for n in names]))
        if errors:
            raise OSError(f"{len(errors)} of {len(names)} objects not deleted: {errors[0]}")
    return len(names)


def read_s3(
    uri: str,
    endpoint: str,
    access_key: str,
    secret_key: str,
    timeout: float,
    session_token: str | None = None,
) -> est.ModelShape:
    """config.json under an ``s3://`` model source."""
    from minio.error import S3Error

    client = _s3_client(endpoint, access_key, secret_key, timeout, session_token)
    bucket, prefix = split_s3(uri)
    key = config_key(prefix)
    where = f"s3://{bucket}/{key}"
    try:
        resp = client.get_object(bucket, key)
        try:
            raw = resp.read()
        finally:
            resp.close()
            resp.release_conn()
    except S3Error as exc:
        raise ModelConfigError(f"cannot read {where} from {endpoint}: {exc.code}") from exc
    except Exception as exc:  # network errors of every kind: the message goes to a condition
        raise ModelConfigError(f"cannot reach {endpoint} to read {where}: {type(exc).__name__}") from exc
    return _parse(raw, where)


def read_hf(uri: str, hf_endpoint: str, token: str | None, timeout: float) -> est.ModelShape:
    """config.json of an ``hf://org/name[@revision]`` model from the hub."""
    repo, _, revision = uri.removeprefix("hf://").partition("@")
    rev = urllib.parse.quote(revision or "main", safe="")
    url = f"{hf_endpoint.rstrip('/')}/{repo}/resolve/{rev}/config.json"
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        hint = " (gated or private: put hfToken in the credentials Secret)" if exc.code in (401, 403) else ""
        raise ModelConfigError(f"cannot read config.json of {uri}: HTTP {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ModelConfigError(
            f"cannot reach the Hugging Face hub for {uri}; set spec.model.architecture to run without it"
        ) from exc
    return _parse(raw, f"config.json of {uri}")


def model_shape(
    spec: FineTuneJobSpec,
    *,
    endpoint: str,
    credentials: Mapping[str, str],
    hf_endpoint: str,
    timeout: float,
) -> est.ModelShape:
    """The model's architecture: ``spec.model.architecture`` if given, else its config.json.

    ``credentials`` are the decoded keys of the storage Secret (accessKey, secretKey, hfToken), or a
    web-identity job's session keys (accessKey, secretKey, sessionToken, identity).
    """
    if spec.model.architecture is not None:
        return spec.model.architecture.to_shape()
    source = spec.model.source
    # keyed by where it is read from: the hub of an hf:// model (profiles may name a mirror)
    cache_key = (
        source,
        hf_endpoint if source.startswith("hf://") else endpoint,
        credentials_key(credentials),
    )
    with _lock:
        hit = _cache.get(cache_key)
        if hit and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
    shape: est.ModelShape
    if source.startswith("s3://"):
        shape = read_s3(
            source,
            endpoint,
            credentials.get("accessKey", ""),
            credentials.get("secretKey", ""),
            timeout,
            credentials.get("sessionToken"),
        )
    elif source.startswith("hf://"):
        shape = read_hf(source, hf_endpoint, credentials.get("hfToken"), timeout)
    else:
        raise ModelConfigError(
            f"the operator cannot read config.json from {source}; set spec.model.architecture"
        )
    with _lock:
        _cache[cache_key] = (time.monotonic(), shape)
    return shape


_datasets_seen: dict[tuple[str, str, str], float] = {}


@dataclass(frozen=True)
class DatasetProblem:
    """Why a dataset cannot be used yet: a condition reason and a message."""

    reason: str
    message: str


def _s3_source_exists(client: Any, bucket: str, key: str) -> bool:
    """The trainer's rule: ``key`` is an object, or a prefix with objects under ``key/``."""
    from minio.error import S3Error

    if key and not key.endswith("/"):
        try:
            client.stat_object(bucket, key)
            return True
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                raise
    prefix = f"{key.rstrip('/')}/" if key.strip("/") else ""
    return any(True for _ in client.list_objects(bucket, prefix=prefix, recursive=True))


def dataset_problem(
    spec: FineTuneJobSpec, *, endpoint: str, credentials: Mapping[str, str], timeout: float
) -> DatasetProblem | None:
    """Why the job's ``s3://`` training or evaluation dataset cannot be read (None when it can).

    Sources on the Hugging Face hub or local paths are left to the trainer.
    """
    from minio.error import S3Error

    sources = [("spec.dataset.source", spec.dataset.source)]
    if spec.dataset.eval is not None and spec.dataset.eval.source:
        sources.append(("spec.dataset.eval.source", spec.dataset.eval.source))
    client: Any = None
    keys = credentials_key(credentials)
    for what, uri in sources:
        seen = _datasets_seen.get((uri, endpoint, keys))
        if not uri.startswith("s3://") or (seen is not None and time.monotonic() - seen < CACHE_SECONDS):
            continue
        bucket, key = split_s3(uri)
        if client is None:
            client = _s3_client(
                endpoint,
                credentials.get("accessKey", ""),
                credentials.get("secretKey", ""),
                timeout,
                credentials.get("sessionToken"),
            )
        waits = "; the job waits for it and is placed once it exists"
        try:
            if not _s3_source_exists(client, bucket, key):
                return DatasetProblem(
                    cond.DATASET_NOT_FOUND,
                    f"{what} {uri}: no such object or prefix in bucket {bucket}{waits}",
                )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return DatasetProblem(
                    cond.DATASET_NOT_FOUND, f"{what} {uri}: bucket {bucket} does not exist{waits}"
                )
            check = (
                "what the policy of spec.storage.roleArn allows"
                if credentials.get("identity")
                else ("the credentials Secret")
            )
            hint = f" (check {check})" if exc.code in ("AccessDenied", "InvalidAccessKeyId") else ""
            return DatasetProblem(
                cond.DATASET_UNAVAILABLE, f"cannot check {what} {uri} on {endpoint}: {exc.code}{hint}"
            )
        except Exception as exc:  # network errors of every kind: the message goes to a condition
            return DatasetProblem(
                cond.DATASET_UNAVAILABLE,
                f"cannot reach {endpoint} to check {what} {uri}: {type(exc).__name__}",
            )
        with _lock:
            _datasets_seen[(uri, endpoint, keys)] = time.monotonic()
    return None


def clear_cache() -> None:
    """Forgets cached shapes and datasets (tests)."""
    with _lock:
        _cache.clear()
        _datasets_seen.clear()


def shape_to_dict(shape: est.ModelShape) -> dict[str, Any]:
    """The shape as JSON for the trainer config."""
    return {
        "hiddenSize": shape.hidden_size,
        "numLayers": shape.num_layers,
        "numHeads": shape.num_heads,
        "numKvHeads": shape.num_kv_heads,
        "headDim": shape.head_dim,
        "intermediateSize": shape.intermediate_size,
        "vocabSize": shape.vocab_size,
        "tieWordEmbeddings": shape.tie_word_embeddings,
        "modelType": shape.model_type,
    }
