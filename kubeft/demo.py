"""`kubeft demo`: the README's first command, the whole product path on the local stack.

1. brings the local stack up (real control plane, kwok GPU nodes, MinIO, Prometheus);
2. builds a tiny model and a small dataset and uploads them to MinIO;
3. installs the operator with the Helm chart (its pod is run by the local pod runner);
4. applies examples/quickstart.yaml and shows phase, step and loss live until it ends;
5. prints the artifacts in MinIO and the loss series from Prometheus, and writes a PNG
   of the loss curve.

Running it again starts the quickstart afresh (the old job and its objects are removed).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kubeft import contract
from kubeft.dev import queues

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "demo"
JOB = "quickstart"
RELEASE_NAMESPACE = "kubeft-system"
MODEL_BUCKET, MODEL_PREFIX = "models", "tiny-llama/"
DATA_BUCKET, DATA_KEY = "datasets", "quickstart/train.jsonl"
OUTPUT_BUCKET = "kubeft"
SECRET = "minio-creds"
REGISTRY_SECRET = "registry-creds"  # examples/quickstart.yaml's export.oci.credentialsSecret


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the quickstart FineTuneJob end to end on the local stack")
    parser.add_argument(
        "--timeout", type=float, default=1200, help="seconds to wait for the job (default 1200)"
    )
    parser.add_argument("--out", type=Path, default=Path("kubeft-demo-loss.png"), help="loss curve PNG")
    parser.set_defaults(func=run)


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    from kubeft.dev import stack

    say("local stack")
    try:
        info = stack.up()
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("    " + stack.versions_line())
    api = _api(info)
    say("model and dataset → MinIO")
    upload_inputs(info)
    say(f"namespace {NAMESPACE} with the storage Secret {SECRET} and the registry Secret {REGISTRY_SECRET}")
    prepare_namespace(api, info)
    say("operator (Helm chart charts/kubeft)")
    install_operator(info)
    say(f"FineTuneJob {NAMESPACE}/{JOB} (examples/quickstart.yaml)")
    kubectl(info, "apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "quickstart.yaml"))
    job = watch(api, args.timeout)
    print()
    print(kubectl(info, "get", "ftj", "-n", NAMESPACE, capture=True), end="")
    if job is None or job.get("status", {}).get("phase") != "Succeeded":
        status = (job or {}).get("status", {})
        print(
            f"error: the job did not succeed: phase {status.get('phase')}: {_last_message(status)}",
            file=sys.stderr,
        )
        return 1
    say("artifacts in MinIO")
    show_artifacts(info, job)
    say("run it with llama.cpp / Ollama")
    show_gguf(info, job)
    say("loss from Prometheus")
    created = job["metadata"]["creationTimestamp"]
    series = loss_series(info, since=datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    plot(series, args.out)
    print(f"    loss curve: {args.out.resolve()}")
    return 0


def _api(info: Any) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(info.kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def kubectl(info: Any, *args: str, capture: bool = False) -> str:
    res = subprocess.run(
        [str(info.bin_dir / "kubectl"), "--kubeconfig", str(info.kubeconfig), *args],
        capture_output=capture,
        text=True,
        check=True,
    )
    return res.stdout if capture else ""


def upload_inputs(info: Any) -> None:
    """The tiny model (built once, cached) and the dataset, into MinIO buckets of their own."""
    from kubeft.dev import stack, tinymodel

    model_dir = stack.CACHE / "demo" / "tiny-llama"
    if not _gguf_ready(model_dir):  # built once; a cache from before the GGUF exports is rebuilt
        shutil.rmtree(model_dir, ignore_errors=True)
        tinymodel.build_tiny_model(model_dir)
    mc = info.minio_client()
    for bucket in (MODEL_BUCKET, DATA_BUCKET, OUTPUT_BUCKET):
        if not mc.bucket_exists(bucket):
            mc.make_bucket(bucket)
    for path in sorted(model_dir.iterdir()):
        mc.fput_object(MODEL_BUCKET, MODEL_PREFIX + path.name, str(path))
    data = tinymodel.write_jsonl(stack.CACHE / "demo" / "train.jsonl", tinymodel.rows("alpaca") * 8)
    mc.fput_object(DATA_BUCKET, DATA_KEY, str(data))
    print(
        f"    s3://{MODEL_BUCKET}/{MODEL_PREFIX} ({len(list(model_dir.iterdir()))} files), "
        f"s3://{DATA_BUCKET}/{DATA_KEY} ({len(data.read_text().splitlines())} rows, alpaca)"
    )


def install_operator(info: Any) -> None:
    """`helm upgrade --install` of the chart; the local pod runner runs the operator's pod."""
    helm = info.bin_dir / "helm"
    if not helm.exists():
        subprocess.run([str(REPO / "hack" / "build-binaries.sh"), "helm"], check=True)
    values = {
        "watchNamespaces": f"{{{NAMESPACE}}}",  # tests run releases of their own in their namespaces
        "storage.endpoint": info.minio_endpoint,
        "storage.bucket": OUTPUT_BUCKET,
        "image.operator.repository": "kubeft/operator",
        "image.trainer.repository": "kubeft/trainer",
        "admissionPolicies.create": "false",  # applied below, once for the whole stack
    }
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    chart = str(REPO / "charts" / "kubeft")
    from kubeft.dev.kube import apply_admission_policies, apply_crds

    api = _api(info)
    apply_crds(api, sorted((REPO / "crds").glob("*.yaml")))  # helm leaves an existing CRD as it was
    apply_admission_policies(api, REPO / "charts" / "kubeft" / "files" / "admission-policies.yaml")
    res = subprocess.run(
        [str(helm), "upgrade", "--install", "kubeft", chart, "--kubeconfig", str(info.kubeconfig),
         "--namespace", RELEASE_NAMESPACE, "--create-namespace", *sets, "--wait", "--timeout", "3m"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:  # helm's own notes (e.g. the chart's CRD link) only matter when it fails
        print(res.stderr, file=sys.stderr)
        raise subprocess.CalledProcessError(res.returncode, res.args)
    print(f"    release kubeft in {RELEASE_NAMESPACE}: operator ready")


def prepare_namespace(api: Any, info: Any, namespace: str = NAMESPACE) -> None:
    """The namespace, its storage Secret and its Kueue LocalQueue `default` (so the quickstart is
    queued and admitted by Kueue, as on a shared platform); a quickstart from an earlier run is
    removed first."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from kubeft.dev.kube import wait_for_service_account

    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for_service_account(api, namespace)
    queues.ensure_local_queue(api, namespace)
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name=SECRET),
        string_data={
            contract.SECRET_ACCESS_KEY: info.minio_access_key,
            contract.SECRET_SECRET_KEY: info.minio_secret_key,
        },
    )
    registry = client.V1Secret(  # what `kubectl create secret docker-registry` makes
        metadata=client.V1ObjectMeta(name=REGISTRY_SECRET),
        type="kubernetes.io/dockerconfigjson",
        string_data={contract.SECRET_DOCKER_CONFIG: info.registry_auth()},
    )
    for body in (secret, registry):  # created, or replaced with this run's keys
        try:
            core.create_namespaced_secret(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(body.metadata.name, namespace, body)
    try:
        custom.delete_namespaced_custom_object(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, JOB
        )
        print("    removing the quickstart of an earlier run")
        while True:
            custom.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL, JOB
            )
            time.sleep(0.5)
    except ApiException as exc:
        if exc.status != 404:
            raise
    mc = info.minio_client()
    prefix = f"{namespace}/{JOB}/"  # every earlier run of the demo's job (each under its own UID)
    for obj in mc.list_objects(OUTPUT_BUCKET, prefix=prefix, recursive=True):
        mc.remove_object(OUTPUT_BUCKET, obj.object_name)


def _last_message(status: dict[str, Any]) -> str:
    conds = status.get("conditions") or []
    failed = [c for c in conds if c.get("status") == "True" and c.get("type") == "Failed"] or conds[-1:]
    return failed[0].get("message", "") if failed else ""


def watch(api: Any, timeout: float, namespace: str = NAMESPACE, name: str = JOB) -> dict[str, Any] | None:
    """Prints a line whenever phase, step or loss change; returns the job once it has ended."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    last = None
    job: dict[str, Any] | None = None
    start = time.monotonic()
    while time.monotonic() < deadline:
        job = custom.get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
        )
        status = job.get("status", {})
        phase = status.get("phase", "Pending")
        p = status.get("progress") or {}
        line = _progress_line(phase, status, p)
        if line != last:
            print(f"    [{time.monotonic() - start:5.0f}s] {line}", flush=True)
            last = line
        if phase in ("Succeeded", "Failed"):
            return job
        time.sleep(1)
    print(f"error: the job did not end within {timeout:.0f}s", file=sys.stderr)
    return job


def _progress_line(phase: str, status: dict[str, Any], p: dict[str, Any]) -> str:
    parts = [f"{phase:<12}"]
    queue = status.get("queue") or {}
    if phase == "Queued" and queue.get("name"):
        parts.append(f"(LocalQueue {queue['name']}: Kueue admits it)")
    if phase in ("Pending", "Scheduling", "Initializing") and status.get("gpu"):
        gpu = status["gpu"]
        on = f" on flavor {queue['flavor']}" if queue.get("flavor") else ""
        parts.append(f"on {status.get('node', '?')} ({gpu.get('product', '?')}{on})")
    if phase == "Initializing" and p.get("message"):  # the trainer's stage: download, load, ...
        parts.append(f"— {p['message']}")
    if p.get("totalSteps"):
        parts.append(f"step {p.get('step', 0)}/{p['totalSteps']}")
    for key, label, fmt in (
        ("trainLoss", "loss", "{:.3f}"),
        ("evalLoss", "eval loss", "{:.3f}"),
        ("tokensPerSecond", "tok/s", "{:.0f}"),
        ("etaSeconds", "eta", "{:.0f}s"),
    ):
        if p.get(key) is not None:
            parts.append(f"{label} {fmt.format(float(p[key]))}")
    return "  ".join(parts)


def _gguf_ready(model_dir: Path) -> bool:
    """The cached tiny model has the Llama-style tokenizer llama.cpp's converter supports."""
    try:
        tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    return (model_dir / "config.json").exists() and bool(tokenizer.get("model", {}).get("byte_fallback"))


def show_gguf(info: Any, job: dict[str, Any], out: Path = Path("kubeft-demo-gguf")) -> None:
    """Downloads the Q4_K_M file and its Modelfile, asks it a question with llama.cpp, says how to run it."""
    artifacts = job.get("status", {}).get("artifacts") or {}
    uri = artifacts.get("gguf-q4_k_m")
    if not uri:
        print("    no gguf-q4_k_m in status.artifacts (see status.progress.message)")
        return
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    mc = info.minio_client()
    out.mkdir(exist_ok=True)
    for obj in mc.list_objects(bucket, prefix=prefix, recursive=True):
        mc.fget_object(bucket, obj.object_name, str(out / Path(obj.object_name).name))
    gguf_file = out / "model-q4_k_m.gguf"
    print(f"    {gguf_file} ({gguf_file.stat().st_size:,d} B) and {out / 'Modelfile'}, from {uri}")
    question = "What is the capital of France?"
    try:
        import llama_cpp

        llm = llama_cpp.Llama(str(gguf_file), n_ctx=256, verbose=False)
        try:
            reply: Any = llm.create_chat_completion(
                messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0.0
            )
        finally:
            llm.close()
        print(f"    llama.cpp: {question!r} → {reply['choices'][0]['message']['content']!r}")
    except ImportError:
        print("    (llama-cpp-python is not installed here: pip install 'kubeft[trainer]')")
    for item in artifacts.get("oci") or []:
        print(f"    oci: {item['reference']}@{item['digest']}  ({item['format']})")
    pushed = {i["format"]: i["reference"] for i in artifacts.get("oci") or []}
    reference = pushed.get("gguf-q4_k_m")
    print("    run it:")
    print(f"      llama-cli -m {gguf_file} -cnv                        # llama.cpp")
    print(f"      cd {out} && ollama create quickstart -f Modelfile && ollama run quickstart   # Ollama")
    if reference:
        print(
            f"      oras pull --plain-http -u {info.registry_user} -p {info.registry_password} {reference}"
            "   # the same files from the registry"
        )


def show_artifacts(info: Any, job: dict[str, Any], namespace: str = NAMESPACE) -> None:
    mc = info.minio_client()
    prefix = contract.job_prefix(namespace, JOB, job["metadata"]["uid"]) + "/"
    for obj in mc.list_objects(OUTPUT_BUCKET, prefix=prefix, recursive=True):
        if "/checkpoints/" in obj.object_name and not obj.object_name.endswith(contract.CHECKPOINT_MANIFEST):
            continue
        print(f"    s3://{OUTPUT_BUCKET}/{obj.object_name}  {obj.size:>10,d} B")
    for key, uri in (job.get("status", {}).get("artifacts") or {}).items():
        if key != "oci":
            print(f"    status.artifacts.{key}: {uri}")


def loss_series(
    info: Any, namespace: str = NAMESPACE, name: str = JOB, since: float | None = None
) -> list[tuple[float, float]]:
    """kubeft_trainer_train_loss of a job since `since` (epoch seconds), as Prometheus stored it."""
    import requests

    now = time.time()
    query = f'kubeft_trainer_train_loss{{namespace="{namespace}",job="{name}"}}'
    r = requests.get(
        f"{info.prometheus_url}/api/v1/query_range",
        params={"query": query, "start": str(since or now - 3600), "end": str(now), "step": "2s"},
        timeout=10,
    )
    r.raise_for_status()
    result = r.json()["data"]["result"]
    if not result:
        print(f"    no series for {query}")
        return []
    values = [(float(t), float(v)) for t, v in result[-1]["values"]]
    print(f"    {query}: {len(values)} samples, first {values[0][1]:.3f}, last {values[-1][1]:.3f}")
    return values


def plot(series: list[tuple[float, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if series:
        t0 = series[0][0]
        ax.plot([t - t0 for t, _ in series], [v for _, v in series], marker=".")
    ax.set_xlabel("seconds since the first sample")
    ax.set_ylabel("train loss")
    ax.set_title(f"FineTuneJob {NAMESPACE}/{JOB}: kubeft_trainer_train_loss (from Prometheus)")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    out.write_bytes(buf.getvalue())
