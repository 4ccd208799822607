"""Checkpoints in object storage: upload in the background, manifest last, keep the newest K, resume.

Layout under the job's bucket::

    <namespace>/<job>/checkpoints/step-<N>/adapter_model.safetensors   (or model weights for full)
                                          /optimizer.pt /scheduler.pt /rng_state.pth
                                          /trainer_state.json /training_args.bin /tokenizer files
                                          /manifest.json   ← written last

The Trainer writes ``checkpoint-<N>/`` locally (transformers' format, so resuming is
``trainer.train(resume_from_checkpoint=dir)`` and restores weights, optimizer, scheduler,
RNG and the data position). An `Uploader` thread copies it to storage with retries while
training goes on; only when every file is there does it write ``manifest.json`` (file list,
sizes, sha256). A checkpoint without a manifest is never resumed from. After each complete
upload the oldest complete checkpoints beyond ``keep`` are deleted (manifest first, so a
half-deleted checkpoint is never taken for a complete one), and local copies older than
the newest uploaded one are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubeft import contract
from kubeft_trainer.errors import StorageError
from kubeft_trainer.storage import ObjectStore, RetryPolicy, dir_files, retry

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "kubeft.io/checkpoint-v1"
LOCAL_PREFIX = "checkpoint-"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
_STEP_DIR = re.compile(r"/checkpoints/step-(\d+)/")


def checkpoints_root(job_root: str) -> str:
    """Key prefix (with trailing slash) under which all step-N checkpoints of a job run live."""
    return f"{job_root}/checkpoints/"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A checkpoint found in storage."""

    step: int
    prefix: str  # key prefix, no trailing slash
    complete: bool


def list_checkpoints(store: ObjectStore, job_root: str) -> list[RemoteCheckpoint]:
    """Every step-N checkpoint of the job run in storage, oldest first, with whether its manifest is there."""
    root = checkpoints_root(job_root)
    steps: dict[int, bool] = {}
    for obj in store.list(root):
        m = _STEP_DIR.search("/" + obj.key)
        if m is None:
            continue
        step = int(m.group(1))
        complete = obj.key.endswith("/" + contract.CHECKPOINT_MANIFEST)
        steps[step] = steps.get(step, False) or complete
    return [
        RemoteCheckpoint(step, contract.checkpoint_prefix(job_root, step), complete)
        for step, complete in sorted(steps.items())
    ]


def read_manifest(store: ObjectStore, prefix: str) -> dict[str, Any] | None:
    raw = store.get_bytes(f"{prefix}/{contract.CHECKPOINT_MANIFEST}")
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


class IncompatibleCheckpoint(ValueError):
    """A checkpoint made by another kind of run (base model, method): resuming from it would be wrong."""


