"""The trainer against the real local stack: MinIO outages, Prometheus scraping, FineTuneJob status."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeft import contract

from .conftest import Backend
from .runs import spawn, wait_for, write_job
from .trainer_helpers import job_spec

pytestmark = [pytest.mark.stack, pytest.mark.slow]
NS, JOB = "test", "tiny"


def complete_steps(backend: Backend, ns: str = NS, job: str = JOB) -> list[int]:
    keys = backend.keys(f"{contract.job_prefix(ns, job)}/checkpoints/")
    return sorted(int(k.split("/step-")[1].split("/")[0]) for k in keys if k.endswith("/manifest.json"))


class PrivateMinio:
    """A MinIO server of this test alone (same binary as the stack), so stopping it disturbs no one else."""

    USER, PASSWORD = "outage-test", "outage-test-secret"

    def __init__(self, binary: Path, data: Path, log: Path) -> None:
        self.binary, self.data, self.log = binary, data, log
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "MINIO_ROOT_USER": self.USER, "MINIO_ROOT_PASSWORD": self.PASSWORD}
        env.update(MINIO_UPDATE="off", MINIO_BROWSER="off")
        argv = [str(self.binary), "server", str(self.data), f"--address=127.0.0.1:{self.port}", "--quiet"]
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, 60, "private MinIO ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture()
def private_minio(stack: Any, tmp_path: Path) -> Iterator[PrivateMinio]:
    server = PrivateMinio(Path(stack.bin_dir) / "minio", tmp_path / "minio-data", tmp_path / "minio.log")
    server.start()
    yield server
    server.stop()


def test_minio_stopped_during_uploads_then_restarted_loses_nothing(
    private_minio: PrivateMinio, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from kubeft_trainer.storage import S3Store, minio_client

    env = {"AWS_ACCESS_KEY_ID": private_minio.USER, "AWS_SECRET_ACCESS_KEY": private_minio.PASSWORD}
    client = minio_client(private_minio.endpoint, env)
    client.make_bucket("outage")
    store = Backend(
        "minio", {"endpoint": private_minio.endpoint, "bucket": "outage"}, env, S3Store(client, "outage", "")
    )
    spec = job_spec(tiny_model_dir, dataset_file("messages", repeat=4), maxSteps=12)
    spec["storage"] = store.spec
    spec["checkpoints"] = {"everySteps": 2, "keep": 10}
    job = write_job(tmp_path / "job.yaml", spec, JOB, NS)
    log = tmp_path / "run.log"
    proc = spawn(job, tmp_path / "run", {**env, "KUBEFT_DEBUG_STEP_DELAY_SECONDS": "0.5"})
    try:
        wait_for(lambda: 2 in complete_steps(store), 120, "first checkpoint in MinIO", proc)
        private_minio.stop()
        try:
            # training goes on while storage is away; uploads fail and are retried
            wait_for(
                lambda: "step 8/12" in log.read_text(), 120, "training past step 8 with MinIO down", proc
            )
            assert "retrying in" in log.read_text()
        finally:
            private_minio.start()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()[-3000:]
    assert complete_steps(store) == [2, 4, 6, 8, 10, 12]
    for step in (4, 6, 8):  # queued while MinIO was down
        prefix = contract.checkpoint_prefix(contract.job_prefix(NS, JOB), step)
        manifest = store.json(f"{prefix}/manifest.json")
        stored = {o.key.rsplit("/", 1)[1]: o.size for o in store.store.list(prefix + "/")}
        stored.pop("manifest.json")
        assert {f["path"]: f["bytes"] for f in manifest["files"]} == stored
    assert store.keys(contract.artifacts_prefix(contract.job_prefix(NS, JOB)) + "/adapter/")


def _prom_query(url: str, query: str) -> list[dict[str, Any]]:
    full = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    body = json.loads(urllib.request.urlopen(full, timeout=10).read())
    assert body["status"] == "success"
    return list(body["data"]["result"])


def test_prometheus_scraping_the_trainer_returns_the_loss_series(
    stack: Any, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file("messages", repeat=4), maxSteps=20)
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job_name = f"prom-{int(time.time())}"
    job = write_job(tmp_path / "job.yaml", spec, job_name, NS)
    log = tmp_path / "run.log"
    proc = spawn(job, tmp_path / "run", {"KUBEFT_DEBUG_STEP_DELAY_SECONDS": "0.5"})
    target = f"trainer-{job_name}"
    try:
        wait_for(lambda: log.exists() and "serving metrics on" in log.read_text(), 60, "metrics server", proc)
        found = re.search(r"serving metrics on http://[^:]+:(\d+)/metrics", log.read_text())
        assert found is not None
        port = int(found.group(1))
        stack.add_scrape_target(target, f"127.0.0.1:{port}")
        # Prometheus keeps the scrape job in `job` and renames ours to exported_job (no honor_labels here)
        loss = "kubeft_trainer_train_loss"
        query = f'{loss}{{exported_job="{job_name}"}} or {loss}{{job="{job_name}"}}'
        samples = f"count_over_time(({query})[1m:1s])"
        found_series: list[dict[str, Any]] = []

        def scraped_several_times() -> bool:
            found_series[:] = _prom_query(stack.prometheus_url, query)
            counts = _prom_query(stack.prometheus_url, samples)
            return bool(found_series) and bool(counts) and float(counts[0]["value"][1]) >= 3

        wait_for(scraped_several_times, 120, "several loss samples in Prometheus", proc)
        assert proc.wait(timeout=300) == 0
    finally:
        stack.remove_scrape_target(target)
        if proc.poll() is None:
            proc.kill()
    (result,) = found_series
    labels = result["metric"]
    assert labels.get("namespace", labels.get("exported_namespace")) == NS
    assert float(result["value"][1]) > 0


def test_status_of_the_finetunejob_is_patched_with_the_trainer_fields(
    stack: Any,
    kubeft_crds: list[str],
    custom_objects: Any,
    namespace: str,
    minio_backend: Backend,
    dataset_file: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    # model and dataset come from MinIO, as in a pod
    for path in sorted(tiny_model_dir.iterdir()):
        minio_backend.store.upload_file(path, f"models/tiny/{path.name}")
    minio_backend.store.upload_file(dataset_file("alpaca", repeat=2), "datasets/train.jsonl")
    bucket = minio_backend.spec["bucket"]
    spec = job_spec(Path("x"), Path("y"), maxSteps=4)
    spec["model"] = {"source": f"s3://{bucket}/models/tiny/"}
    spec["dataset"] = {"source": f"s3://{bucket}/datasets/train.jsonl", "eval": {"split": 0.25}}
    spec["storage"] = minio_backend.spec
    spec["hyperparameters"]["lora"]["targetModules"] = ["all-linear"]  # the CRD's shape
    spec["storage"]["credentialsSecret"] = "minio-creds"
    spec["suspend"] = True  # keep any operator from scheduling a real pod for it
    name = "status-job"
    custom_objects.create_namespaced_custom_object(
        contract.GROUP,
        contract.VERSION,
        namespace,
        contract.PLURAL,
        {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "metadata": {"name": name}, "spec": spec},
    )
    job = write_job(tmp_path / "job.yaml", spec, name, namespace)
    proc = spawn(job, tmp_path / "run", {**minio_backend.env, "KUBECONFIG": str(stack.kubeconfig)})
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    obj = custom_objects.get_namespaced_custom_object_status(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
    )
    status = obj["status"]
    assert status["phase"] in ("Exporting", "Evaluating", "Training")  # the operator sets the final phase
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 4
    assert status["progress"]["trainLoss"] > 0 and "evalLoss" in status["progress"]
    assert status["checkpoints"] == {
        "latest": f"s3://{bucket}/{contract.checkpoint_prefix(contract.job_prefix(namespace, name), 4)}/",
        "step": 4,
    }
    assert (
        status["artifacts"]["adapter"]
        == f"s3://{bucket}/{contract.artifacts_prefix(contract.job_prefix(namespace, name))}/adapter/"
    )
    assert status["metrics"]["evalLoss"] > 0
