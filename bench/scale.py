"""The operator at scale on the local stack: N FineTuneJobs on kwok GPU nodes, from create to Succeeded.

    flock /tmp/kubeft-stack.lock python bench/scale.py --jobs 1000 --nodes 200 --out DIR

What runs: the real stack (kube-apiserver, etcd, scheduler, controller-manager, kwok, MinIO; Kueue
too with ``--kueue``), the real operator (``python -m kubeft_operator.main``, one process, the
settings a chart install has), ``--nodes`` kwok GPU nodes of four classes (L4, L40S, A100-40GB,
H100, a quarter each) and ``--jobs`` FineTuneJobs (QLoRA of a 1B and of an 8B Llama shape given
inline, no config.json to read; a dataset in MinIO, a storage Secret). Their trainer pods carry
``kubeft.io/simulate=true`` (operator setting ``KUBEFT_TRAINER_POD_LABELS``): kwok, not the pod
runner, moves them through Running to Succeeded after ``--run-seconds``.

Measured:
- per job: create → placed (the operator made its trainer Job: phase Queued/Scheduling), → bound
  (its pod on a node: ``status.node``), → Succeeded; p50, p99, max over the jobs;
- the operator's own API requests by verb and resource (its ``kubeft_operator_api_requests_total``:
  every request but its watches) over the whole run, per job, and in steady state with every job
  finished (``--steady-seconds``); the API server's ``apiserver_request_total`` for the same
  resources and windows (all clients: the controller-manager and kwok touch jobs and pods too);
- the operator's CPU seconds and peak RSS (VmHWM), its reconcile duration and work-queue wait
  (p50/p99 from its histograms).
Writes DIR/scale.json and DIR/scale.md. Not part of the test suite (tests/operator/test_scale.py
runs the same code on 100 jobs).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from kubernetes import client, config, watch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from kubeft import contract  # noqa: E402
from kubeft.dev import nodes as dev_nodes  # noqa: E402
from kubeft.dev import stack as devstack  # noqa: E402
from kubeft.dev.kube import apply_admission_policies, apply_crds, wait_for_service_account  # noqa: E402
from kubeft.dev.podrunner import free_port  # noqa: E402

CLASSES = (  # (product, GiB per GPU, GPUs per node)
    ("NVIDIA-L4", 23034, 1),
    ("NVIDIA-L40S", 46068, 4),
    ("NVIDIA-A100-SXM4-40GB", 40960, 8),
    ("NVIDIA-H100-80GB-HBM3", 81559, 8),
)
SHAPES = {
    "llama-3.2-1b": {"hiddenSize": 2048, "numLayers": 16, "numHeads": 32, "numKvHeads": 8, "headDim": 64,
                     "intermediateSize": 8192, "vocabSize": 128256, "tieWordEmbeddings": True},
    "llama-3.1-8b": {"hiddenSize": 4096, "numLayers": 32, "numHeads": 32, "numKvHeads": 8, "headDim": 128,
                     "intermediateSize": 14336, "vocabSize": 128256, "tieWordEmbeddings": False},
}  # fmt: skip
SECRET = "storage-creds"
DATASET = "s3://kubeft-scale/data/train.jsonl"
PLACED = {"Queued", "Scheduling", "Initializing", "Running", "Succeeded"}
OWN = ("finetunejobs", "jobs", "pods", "events", "secrets", "configmaps", "serviceaccounts", "roles",
       "rolebindings", "localqueues", "workloads", "nodes", "leases")  # fmt: skip


def scale_nodes(n: int) -> tuple[dev_nodes.NodeSpec, ...]:
    """``n`` kwok GPU nodes, a quarter of each class."""
    out = []
    for i in range(n):
        product, mib, gpus = CLASSES[i % len(CLASSES)]
        short = product.split("-")[1].lower()
        out.append(dev_nodes.NodeSpec(f"scale-{short}-{i:04d}", product, mib, gpus, cpu="128", memory="1Ti"))
    return tuple(out)


def job_manifest(i: int) -> dict[str, Any]:
    shape = "llama-3.1-8b" if i % 10 < 3 else "llama-3.2-1b"
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": f"job-{i:05d}"},
        "spec": {
            "model": {"source": f"s3://models/{shape}/", "architecture": SHAPES[shape]},
            "method": "qlora",
            "dataset": {"source": DATASET},
            "storage": {"credentialsSecret": SECRET},
        },
    }


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def requests_by(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> Counter[str]:
    """``verb resource`` → count, for the resources the operator works with."""
    out: Counter[str] = Counter()
    for labels, value in metrics.get(name, []):
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        if resource.split("/")[0] in OWN and labels.get("verb", "").upper() != "WATCH":
            out[f"{labels['verb'].lower()} {resource}"] += int(value)
    return out


def quantile_from_histogram(metrics: dict[str, Any], name: str, q: float) -> float | None:
    buckets = sorted(
        ((float(lb["le"]), v) for lb, v in metrics.get(f"{name}_bucket", []) if lb.get("le")),
        key=lambda b: b[0],
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


@dataclass
class Timeline:
    created: dict[str, float] = field(default_factory=dict)
    placed: dict[str, float] = field(default_factory=dict)
    bound: dict[str, float] = field(default_factory=dict)
    succeeded: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def see(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        phase = status.get("phase")
        with self.lock:
            if phase in PLACED:
                self.placed.setdefault(name, now)
            if status.get("node") or phase == "Succeeded":
                self.bound.setdefault(name, now)
            if phase == "Succeeded":
                self.succeeded.setdefault(name, now)
            if phase == "Failed":
                self.failed[name] = str(status.get("message") or "")


class Operator:
    """The operator as a process of its own, with its metrics endpoint."""

    def __init__(
        self, kubeconfig: Path, minio: str, run_seconds: int, log: Path, settings: dict[str, str]
    ) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator"), str(REPO / "trainer_image")]),
            "KUBEFT_DEFAULT_STORAGE_ENDPOINT": minio,
            "KUBEFT_METRICS_PORT": str(self.port),
            "KUBEFT_LIVENESS_PORT": "0",
            "KUBEFT_TRAINER_POD_LABELS": f"{contract.LABEL_SIMULATE}=true",
            "KUBEFT_TRAINER_POD_ANNOTATIONS": f"pod-complete.stage.kwok.x-k8s.io/delay={run_seconds}s",
            **settings,
        }
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubeft_operator.main"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.clock_ticks = os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.proc.returncode}); see {self.log.name}")
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the operator's metrics endpoint never came up")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.clock_ticks

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def apiserver_metrics(api: client.ApiClient) -> dict[str, Any]:
    """The API server's own /metrics (the admin client certificate of the stack's kubeconfig)."""
    resp = api.rest_client.pool_manager.request("GET", api.configuration.host + "/metrics")
    return parse_metrics(resp.data.decode())


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0) > 0}


def run(
    jobs: int, nodes: int, run_seconds: int, steady_seconds: int, timeout: float, out: Path | None,
    kueue: bool = False, log_dir: Path | None = None, settings: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The whole measurement on a running stack; returns (and writes, with ``out``) the results."""
    info = devstack.up()
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(info.kubeconfig), client_configuration=configuration)
    api = client.ApiClient(configuration)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    apply_crds(api, sorted((REPO / "crds").glob("*.yaml")))
    apply_admission_policies(api, REPO / "charts" / "kubeft" / "files" / "admission-policies.yaml")
    specs = scale_nodes(nodes)
    dev_nodes.register(api, specs)
    dev_nodes.wait_ready(api, timeout=120, nodes=specs)
    ns = f"scale-{int(time.time())}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    wait_for_service_account(api, ns)
    if kueue:
        from kubeft.dev import queues

        queues.ensure_local_queue(api, ns)
    keys = {
        contract.SECRET_ACCESS_KEY: info.minio_access_key,
        contract.SECRET_SECRET_KEY: info.minio_secret_key,
    }
    core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name=SECRET),
        data={k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
    ))  # fmt: skip
    minio = info.minio_client()
    bucket, _, key = DATASET.removeprefix("s3://").partition("/")
    if not minio.bucket_exists(bucket):
        minio.make_bucket(bucket)
    line = json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"}).encode() + b"\n"
    minio.put_object(bucket, key, io.BytesIO(line * 64), len(line) * 64)

    log_dir = log_dir or (out or Path("/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {})
    operator = Operator(info.kubeconfig, info.minio_endpoint, run_seconds, log_dir / "operator.log", settings)
    timeline = Timeline()
    stop = threading.Event()
    try:
        operator.wait_up()
        server_before = requests_by(apiserver_metrics(api), "apiserver_request_total")
        op_before = requests_by(operator.metrics(), "kubeft_operator_api_requests_total")
        cpu_before = operator.cpu_seconds()

        def follow() -> None:  # the bench's own watch on the jobs
            while not stop.is_set():
                w = watch.Watch()
                try:
                    for ev in w.stream(custom.list_namespaced_custom_object, contract.GROUP, contract.VERSION,
                                       ns, contract.PLURAL, timeout_seconds=30):  # fmt: skip
                        timeline.see(ev["object"], time.monotonic())
                        if stop.is_set():
                            break
                except Exception:
                    time.sleep(0.5)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        started = time.monotonic()

        def create(i: int) -> None:
            body = job_manifest(i)
            custom.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, ns, contract.PLURAL, body
            )
            with timeline.lock:
                timeline.created[body["metadata"]["name"]] = time.monotonic()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(jobs)))
        created_in = time.monotonic() - started
        deadline = started + timeout
        while time.monotonic() < deadline:
            with timeline.lock:
                done = len(timeline.succeeded) + len(timeline.failed)
            if done >= jobs:
                break
            time.sleep(1)
        all_done = time.monotonic() - started
        op_run = requests_by(operator.metrics(), "kubeft_operator_api_requests_total")
        server_run = requests_by(apiserver_metrics(api), "apiserver_request_total")
        cpu_run = operator.cpu_seconds() - cpu_before

        # steady state: every job finished; what does the operator still ask for?
        time.sleep(10)
        op_steady0 = requests_by(operator.metrics(), "kubeft_operator_api_requests_total")
        server_steady0 = requests_by(apiserver_metrics(api), "apiserver_request_total")
        cpu_steady0 = operator.cpu_seconds()
        time.sleep(steady_seconds)
        op_steady = delta(requests_by(operator.metrics(), "kubeft_operator_api_requests_total"), op_steady0)
        server_steady = delta(requests_by(apiserver_metrics(api), "apiserver_request_total"), server_steady0)
        cpu_steady = operator.cpu_seconds() - cpu_steady0
        final = operator.metrics()
        peak_rss = operator.peak_rss_mib()
    finally:
        stop.set()
        operator.stop()

    def lat(marks: dict[str, float]) -> dict[str, Any]:
        values = [marks[n] - timeline.created[n] for n in marks if n in timeline.created]
        return {"n": len(values), "p50": pct(values, 0.5), "p99": pct(values, 0.99),
                "max": round(max(values), 2) if values else None}  # fmt: skip

    op_total = delta(op_run, op_before)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "stack": devstack.versions_line()},
        "jobs": jobs, "nodes": nodes, "run_seconds": run_seconds, "kueue": kueue, "namespace": ns,
        "operator_settings": settings,
        "created_in_s": round(created_in, 1),
        "all_finished_in_s": round(all_done, 1),
        "succeeded": len(timeline.succeeded), "failed": len(timeline.failed),
        "failures": dict(list(timeline.failed.items())[:5]),
        "to_placed_s": lat(timeline.placed), "to_bound_s": lat(timeline.bound),
        "to_succeeded_s": lat(timeline.succeeded),
        "operator_requests": op_total,
        "operator_requests_total": sum(op_total.values()),
        "operator_requests_per_job": round(sum(op_total.values()) / max(1, jobs), 1),
        "apiserver_requests": delta(server_run, server_before),
        "steady_seconds": steady_seconds,
        "steady_operator_requests": op_steady,
        "steady_operator_requests_per_s": round(sum(op_steady.values()) / steady_seconds, 3),
        "steady_apiserver_requests": server_steady,
        "steady_operator_cpu_s": round(cpu_steady, 2),
        "operator_cpu_s": round(cpu_run, 1),
        "operator_peak_rss_mib": round(peak_rss, 1),
        "reconcile_p50_s": quantile_from_histogram(final, "kubeft_operator_reconcile_duration_seconds", 0.5),
        "reconcile_p99_s": quantile_from_histogram(final, "kubeft_operator_reconcile_duration_seconds", 0.99),
        "queue_wait_p99_s": quantile_from_histogram(final, "kubeft_operator_workqueue_wait_seconds", 0.99),
        "reconciles": sum(v for lb, v in final.get("kubeft_operator_reconcile_duration_seconds_count", [])),
    }  # fmt: skip
    try:
        core.delete_namespace(ns, propagation_policy="Background")
        for spec in specs:
            core.delete_node(spec.name)
    except Exception as exc:
        print(f"cleanup: {exc}", file=sys.stderr)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "scale.md").write_text(markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    def row(name: str, d: dict[str, Any]) -> str:
        return f"| {name} | {d['n']} | {d['p50']} | {d['p99']} | {d['max']} |"

    lines = [
        f"# Operator at scale: {r['jobs']} FineTuneJobs on {r['nodes']} kwok GPU nodes",
        "",
        f"`{r['command']}` — {r['date']}, {r['host']['cpus']} CPUs, Python {r['host']['python']}; "
        f"{r['host']['stack']}; Kueue: {'yes' if r['kueue'] else 'no'}; "
        f"pods run {r['run_seconds']} s (kwok); operator settings: {r['operator_settings'] or 'defaults'}.",
        "",
        f"Created in {r['created_in_s']} s; all finished {r['all_finished_in_s']} s after the first create; "
        f"{r['succeeded']} Succeeded, {r['failed']} Failed.",
        "",
        "| from create to | jobs | p50 s | p99 s | max s |",
        "|---|---|---|---|---|",
        row("placed (trainer Job made)", r["to_placed_s"]),
        row("pod bound to a node", r["to_bound_s"]),
        row("Succeeded", r["to_succeeded_s"]),
        "",
        "| operator | value |",
        "|---|---|",
        f"| API requests, whole run | {r['operator_requests_total']} "
        f"({r['operator_requests_per_job']} per job) |",
        f"| API requests/s, all finished (steady {r['steady_seconds']} s) | "
        f"{r['steady_operator_requests_per_s']} |",
        f"| CPU s, whole run / steady window | {r['operator_cpu_s']} / {r['steady_operator_cpu_s']} |",
        f"| peak RSS | {r['operator_peak_rss_mib']} MiB |",
        f"| reconciles; duration p50 / p99 | {int(r['reconciles'])}; {r['reconcile_p50_s']} / "
        f"{r['reconcile_p99_s']} s (bucket bounds) |",
        f"| work-queue wait p99 | {r['queue_wait_p99_s']} s (bucket bound) |",
        "",
        "Operator requests by verb and resource (its own counter), whole run:",
        "",
        "| request | count |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in r["operator_requests"].items()],
        "",
        "API server `apiserver_request_total`, same resources, whole run (all clients):",
        "",
        "| request | count |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in r["apiserver_requests"].items()],
        "",
        f"Steady state ({r['steady_seconds']} s, every job finished): operator "
        f"{r['steady_operator_requests'] or 'none'}; "
        f"API server (all clients) {r['steady_apiserver_requests']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--run-seconds", type=int, default=60, help="how long kwok keeps each pod Running")
    p.add_argument("--steady-seconds", type=int, default=60)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--kueue", action="store_true", help="queue the jobs in a LocalQueue (Kueue admits them)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KUBEFT_X=V",
                   help="an operator setting, e.g. --set KUBEFT_API_QPS=200")  # fmt: skip
    args = p.parse_args()
    was_running = devstack.is_running()
    try:
        settings = dict(kv.split("=", 1) for kv in args.set)
        r = run(args.jobs, args.nodes, args.run_seconds, args.steady_seconds, args.timeout, args.out,
                args.kueue, settings=settings)  # fmt: skip
    finally:
        if not was_running:
            devstack.down()
    print(markdown(r))
    return 0 if r["succeeded"] == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