def download_latest(
    store: ObjectStore,
    job_root: str,
    output_dir: Path,
    policy: RetryPolicy,
    expect: Mapping[str, str] | None = None,
    step: int | None = None,
    fits: Callable[[dict[str, Any]], str | None] | None = None,
) -> tuple[int, Path] | None:
    """Downloads the newest complete checkpoint (or ``step``'s) into output_dir/checkpoint-N; None when
    there is none.

    Files are checked against the manifest (size and sha256); a checkpoint that does not match
    is skipped for the next older one. ``expect`` (``method``, ``baseModel``) must equal what the
    manifest recorded, else :class:`IncompatibleCheckpoint`: a LoRA adapter trained on another base
    model, or full weights, must not be loaded into this run. ``fits(manifest)`` says why this run
    cannot resume it otherwise (FSDP shards of another world size), or None.
    """
    found = retry(lambda: list_checkpoints(store, job_root), "listing checkpoints", policy)
    for ckpt in reversed([c for c in found if c.complete and (step is None or c.step == step)]):
        manifest = retry(lambda c=ckpt: read_manifest(store, c.prefix), "reading manifest", policy)  # type: ignore[misc]
        if manifest is None:
            continue
        differ = {k: (manifest.get(k), v) for k, v in (expect or {}).items() if manifest.get(k) != v}
        if differ:
            was = ", ".join(f"{k} {a!r}" for k, (a, _) in differ.items())
            now = ", ".join(f"{k} {b!r}" for k, (_, b) in differ.items())
            raise IncompatibleCheckpoint(
                f"{store.uri(ckpt.prefix + '/')} was trained with {was}; this job has {now}"
            )
        why = fits(manifest) if fits is not None else None
        if why:
            raise IncompatibleCheckpoint(f"{store.uri(ckpt.prefix + '/')} {why}")
        dest = output_dir / f"{LOCAL_PREFIX}{ckpt.step}"
        if dest.exists():
            shutil.rmtree(dest)
        ok = True
        for entry in manifest["files"]:
            local = dest / entry["path"]
            key = f"{ckpt.prefix}/{entry['path']}"
            retry(lambda k=key, p=local: store.download_file(k, p), f"downloading {key}", policy)  # type: ignore[misc]
            if local.stat().st_size != entry["bytes"] or sha256_file(local) != entry["sha256"]:
                log.warning("checkpoint step-%d: %s does not match its manifest; skipping it", ckpt.step, key)
                ok = False
                break
        if ok:
            log.info("resuming from %s (step %d)", store.uri(ckpt.prefix + "/"), ckpt.step)
            return ckpt.step, dest
    return None


@dataclass
class UploadResult:
    """A checkpoint that reached storage completely."""

    step: int
    uri: str
    bytes: int
    seconds: float


