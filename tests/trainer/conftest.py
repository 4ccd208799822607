"""Fixtures for the trainer tests (helpers in trainer_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeft.dev import tinymodel

from .trainer_helpers import ROWS, write_jsonl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with config.json, model.safetensors and the tokenizer files of a tiny Llama."""
    return tinymodel.build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture()
def dataset_file(tmp_path: Path) -> Any:
    """Writes the memorisable dataset in a format: dataset_file('alpaca') → path."""

    def make(fmt: str, repeat: int = 1, extra: list[Any] | None = None) -> Path:
        rows: list[Any] = ROWS[fmt]() * repeat + (extra or [])
        return write_jsonl(tmp_path / f"{fmt}.jsonl", rows)

    return make


@pytest.fixture()
def trainer_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Environment of a local run: termination log in tmp, no cluster, no job config."""
    for var in (
        "KUBEFT_JOB_CONFIG",
        "KUBEFT_JOB_NAME",
        "KUBEFT_JOB_NAMESPACE",
        "KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(var, raising=False)
    term = tmp_path / "termination-log"
    monkeypatch.setenv("KUBEFT_TERMINATION_LOG", str(term))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield term


class Backend:
    """Where a test run keeps checkpoints and artifacts: a local directory or the stack's MinIO."""

    def __init__(self, kind: str, spec: dict[str, Any], env: dict[str, str], store: Any) -> None:
        self.kind = kind
        self.spec = spec  # spec.storage
        self.env = env  # credentials for the trainer process
        self.store = store  # kubeft_trainer.storage.ObjectStore on the same bucket

    def keys(self, prefix: str) -> list[str]:
        return [o.key for o in self.store.list(prefix)]

    def json(self, key: str) -> Any:
        import json

        raw = self.store.get_bytes(key)
        return None if raw is None else json.loads(raw)

    def download(self, prefix: str, dest: Path) -> Path:
        for obj in self.store.list(prefix):
            self.store.download_file(obj.key, dest / obj.key[len(prefix) :].lstrip("/"))
        return dest


def make_backend(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """A local-directory or MinIO (stack) backend; MinIO credentials go into the environment."""
    from kubeft_trainer.storage import LocalStore, S3Store, minio_client

    if kind == "local":
        root = tmp_path / "object-store"
        return Backend(
            "local", {"endpoint": root.as_uri(), "bucket": "kubeft"}, {}, LocalStore(root, "kubeft")
        )
    stack = request.getfixturevalue("stack")
    bucket = request.getfixturevalue("bucket")
    env = {"AWS_ACCESS_KEY_ID": stack.minio_access_key, "AWS_SECRET_ACCESS_KEY": stack.minio_secret_key}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = {"endpoint": stack.minio_endpoint, "bucket": bucket, "credentialsSecret": "minio-creds"}
    return Backend(
        "minio", spec, env, S3Store(minio_client(stack.minio_endpoint, env), bucket, stack.minio_endpoint)
    )


@pytest.fixture(params=["local", pytest.param("minio", marks=pytest.mark.stack)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Checkpoint/artifact storage for a run: parametrized over a local directory and the stack's MinIO."""
    return make_backend(request.param, request, tmp_path, monkeypatch)


@pytest.fixture()
def minio_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Checkpoint/artifact storage in a fresh bucket of the stack's MinIO."""
    return make_backend("minio", request, tmp_path, monkeypatch)