class Uploader:
    """Uploads local checkpoints in a background thread, one at a time, oldest first.

    Retries forever while training goes on (storage may be away for a while); `flush`
    waits for everything queued and raises StorageError if its deadline passes, leaving
    the local copy in place.
    """

    def __init__(
        self,
        store: ObjectStore,
        job_root: str,
        keep: int,
        policy: RetryPolicy | None = None,
        on_uploaded: Callable[[UploadResult], None] | None = None,
        on_retry: Callable[[BaseException], None] | None = None,
        extra_manifest: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.job_root = job_root
        self.keep = keep
        self.policy = policy or RetryPolicy()
        self.on_uploaded = on_uploaded
        self.on_retry = on_retry
        self.extra_manifest = extra_manifest or {}
        self.uploaded: list[UploadResult] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[int, Path, list[dict[str, Any]]] | None] = queue.Queue()
        self._abandon = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit(self, step: int, local_dir: Path, others: list[dict[str, Any]] | None = None) -> None:
        """Queues the Trainer's checkpoint directory for `step`.

        `others`: manifest entries of files other nodes already uploaded to the step's prefix
        (FSDP shards, :func:`upload_part`): listed in the manifest, never taken for stale.
        """
        log.info("checkpoint step-%d saved locally; queued for upload", step)
        self._queue.put((step, local_dir, list(others or [])))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                step, local_dir, others = item
                try:
                    self._upload(step, local_dir, others)
                except Exception as exc:
                    log.error("checkpoint step-%d was not uploaded: %s (kept at %s)", step, exc, local_dir)
                    self.error = exc
            finally:
                self._queue.task_done()

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        return retry(fn, what, self.policy, on_retry=self.on_retry, should_stop=lambda: self._abandon)

    def _upload(self, step: int, local_dir: Path, others: list[dict[str, Any]] | None = None) -> None:
        t0 = time.monotonic()
        prefix = contract.checkpoint_prefix(self.job_root, step)
        # A previous run may have left a partial upload of this step: clear it, manifest first.
        theirs = {f"{prefix}/{f['path']}" for f in others or []}
        stale = self._call(lambda: self.store.list(prefix + "/"), f"listing {prefix}")
        stale = [o for o in stale if o.key not in theirs]
        for obj in sorted(stale, key=lambda o: not o.key.endswith(contract.CHECKPOINT_MANIFEST)):
            self._call(lambda k=obj.key: self.store.delete(k), f"deleting stale {obj.key}")  # type: ignore[misc]
        files = list(others or [])
        total = sum(int(f["bytes"]) for f in files)
        for rel in dir_files(local_dir):
            path = local_dir / rel
            key = f"{prefix}/{rel.as_posix()}"
            size = path.stat().st_size
            files.append({"path": rel.as_posix(), "bytes": size, "sha256": sha256_file(path)})
            self._call(lambda p=path, k=key: self.store.upload_file(p, k), f"uploading {key}")  # type: ignore[misc]
            total += size
        manifest = {
            "format": MANIFEST_FORMAT,
            "step": step,
            "run": self.job_root,
            "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
            "totalBytes": total,
            "files": files,
            **self.extra_manifest,
        }
        body = json.dumps(manifest, indent=2).encode()
        manifest_key = f"{prefix}/{contract.CHECKPOINT_MANIFEST}"
        self._call(lambda: self.store.put_bytes(manifest_key, body), f"writing {manifest_key}")
        result = UploadResult(step, self.store.uri(prefix + "/"), total, time.monotonic() - t0)
        self.uploaded.append(result)
        log.info(
            "checkpoint step-%d uploaded to %s (%d bytes, %.1fs)", step, result.uri, total, result.seconds
        )
        if self.on_uploaded is not None:
            self.on_uploaded(result)
        self._prune_remote()
        self._prune_local(step, local_dir)

    def _prune_remote(self) -> None:
        found = self._call(lambda: list_checkpoints(self.store, self.job_root), "listing checkpoints")
        complete = [c for c in found if c.complete]
        if not complete:
            return
        newest = complete[-1].step
        doomed = [c for c in complete[: -self.keep]] + [
            c for c in found if not c.complete and c.step < newest
        ]
        for ckpt in doomed:
            objects = self._call(lambda c=ckpt: self.store.list(c.prefix + "/"), f"listing {ckpt.prefix}")  # type: ignore[misc]
            for obj in sorted(objects, key=lambda o: not o.key.endswith(contract.CHECKPOINT_MANIFEST)):
                self._call(lambda k=obj.key: self.store.delete(k), f"deleting {obj.key}")  # type: ignore[misc]
            log.info("pruned checkpoint step-%d", ckpt.step)

    @staticmethod
    def _prune_local(step: int, local_dir: Path) -> None:
        for other in local_dir.parent.glob(f"{LOCAL_PREFIX}*"):
            suffix = other.name[len(LOCAL_PREFIX) :]
            if suffix.isdigit() and int(suffix) < step:
                shutil.rmtree(other, ignore_errors=True)

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every queued checkpoint is uploaded; StorageError on timeout or failure."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                self._abandon = True
                raise StorageError(
                    f"{self._queue.unfinished_tasks} checkpoint(s) not uploaded after {timeout:.0f}s; "
                    "local copies are kept in the work directory"
                )
            time.sleep(0.1)
        if self.error is not None:
            raise StorageError(f"checkpoint upload failed: {self.error}")

    def close(self) -> None:
        """Stops the thread after the queue drains (call flush first to wait for uploads)."""
        self._queue.put(None)
        self._thread.join(timeout=5)


def upload_part(
    store: ObjectStore, job_root: str, step: int, local_dir: Path, policy: RetryPolicy | None = None
) -> list[dict[str, Any]]:
    """Uploads one node's files of a sharded (FSDP) checkpoint; returns their manifest entries.

    Another node's rank 0 writes the manifest, with these entries, once its own files are up.
    Local copies of older checkpoints are removed once this one is up.
    """
    prefix = contract.checkpoint_prefix(job_root, step)
    files = []
    for rel in dir_files(local_dir):
        path = local_dir / rel
        key = f"{prefix}/{rel.as_posix()}"
        retry(lambda p=path, k=key: store.upload_file(p, k), f"uploading {key}", policy or RetryPolicy())  # type: ignore[misc]
        files.append({"path": rel.as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    log.info("checkpoint step-%d: this node's %d file(s) uploaded", step, len(files))
    Uploader._prune_local(step, local_dir)
    return files
