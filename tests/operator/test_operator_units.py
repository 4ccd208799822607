"""Pure parts of the operator: spec parsing, placement, object builders and the lifecycle decisions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from typing import Any

import pytest
from kubeft_operator import conditions as cond
from kubeft_operator import placement as pl
from kubeft_operator import resources
from kubeft_operator.api import FineTuneJob
from kubeft_operator.reconcile import (
    Inputs,
    Observed,
    PodState,
    TrainerJob,
    WorkloadState,
    decide,
    iso,
    needs_inputs,
    quota_wait,
)
from kubeft_operator.settings import Settings
from kubernetes import client

from kubeft import contract
from kubeft import estimate as est

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = Settings(default_storage_endpoint="http://minio:9000")
NONE = Observed()  # no trainer Job yet


def node(name: str, product: str | None, mib: int | None, count: int, ready: bool = True) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if product:
        labels[contract.LABEL_GPU_PRODUCT] = product
    if mib:
        labels[contract.LABEL_GPU_MEMORY] = str(mib)
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "allocatable": {contract.RESOURCE_GPU: str(count)} if count else {},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


CLUSTER = [
    node("gpu-l4-0", "NVIDIA-L4", 23034, 1),
    node("gpu-l4-1", "NVIDIA-L4", 23034, 1),
    node("gpu-a100-0", "NVIDIA-A100-SXM4-40GB", 40960, 4),
    node("gpu-h100-0", "NVIDIA-H100-80GB-HBM3", None, 8),  # memory label missing: from the table
    node("cpu-0", None, None, 0),
]


def busy(node_name: str, gpus: int) -> dict[str, Any]:
    return {
        "spec": {
            "nodeName": node_name,
            "containers": [{"resources": {"limits": {contract.RESOURCE_GPU: gpus}}}],
        },
        "status": {"phase": "Running"},
    }


def job(name: str = "j", status: dict[str, Any] | None = None, **spec: Any) -> FineTuneJob:
    body = {
        "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {
            "model": {"source": "s3://models/llama/"},
            "dataset": {"source": "s3://data/train.jsonl"},
            "storage": {"credentialsSecret": "creds"},
            **spec,
        },
        "status": status or {},
    }
    return FineTuneJob.from_body(body)


def pod_of(j: FineTuneJob, plan: Any) -> client.V1PodTemplateSpec:
    """The trainer pod template of the Job the operator would create."""
    template: client.V1PodTemplateSpec = resources.get_trainer_job(j, plan).spec.template
    return template


def classes(pods: list[dict[str, Any]] | None = None) -> list[pl.GpuClass]:
    return pl.gpu_classes(pl.gpu_nodes(CLUSTER, pods or []))


def inputs(shape: str = "llama-3.2-1b", pods: list[dict[str, Any]] | None = None) -> Inputs:
    return Inputs(classes=classes(pods), shape=est.known_shape(shape))


# --- placement -------------------------------------------------------------------------
def test_gpu_classes_come_from_labels_and_fill_missing_memory_from_the_table() -> None:
    got = {(c.product, c.memory_bytes // 2**20, len(c.nodes)) for c in classes()}
    assert got == {
        ("NVIDIA-L4", 23034, 2),
        ("NVIDIA-A100-SXM4-40GB", 40960, 1),
        ("NVIDIA-H100-80GB-HBM3", 81559, 1),
    }


def test_nodes_without_gfd_are_read_from_gke_and_ec2_labels_and_pinned_by_those_labels() -> None:
    def labelled(name: str, labels: dict[str, str], count: int = 1) -> dict[str, Any]:
        n = node(name, None, None, count)
        n["metadata"]["labels"].update(labels)
        return n

    nodes = [
        node("gfd-l4", "NVIDIA-L4", 23034, 1),
        labelled("gke-l4", {"cloud.google.com/gke-accelerator": "nvidia-l4"}),
        labelled("eks-g6", {"node.kubernetes.io/instance-type": "g6.12xlarge"}, 4),
        labelled("gke-a100", {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}, 8),
        labelled("eks-p5", {"node.kubernetes.io/instance-type": "p5.48xlarge"}, 8),
        labelled("gke-unknown", {"cloud.google.com/gke-accelerator": "nvidia-tesla-k80"}),  # no table entry
        labelled("eks-cpu", {"node.kubernetes.io/instance-type": "m7i.4xlarge"}),  # not a GPU family
    ]
    by_product = {c.product: c for c in pl.gpu_classes(pl.gpu_nodes(nodes, []))}
    assert {p: c.memory_bytes // 2**20 for p, c in by_product.items()} == {
        "NVIDIA-L4": 23034, "NVIDIA-A100-SXM4-80GB": 81920, "NVIDIA-H100-80GB-HBM3": 81559,
    }  # fmt: skip
    assert sorted(n.name for n in by_product["NVIDIA-L4"].nodes) == ["eks-g6", "gfd-l4", "gke-l4"]
    assert by_product["NVIDIA-L4"].node_selectors == {
        "cloud.google.com/gke-accelerator": ("nvidia-l4",),
        contract.LABEL_GPU_PRODUCT: ("NVIDIA-L4",),
        "node.kubernetes.io/instance-type": ("g6.12xlarge",),
    }
    # the trainer pod may land on any of them: one ORed affinity term per label
    j = job()
    d = decide(j, NONE, Inputs(classes=list(by_product.values()), shape=est.known_shape("llama-3.2-1b")),
               SETTINGS, NOW)  # fmt: skip
    assert d.create is not None and d.create.gpu_products == ("NVIDIA-L4",)
    pod = pod_of(j, d.create)
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    got = [{e.key: e.values for e in t.match_expressions} for t in terms.node_selector_terms]
    assert got == [
        {"cloud.google.com/gke-accelerator": ["nvidia-l4"]},
        {"node.kubernetes.io/instance-type": ["g6.12xlarge"]},
        {contract.LABEL_GPU_PRODUCT: ["NVIDIA-L4"], contract.LABEL_GPU_PRESENT: ["true"]},
    ]


def test_not_ready_nodes_and_used_gpus_are_not_free() -> None:
    nodes = [node("a", "NVIDIA-L4", 23034, 1, ready=False), node("b", "NVIDIA-L4", 23034, 2)]
    got = pl.gpu_nodes(nodes, [busy("b", 1)])
    assert [(n.name, n.free) for n in got] == [("b", 1)]


@pytest.mark.parametrize(
    ("shape", "method", "product"),
    [
        ("llama-3.2-1b", "qlora", "NVIDIA-L4"),
        ("llama-3.1-8b", "qlora", "NVIDIA-L4"),
        # 2 × 2,048 tokens with the trainer's chunked LM head: 19.3 GiB, 21.2 with the 10 % margin
        ("llama-3.1-8b", "lora", "NVIDIA-L4"),
        ("llama-3.2-1b", "full", "NVIDIA-L4"),
        ("qwen2.5-7b", "full", "NVIDIA-H100-80GB-HBM3"),
        ("llama-3.1-70b", "qlora", "NVIDIA-H100-80GB-HBM3"),
    ],
)
def test_smallest_fitting_gpu_class_is_chosen(shape: str, method: str, product: str) -> None:
    d = decide(job(method=method), NONE, inputs(shape), SETTINGS, NOW)
    assert d.create is not None
    assert d.create.gpu_products == (product,)
    assert d.status["gpu"]["product"] == product


def test_busy_smallest_class_falls_back_to_a_larger_free_one_then_waits_when_all_are_busy() -> None:
    l4_busy = [busy("gpu-l4-0", 1), busy("gpu-l4-1", 1)]
    d = decide(job(), NONE, inputs(pods=l4_busy), SETTINGS, NOW)
    assert d.create is not None and d.create.gpu_products == ("NVIDIA-A100-SXM4-40GB",)
    c = cond.get_condition(d.status["conditions"], cond.SCHEDULABLE)
    assert c is not None
    assert "NVIDIA-L4 (22.5 GiB) is the smallest GPU that fits but none is free now" in c["message"]
    assert "NVIDIA-A100-SXM4-40GB is the smallest with a free GPU" in c["message"]
    all_busy = [*l4_busy, busy("gpu-a100-0", 4), busy("gpu-h100-0", 8)]
    d = decide(job(), NONE, inputs(pods=all_busy), SETTINGS, NOW)
    assert d.create is not None and d.create.gpu_products == ("NVIDIA-L4",)
    assert d.placement is not None and d.placement.waiting


def test_nothing_fits_keeps_the_job_pending_with_a_clear_condition_and_no_pod() -> None:
    d = decide(job(method="full"), NONE, inputs("llama-3.1-70b"), SETTINGS, NOW)
    assert d.create is None
    assert d.status["phase"] == "Pending"
    c = cond.get_condition(d.status["conditions"], cond.SCHEDULABLE)
    assert c is not None and c["status"] == "False" and c["reason"] == cond.INSUFFICIENT_GPU_MEMORY
    assert "NVIDIA-H100-80GB-HBM3" in c["message"] and "GiB" in c["message"]


def test_auto_picks_the_most_accurate_method_that_fits_and_says_why() -> None:
    small = decide(job(method="auto"), NONE, inputs("llama-3.2-1b"), SETTINGS, NOW)
    assert small.create is not None and small.create.method == "full"
    big = decide(job(method="auto"), NONE, inputs("llama-3.1-70b"), SETTINGS, NOW)
    assert big.create is not None and big.create.method == "qlora"
    assert "method auto chose qlora" in big.status["vram"]["reason"]


def test_gpu_products_node_selector_and_gpu_count_are_honoured() -> None:
    d = decide(job(resources={"gpuProducts": ["NVIDIA-H100-80GB-HBM3"]}), NONE, inputs(), SETTINGS, NOW)
    assert d.create is not None and d.create.gpu_products == ("NVIDIA-H100-80GB-HBM3",)
    d = decide(job(resources={"gpus": 2}), NONE, inputs(), SETTINGS, NOW)
    assert d.create is not None and d.create.gpu_products == ("NVIDIA-A100-SXM4-40GB",)
    d = decide(
        job(resources={"nodeSelector": {"kubernetes.io/hostname": "nope"}}), NONE, inputs(), SETTINGS, NOW
    )
    assert d.create is None
    assert cond.get_condition(d.status["conditions"], cond.SCHEDULABLE)["reason"] == cond.NO_GPU_NODES  # type: ignore[index]
    d = decide(job(resources={"gpuMemory": "40Gi"}), NONE, inputs(), SETTINGS, NOW)
    assert d.create is not None and d.create.gpu_products == ("NVIDIA-A100-SXM4-40GB",)


# --- builders --------------------------------------------------------------------------
def _plan_and_job(**spec: Any) -> tuple[FineTuneJob, Any]:
    j = job(**spec)
    d = decide(j, NONE, Inputs(classes=classes(), shape=est.known_shape("llama-3.2-1b"), has_hf_token=True),
               SETTINGS, NOW)  # fmt: skip
    assert d.create is not None
    return j, d.create


def test_pvc_sources_are_mounted_read_only_once_per_claim() -> None:
    j, plan = _plan_and_job(
        model={"source": "pvc://models/llama-3.2-1b"},
        dataset={"source": "pvc://data/train.jsonl", "eval": {"source": "pvc://models/eval.jsonl"}},
    )
    assert resources.source_claims(j) == {
        "models": ["spec.model.source", "spec.dataset.eval.source"],
        "data": ["spec.dataset.source"],
    }
    pod = pod_of(j, plan)
    claims = {v.name: v.persistent_volume_claim for v in pod.spec.volumes if v.persistent_volume_claim}
    assert sorted((c.claim_name, c.read_only) for c in claims.values()) == [("data", True), ("models", True)]
    c = pod.spec.containers[0]
    mounts = {m.mount_path: m.read_only for m in c.volume_mounts if m.name in claims}
    assert mounts == {f"{contract.PVC_ROOT}/models": True, f"{contract.PVC_ROOT}/data": True}
    assert {e.name: e.value for e in c.env}[contract.ENV_PVC_ROOT] == contract.PVC_ROOT
    # no pvc:// source: no claim volume, no PVC root
    j, plan = _plan_and_job()
    pod = pod_of(j, plan)
    assert not any(v.persistent_volume_claim for v in pod.spec.volumes)
    assert contract.ENV_PVC_ROOT not in {e.name for e in pod.spec.containers[0].env}


def test_trainer_pod_follows_the_contract() -> None:
    j, plan = _plan_and_job(
        resources={
            "tolerations": [{"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}],
            "priorityClassName": "batch-low",
            "nodeSelector": {"kubernetes.io/hostname": "gpu-l4-1"},
        }
    )
    pod = pod_of(j, plan)
    c = pod.spec.containers[0]
    assert pod.metadata.labels[contract.LABEL_JOB] == "j"
    assert pod.metadata.labels[contract.LABEL_COMPONENT] == contract.COMPONENT_TRAINER
    assert pod.metadata.labels[contract.LABEL_MANAGED_BY] == contract.MANAGED_BY
    assert (c.name, c.command, c.args) == (contract.TRAINER_CONTAINER, ["kubeft-trainer"], None)
    assert (
        c.ports[0].container_port == contract.METRICS_PORT and c.ports[0].name == contract.METRICS_PORT_NAME
    )
    env = {e.name: e for e in c.env}
    assert env[contract.ENV_JOB_CONFIG].value == "/etc/kubeft/job.json"
    assert env[contract.ENV_S3_ACCESS_KEY].value_from.secret_key_ref.to_dict() == {
        "name": "creds", "key": contract.SECRET_ACCESS_KEY, "optional": None,
    }  # fmt: skip
    assert env[contract.ENV_HF_TOKEN].value_from.secret_key_ref.key == contract.SECRET_HF_TOKEN
    assert all(e.value_from is None or e.value_from.secret_key_ref is not None for e in c.env)
    assert c.resources.limits[contract.RESOURCE_GPU] == "1"
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    expr = {e.key: e.values for e in terms.node_selector_terms[0].match_expressions}
    assert expr[contract.LABEL_GPU_PRODUCT] == ["NVIDIA-L4"]
    assert {t.key for t in pod.spec.tolerations} == {contract.GPU_TAINT_KEY, "team"}
    assert pod.spec.priority_class_name == "batch-low" and pod.spec.node_selector == {
        "kubernetes.io/hostname": "gpu-l4-1"
    }
    assert pod.spec.security_context.run_as_non_root and not c.security_context.allow_privilege_escalation
    assert pod.spec.service_account_name == "j-trainer" and pod.spec.restart_policy == "Never"


def _gib(quantity: str) -> float:
    assert quantity.endswith("Gi"), quantity
    return int(quantity[:-2])


def test_the_trainer_pod_writes_only_to_size_limited_empty_dirs_under_a_read_only_root() -> None:
    j, plan = _plan_and_job()
    pod = pod_of(j, plan)
    c = pod.spec.containers[0]
    assert c.security_context.read_only_root_filesystem is True
    volumes = {v.name: v for v in pod.spec.volumes}
    writable = {m.mount_path: m.name for m in c.volume_mounts if not m.read_only}
    assert writable == {
        "/var/lib/kubeft": "work",
        "/tmp": "tmp",
        "/var/cache/kubeft": "cache",
        "/dev/shm": "dshm",
    }
    assert all(volumes[name].empty_dir is not None for name in writable.values())
    # every place the trainer and its libraries write by default is inside one of them
    env = {e.name: e.value for e in c.env}
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
                 "CUDA_CACHE_PATH", contract.ENV_WORKDIR):  # fmt: skip
        assert any(env[name] == m or env[name].startswith(m + "/") for m in writable), name
    # QLoRA of a 1B model exporting its adapter: the 2.5 GB model download, two 68 MB checkpoints and
    # the adapter, plus 10% and 2 GiB of headroom → 5 GiB; /tmp 1 GiB and the caches 2 GiB besides
    sizes = {name: _gib(volumes[name].empty_dir.size_limit) for name in ("work", "tmp", "cache")}
    assert sizes == {"work": 5, "tmp": 1, "cache": 2}
    assert (
        c.resources.requests["ephemeral-storage"] == "8Gi" and "ephemeral-storage" not in c.resources.limits
    )


def test_disk_for_checkpoints_and_exports_grows_with_the_checkpoint_estimate() -> None:
    def work_gib(shape: str, **spec: Any) -> float:
        j = job(**spec)
        d = decide(j, NONE, Inputs(classes=classes(), shape=est.known_shape(shape)), SETTINGS, NOW)
        assert d.create is not None
        disk = resources.scratch(j, d.create)
        assert disk.checkpoints == 2 * est.checkpoint_bytes(d.create.estimate)
        volumes = {v.name: v for v in pod_of(j, d.create).spec.volumes}
        assert _gib(volumes["work"].empty_dir.size_limit) * 2**30 == disk.work
        return disk.work / 2**30

    adapter = work_gib("llama-3.1-8b", method="qlora")
    # the merged model (16.1 GB) and its GGUF files (F16 16.1 GB, Q4_K_M 4.9 GB) come on top
    gguf = work_gib("llama-3.1-8b", method="qlora", export={"formats": ["adapter", "gguf-q4_k_m"]})
    # (16.1 GB + 2 × 0.25 GB + 0.17 GB) × 1.1 + 2 GiB → 20 GiB; with the GGUF export 58 GiB
    assert (adapter, gguf) == (20, 58)
    # full fine-tuning checkpoints the whole model and its optimizer states (two of 35 GB) and exports
    # the merged model: (16.1 + 70.5 + 16.1 GB) × 1.1 + 2 GiB → 108 GiB
    assert (
        work_gib("llama-3.1-8b", method="full", resources={"gpuProducts": ["NVIDIA-H100-80GB-HBM3"]}) == 108
    )
    # a model read from a claim is not downloaded
    from_claim = work_gib("llama-3.1-8b", method="qlora", model={"source": "pvc://models/llama-3.1-8b"})
    assert adapter - from_claim > 14


def test_the_service_account_token_is_projected_short_lived_into_the_trainer_only() -> None:
    j, plan = _plan_and_job()
    pod = pod_of(j, plan)
    assert pod.spec.automount_service_account_token is False
    (token,) = [v for v in pod.spec.volumes if v.projected is not None]
    sources = token.projected.sources
    assert sources[0].service_account_token.expiration_seconds == 3600
    assert sources[1].config_map.name == "kube-root-ca.crt" and sources[2].downward_api is not None
    (mount,) = [m for m in pod.spec.containers[0].volume_mounts if m.name == token.name]
    assert mount.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount" and mount.read_only


def test_image_pull_secrets_and_the_hub_endpoint_reach_the_trainer_pod() -> None:
    j, plan = _plan_and_job()
    pod = pod_of(j, plan)
    assert pod.spec.image_pull_secrets is None
    assert {e.name: e.value for e in pod.spec.containers[0].env}["HF_ENDPOINT"] == "https://huggingface.co"
    settings = Settings.from_env({"KUBEFT_TRAINER_IMAGE_PULL_SECRETS": "mirror-pull, team-pull ",
                                  "KUBEFT_HF_ENDPOINT": "https://hf-mirror.internal"})  # fmt: skip
    pod = pod_of(j, dataclasses.replace(plan, settings=settings))
    assert [s.name for s in pod.spec.image_pull_secrets] == ["mirror-pull", "team-pull"]
    assert {e.name: e.value for e in pod.spec.containers[0].env}[
        "HF_ENDPOINT"
    ] == "https://hf-mirror.internal"


def test_role_allows_only_get_and_patch_on_this_job_and_creating_events() -> None:
    j, plan = _plan_and_job()
    rule, events = resources.get_role(j, plan).rules
    assert rule.resource_names == ["j"]
    assert sorted(rule.verbs) == ["get", "patch"]
    assert rule.resources == ["finetunejobs", "finetunejobs/status"]
    assert (events.api_groups, events.resources, events.verbs) == ([""], ["events"], ["create"])
    rb = resources.get_role_binding(j, plan)
    assert rb.subjects[0].name == resources.get_service_account(j, plan).metadata.name


def test_job_json_has_the_spec_with_defaults_placement_and_estimate() -> None:
    j, plan = _plan_and_job(method="auto")
    cm = resources.get_config_map(j, plan)
    doc = json.loads(cm.data[contract.TRAINER_CONFIG_FILE])
    assert (doc["apiVersion"], doc["kind"]) == (contract.API_VERSION, contract.TRAINER_CONFIG_KIND)
    assert doc["job"] == {"name": "j", "namespace": "ns", "uid": "uid-1"}
    assert doc["spec"]["method"] == "full"  # auto resolved
    assert "lora" not in doc["spec"]["hyperparameters"]  # the trainer refuses LoRA settings for full
    assert doc["spec"]["hyperparameters"]["maxSeqLength"] == 2048
    assert doc["spec"]["storage"]["endpoint"] == "http://minio:9000"
    assert doc["spec"]["storage"]["bucket"] == "kubeft"
    assert doc["spec"]["export"]["formats"] == ["merged-16bit"]
    # full fine-tuning of 1B fits the smallest class too
    assert doc["placement"] == {
        "gpuProduct": "NVIDIA-L4", "gpuProducts": ["NVIDIA-L4"], "gpuMemoryBytes": 23034 * 2**20,
        "gpuCount": 1,
    }  # fmt: skip
    assert set(doc["estimate"]["breakdown"]) == set(est.BREAKDOWN_KEYS)
    assert set(doc["estimate"]["profiles"]) == {"configured", "lean", "fast"}


def test_job_json_keeps_export_oci_and_the_pod_reads_the_registry_secret() -> None:
    oci = {"repository": "ghcr.io/acme/models", "credentialsSecret": "registry-creds"}
    j, plan = _plan_and_job(export={"formats": ["adapter", "gguf-q4_k_m"], "oci": oci})
    doc = json.loads(resources.get_config_map(j, plan).data[contract.TRAINER_CONFIG_FILE])
    assert doc["spec"]["export"] == {
        "formats": ["adapter", "gguf-q4_k_m"],
        "oci": {**oci, "plainHttp": False},
    }
    env = {e.name: e for e in resources.get_trainer_job(j, plan).spec.template.spec.containers[0].env}
    ref = env[contract.ENV_OCI_AUTH].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("registry-creds", ".dockerconfigjson")
    j, plan = _plan_and_job()  # no export.oci: no registry credentials in the pod
    assert contract.ENV_OCI_AUTH not in {
        e.name for e in resources.get_trainer_job(j, plan).spec.template.spec.containers[0].env
    }


# --- lifecycle decisions -------------------------------------------------------------------
RUNNING = {"phase": "Training", "trainerJob": "j-trainer", "pod": "j-trainer-0-abcde",
           "startTime": "2026-11-23T11:00:00Z"}  # fmt: skip


def pod(name: str = "j-trainer-0-abcde", phase: str = "Running", created: str = "2026-11-23T11:00:00Z",
        **kw: Any) -> PodState:  # fmt: skip
    return PodState(name, phase, node="n" if phase != "Pending" else None, created=created, **kw)


def seen(*pods: PodState, workload: WorkloadState | None = None, **trainer: Any) -> Observed:
    """The trainer Job ``j-trainer`` with ``pods`` (and Kueue's Workload when queued)."""
    return Observed(TrainerJob("j-trainer", uid="job-uid", **trainer), {p.name: p for p in pods}, workload)


def failed_pod(exit_code: int, message: str = "boom", reason: str = "Error", **kw: Any) -> PodState:
    return pod("j-trainer-0-abcde", "Failed", exit_code=exit_code, reason=reason, message=message, **kw)


def test_the_job_is_created_once_and_then_only_followed() -> None:
    d = decide(job(), NONE, inputs(), SETTINGS, NOW)
    assert (
        d.create is not None and d.status["trainerJob"] == "j-trainer" and d.status["phase"] == "Scheduling"
    )
    assert d.status["startTime"] == iso(NOW)
    # the Job exists (after a crash before the status was written, too): no inputs, no second create
    assert not needs_inputs(job(), seen())
    d = decide(job(), seen(pod(phase="Pending")), None, SETTINGS, NOW)
    assert (
        d.create is None and d.status["pod"] == "j-trainer-0-abcde" and d.status["trainerJob"] == "j-trainer"
    )
    # a Job of this name owned by an earlier FineTuneJob is waited for, not adopted
    d = decide(job(), seen(owned=False), None, SETTINGS, NOW)
    assert (
        d.create is None and d.status["phase"] == "Pending" and "earlier FineTuneJob" in d.status["message"]
    )


def test_a_pod_that_succeeded_keeps_its_node_until_the_job_completes_and_after() -> None:
    # watch events arrive in any order: the pod's Succeeded may come before the Job's Complete
    running = job(status={**RUNNING, "node": "n"})
    d = decide(running, seen(pod(phase="Succeeded")), None, SETTINGS, NOW)
    assert d.status["pod"] is None and "node" not in d.status
    d = decide(running, seen(pod(phase="Succeeded"), complete=True), None, SETTINGS, NOW)
    assert d.status["phase"] == "Succeeded" and "node" not in d.status
    # a failed pod's node is not where the job runs any more
    d = decide(running, seen(failed_pod(1), failed=1), None, SETTINGS, NOW)
    assert d.status["node"] is None


def test_the_trainer_job_carries_the_spec_limits_and_its_pod_failure_policy() -> None:
    j, plan = _plan_and_job(backoffLimit=5, activeDeadlineSeconds=600)
    body = resources.get_trainer_job(j, plan)
    assert body.metadata.name == "j-trainer" and body.metadata.owner_references[0].uid == "uid-1"
    spec = body.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism) == ("Indexed", 1, 1)
    assert (spec.backoff_limit, spec.active_deadline_seconds) == (5, 600)
    assert spec.suspend is False and contract.LABEL_QUEUE_NAME not in body.metadata.labels
    assert spec.pod_replacement_policy == "Failed"  # never two trainers on the same checkpoints
    rules = [(r.action, r.on_pod_conditions, r.on_exit_codes) for r in spec.pod_failure_policy.rules]
    assert rules[0][0] == "Ignore" and rules[0][1][0].type == "DisruptionTarget"
    assert (rules[1][0], rules[1][2].values) == ("Ignore", [contract.EXIT_TERMINATED])
    assert (rules[2][0], rules[2][2].values) == ("FailJob", [contract.EXIT_INVALID_INPUT])
    assert spec.template.spec.restart_policy == "Never"


def test_a_failed_pod_is_counted_reported_once_and_retried_by_the_job() -> None:
    d = decide(job(status=dict(RUNNING)), seen(failed_pod(1), failed=1), None, SETTINGS, NOW)
    assert d.status["restarts"] == 1 and d.status["phase"] == "Pending"
    assert d.status["lastFailure"]["exitCode"] == 1 and d.status["lastFailure"]["pod"] == "j-trainer-0-abcde"
    assert "retry 1/3" in d.status["message"] and d.create is None
    assert [r for _, r, _ in d.events].count(cond.POD_FAILED) == 1
    again = decide(job(status={**RUNNING, "phase": "Pending", "lastFailure": d.status["lastFailure"]}),
                   seen(failed_pod(1), failed=1), None, SETTINGS, NOW)  # fmt: skip
    assert cond.POD_FAILED not in [r for _, r, _ in again.events]
    # the Job's next pod: Scheduling again
    nxt = pod("j-trainer-0-fghij", "Pending", created="2026-11-23T11:30:00Z")
    d = decide(job(status={**RUNNING, "phase": "Pending"}), seen(failed_pod(1), nxt, failed=1), None,
               SETTINGS, NOW)  # fmt: skip
    assert d.status["phase"] == "Scheduling" and d.status["pod"] == "j-trainer-0-fghij"


def test_a_disrupted_or_sigtermed_pod_costs_no_retry_and_says_so() -> None:
    evicted = failed_pod(143, "terminated", disrupted="EvictionByEvictionAPI")
    d = decide(job(status=dict(RUNNING)), seen(evicted, failed=0), None, SETTINGS, NOW)
    assert d.status["restarts"] == 0 and d.status["lastFailure"]["reason"] == cond.POD_DISRUPTED
    assert "not counted as a failure" in d.status["message"]
    assert cond.POD_DISRUPTED in [r for _, r, _ in d.events]


def test_the_jobs_failure_reads_as_the_fine_tune_jobs_reason() -> None:
    st = {**RUNNING, "restarts": 3}
    oom = failed_pod(137, "", "OOMKilled")
    d = decide(job(status=st), seen(oom, failed=4, failure=("BackoffLimitExceeded", "Job has reached the "
               "specified backoff limit")), None, SETTINGS, NOW)  # fmt: skip
    assert d.status["phase"] == "Failed" and d.status["completionTime"] == iso(NOW)
    c = cond.get_condition(d.status["conditions"], cond.FAILED)
    assert c is not None and c["reason"] == cond.OOM_KILLED
    assert "backoffLimit (3) reached" in c["message"] and d.status["restarts"] == 3  # 4 pods, 3 retries
    assert "smaller batchSize" in c["message"] and "qlora" in c["message"]
    bad = failed_pod(contract.EXIT_INVALID_INPUT, "no usable rows")
    policy = "Container trainer for pod ns/j-trainer-0-abcde failed with exit code 2 matching FailJob rule"
    d = decide(job(status=dict(RUNNING)), seen(bad, failed=1, failure=("PodFailurePolicy", policy)), None,
               SETTINGS, NOW)  # fmt: skip
    c = cond.get_condition(d.status["conditions"], cond.FAILED)
    assert c is not None and c["reason"] == cond.INVALID_INPUT and "no usable rows" in c["message"]
    refused = failed_pod(
        contract.EXIT_INVALID_INPUT, "export.oci: pushing adapter failed", reason="ExportFailed"
    )
    d = decide(job(status=dict(RUNNING)), seen(refused, failed=1, failure=("PodFailurePolicy", policy)), None,
               SETTINGS, NOW)  # fmt: skip
    c = cond.get_condition(d.status["conditions"], cond.FAILED)
    assert c is not None and c["reason"] == "ExportFailed" and "stopped (ExportFailed)" in c["message"]
    d = decide(job(status=dict(RUNNING), activeDeadlineSeconds=60),
               seen(failure=("DeadlineExceeded", "Job was active longer than specified deadline")), None,
               SETTINGS, NOW)  # fmt: skip
    c = cond.get_condition(d.status["conditions"], cond.FAILED)
    assert (
        c is not None and c["reason"] == cond.DEADLINE_EXCEEDED and "activeDeadlineSeconds=60" in c["message"]
    )


def test_operator_never_overwrites_the_trainers_phase() -> None:
    d = decide(job(status=dict(RUNNING)), seen(pod()), None, SETTINGS, NOW)
    assert "phase" not in d.status
    assert not {"progress", "checkpoints", "artifacts", "metrics"} & set(d.status)


def test_suspend_suspends_the_job_and_resume_unsuspends_it() -> None:
    d = decide(job(status=dict(RUNNING), suspend=True), seen(pod()), None, SETTINGS, NOW)
    assert d.status["phase"] == "Suspended" and d.patch_trainer == {"spec": {"suspend": True}}
    assert cond.get_condition(d.status["conditions"], cond.SUSPENDED)["status"] == "True"  # type: ignore[index]
    st = {**RUNNING, "phase": "Suspended", "pod": None}
    d = decide(job(status=st), seen(suspended=True), None, SETTINGS, NOW)
    assert d.patch_trainer == {"spec": {"suspend": False}} and d.status["phase"] == "Scheduling"
    assert cond.get_condition(d.status["conditions"], cond.SUSPENDED)["status"] == "False"  # type: ignore[index]
    # suspended before any Job existed: nothing is created until it is resumed
    d = decide(job(suspend=True), NONE, None, SETTINGS, NOW)
    assert d.status["phase"] == "Suspended" and d.create is None and not needs_inputs(job(suspend=True), NONE)


def test_deadline_and_ttl_behave_like_batch_jobs() -> None:
    j, plan = _plan_and_job(activeDeadlineSeconds=60)
    assert resources.get_trainer_job(j, plan).spec.active_deadline_seconds == 60  # the Job's own clock
    done = {"phase": "Succeeded", "completionTime": "2026-11-23T11:59:00Z"}
    assert decide(job(status=done, ttlSecondsAfterFinished=30), NONE, None, SETTINGS, NOW).delete_job
    assert not decide(job(status=done, ttlSecondsAfterFinished=300), NONE, None, SETTINGS, NOW).delete_job


# --- Kueue ---------------------------------------------------------------------------------
CANDIDATES = [
    {"product": "NVIDIA-L4", "memoryBytes": 1},
    {"product": "NVIDIA-A100-SXM4-40GB", "memoryBytes": 2},
]
QUEUED = {"phase": "Queued", "trainerJob": "j-trainer", "startTime": "2026-11-23T11:00:00Z",
          "gpu": {"count": 1, "candidates": CANDIDATES}}  # fmt: skip
INSUFFICIENT = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
    "a100-40gb, 1 more needed"
)


def test_a_queued_job_is_created_suspended_for_kueue_and_may_run_on_every_class_that_fits() -> None:
    d = decide(job(), NONE, Inputs(classes=classes(), shape=est.known_shape("llama-3.2-1b"), queue="team-a"),
               SETTINGS, NOW)  # fmt: skip
    assert d.create is not None and d.status["phase"] == "Queued"
    assert d.create.gpu_products == ("NVIDIA-L4", "NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3")
    assert "Kueue picks among them" in d.status["vram"]["reason"]
    assert [c["product"] for c in d.status["gpu"]["candidates"]] == list(d.create.gpu_products)
    assert "product" not in d.status["gpu"]  # known once Kueue admitted it on a flavor
    body = resources.get_trainer_job(job(), d.create)
    assert body.spec.suspend is True and body.metadata.labels[contract.LABEL_QUEUE_NAME] == "team-a"
    terms = body.spec.template.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    (term,) = terms.node_selector_terms
    assert {e.key: e.values for e in term.match_expressions}[contract.LABEL_GPU_PRODUCT] == [
        "NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"]  # fmt: skip
    doc = json.loads(resources.get_config_map(job(), d.create).data[contract.TRAINER_CONFIG_FILE])
    assert doc["placement"]["gpuMemoryBytes"] == 23034 * 2**20  # the trainer plans for the smallest
    # 8B LoRA needs more than an L4 with its margin? No: it fits the L4 too; 70B QLoRA only the H100
    big = decide(job(), NONE, Inputs(classes=classes(), shape=est.known_shape("llama-3.1-70b"), queue="q"),
                 SETTINGS, NOW)  # fmt: skip
    assert big.create is not None and big.create.gpu_products == ("NVIDIA-H100-80GB-HBM3",)


def test_queued_says_kueues_own_words_then_admitted_on_its_flavor() -> None:
    waiting = WorkloadState("job-j-trainer-1a2b3", waiting=INSUFFICIENT)
    d = decide(job(status=dict(QUEUED)), seen(suspended=True, queue="team-a", workload=waiting), None,
               SETTINGS, NOW)  # fmt: skip
    assert d.status["phase"] == "Queued" and INSUFFICIENT in d.status["message"]
    admitted = cond.get_condition(d.status["conditions"], cond.ADMITTED)
    assert admitted is not None and admitted["status"] == "False" and INSUFFICIENT in admitted["message"]
    assert d.status["queue"] == {"name": "team-a", "workload": "job-j-trainer-1a2b3"}
    ok = WorkloadState("job-j-trainer-1a2b3", admitted=True, cluster_queue="kubeft", flavor="a100-40gb")
    d = decide(job(status=dict(QUEUED)), seen(pod(phase="Pending"), queue="team-a", workload=ok,
               gpu_product="NVIDIA-A100-SXM4-40GB"), None, SETTINGS, NOW)  # fmt: skip
    assert d.status["phase"] == "Scheduling"
    assert d.status["message"].startswith("admitted by ClusterQueue kubeft on flavor a100-40gb; pod ")
    assert ("Normal", cond.KUEUE_ADMITTED) in [(t, r) for t, r, _ in d.events]
    admitted = cond.get_condition(d.status["conditions"], cond.ADMITTED)
    assert admitted is not None and admitted["status"] == "True" and "a100-40gb" in admitted["message"]
    assert d.status["gpu"]["product"] == "NVIDIA-A100-SXM4-40GB" and d.status["gpu"]["memoryBytes"] == 2
    assert d.status["queue"] == {"name": "team-a", "clusterQueue": "kubeft", "flavor": "a100-40gb",
                                 "workload": "job-j-trainer-1a2b3"}  # fmt: skip


def test_preemption_queues_the_job_again_with_a_warning_and_costs_no_retry() -> None:
    evicted = WorkloadState("wl", evicted=("Preempted", "Preempted to accommodate a workload (UID: x)"),
                            waiting="Preempted to accommodate a workload (UID: x)")  # fmt: skip
    stopping = pod(disrupted=None, deleting=True)
    d = decide(job(status=dict(RUNNING)), seen(stopping, suspended=True, queue="q", workload=evicted), None,
               SETTINGS, NOW)  # fmt: skip
    assert d.status["phase"] == "Queued" and d.status["restarts"] == 0
    assert "preempted by Kueue" in d.status["message"] and "latest checkpoint" in d.status["message"]
    assert ("Warning", cond.PREEMPTED) in [(t, r) for t, r, _ in d.events]


def test_suspending_a_queued_job_deactivates_its_workload_and_resuming_activates_it() -> None:
    wl = WorkloadState("wl", admitted=True)
    d = decide(job(status=dict(RUNNING), suspend=True), seen(pod(), queue="q", workload=wl), None, SETTINGS,
               NOW)  # fmt: skip
    assert d.workload_active == ("wl", False) and d.patch_trainer is None
    st = {**RUNNING, "phase": "Suspended", "pod": None}
    off = WorkloadState("wl", active=False, evicted=("Deactivated", "The workload is deactivated"))
    d = decide(job(status=st), seen(suspended=True, queue="q", workload=off), None, SETTINGS, NOW)
    assert d.workload_active == ("wl", True) and d.status["phase"] == "Queued"


def test_a_quota_refusal_of_the_jobs_pod_waits_pending_with_the_quotas_words_and_one_event() -> None:
    words = (
        'Error creating: pods "j-trainer-0-x" is forbidden: exceeded quota: gpus, requested: '
        "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=0"
    )
    d = decide(job(status={"phase": "Scheduling", "trainerJob": "j-trainer"}), seen(create_error=words), None,
               SETTINGS, NOW)  # fmt: skip
    assert d.status["phase"] == "Pending" and words in d.status["message"]
    (scheduled,) = [c for c in d.status["conditions"] if c["type"] == cond.SCHEDULED]
    assert (scheduled["status"], scheduled["reason"]) == ("False", cond.QUOTA_EXCEEDED)
    assert [(t, r) for t, r, _ in d.events] == [("Warning", cond.QUOTA_EXCEEDED)]
    again = decide(job(status={**d.status, "trainerJob": "j-trainer"}), seen(create_error=words), None,
                   SETTINGS, NOW)  # fmt: skip
    assert again.events == [] and again.status["message"] == d.status["message"]
    # refused creating the Job itself (a quota on count/jobs.batch): the same condition
    d = quota_wait(job(status={"phase": "Pending"}), "exceeded quota: jobs", NOW)
    assert d.status["phase"] == "Pending" and d.events[0][1] == cond.QUOTA_EXCEEDED


def test_unreadable_model_config_is_a_condition_not_a_crash() -> None:
    bad = Inputs(
        invalid_reason=cond.MODEL_CONFIG_UNAVAILABLE, invalid_message="cannot read s3://m/config.json"
    )
    d = decide(job(), NONE, bad, SETTINGS, NOW)
    c = cond.get_condition(d.status["conditions"], cond.VALIDATED)
    assert c is not None and c["status"] == "False" and c["reason"] == cond.MODEL_CONFIG_UNAVAILABLE
    assert d.create is None


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    c1 = cond.set_condition([], "X", True, "A", "m", generation=1, now="t1")
    c2 = cond.set_condition(c1, "X", True, "B", "m2", generation=2, now="t2")
    c3 = cond.set_condition(c2, "X", False, "C", "m3", generation=2, now="t3")
    assert [c[0]["lastTransitionTime"] for c in (c1, c2, c3)] == ["t1", "t1", "t3"]


def test_settings_come_from_prefixed_environment_variables() -> None:
    s = Settings.from_env({"KUBEFT_NAMESPACES": "a, b", "KUBEFT_MEMORY_MARGIN": "0.2",
                           "KUBEFT_TRAINER_COMMAND": "python -m x"})  # fmt: skip
    assert (
        s.namespaces == ("a", "b") and s.memory_margin == 0.2 and s.trainer_command == ("python", "-m", "x")
    )
    with pytest.raises(ValueError, match="KUBEFT_"):
        Settings.from_env({"KUBEFT_MEMORY_MARGIN": "lots"})


def test_builders_return_kubernetes_models() -> None:
    j, plan = _plan_and_job()
    assert isinstance(resources.get_trainer_job(j, plan), client.V1Job)
    assert isinstance(resources.get_config_map(j, plan), client.V1ConfigMap)


def test_dataset_check_leaves_hub_sources_to_the_trainer_and_reports_unreachable_storage() -> None:
    from kubeft_operator import modelconfig

    modelconfig.clear_cache()
    closed = "http://127.0.0.1:9"  # nothing listens on the discard port
    hub = job(dataset={"source": "hf://datasets/tatsu-lab/alpaca"})
    assert modelconfig.dataset_problem(hub.spec, endpoint=closed, credentials={}, timeout=0.5) is None
    problem = modelconfig.dataset_problem(job().spec, endpoint=closed, credentials={}, timeout=0.5)
    assert problem is not None and problem.reason == cond.DATASET_UNAVAILABLE
    assert problem.message.startswith(
        f"cannot reach {closed} to check spec.dataset.source s3://data/train.jsonl"
    )


def test_the_grace_period_leaves_room_to_save_and_upload_the_final_checkpoint() -> None:
    # QLoRA of a 1B model: a checkpoint of 11.3M fp32 adapter params + 8-bit states is 67.6 MB:
    # 120 s floor + 2 × 67.6 MB at 50 MB/s = 123 s
    j, plan = _plan_and_job()
    assert est.checkpoint_bytes(plan.estimate) == 11_272_192 * (4 + 2)
    assert pod_of(j, plan).spec.termination_grace_period_seconds == 120 + 3
    assert plan.estimate_doc()["checkpointBytes"] == 11_272_192 * 6
    # full fine-tuning saves the whole bf16 model and its states: minutes, not the floor
    j = job(method="full")
    d = decide(j, NONE, Inputs(classes=classes(), shape=est.known_shape("llama-3.2-1b")), SETTINGS, NOW)
    assert d.create is not None
    full = est.checkpoint_bytes(d.create.estimate)
    assert full == d.create.estimate.weights + d.create.estimate.optimizer > 6_000_000_000  # 6.5 GB
    grace = pod_of(j, d.create).spec.termination_grace_period_seconds
    assert grace == 120 + math.ceil(2 * full / 50e6)
    slow = dataclasses.replace(
        d.create, settings=SETTINGS.model_copy(update={"checkpoint_bytes_per_second": 5e6})
    )
    assert slow.grace_period_seconds > 10 * (grace - 120)


def test_only_a_quota_refusal_is_read_as_one() -> None:
    from kubeft_operator.kube import quota_message
    from kubernetes.client.rest import ApiException

    refused = ApiException(status=403)
    refused.body = json.dumps(
        {"kind": "Status", "message": 'pods "j-trainer-0" is forbidden: exceeded quota: gpus'}
    )
    assert quota_message(refused) == 'pods "j-trainer-0" is forbidden: exceeded quota: gpus'
    rbac = ApiException(status=403)
    rbac.body = json.dumps({"message": 'pods is forbidden: User "x" cannot create resource "pods"'})
    assert quota_message(rbac) is None
    assert quota_message(ApiException(status=409)) is None


@pytest.mark.parametrize(
    ("status", "inputs_", "expected"),
    [
        # placed and running: in progress
        ({}, Inputs(classes=classes(), shape=est.known_shape("llama-3.2-1b")), ("False", "True", "False")),
        # nothing fits: someone must act (a bigger GPU, a smaller job)
        ({}, Inputs(classes=classes(), shape=est.known_shape("llama-3.1-70b")), ("False", "False", "True")),
        # a missing Secret: someone must create it
        ({}, Inputs(invalid_reason=cond.SECRET_NOT_FOUND, invalid_message="no"), ("False", "False", "True")),
        # a dataset not uploaded yet (GitOps ordering): it will come
        (
            {},
            Inputs(invalid_reason=cond.DATASET_NOT_FOUND, invalid_message="not yet"),
            ("False", "True", "False"),
        ),
    ],
)
def test_kstatus_conditions_tell_gitops_tools_whether_a_job_progresses_waits_or_needs_someone(
    status: dict[str, Any], inputs_: Inputs, expected: tuple[str, str, str]
) -> None:
    method = "full" if inputs_.shape is not None and inputs_.shape.num_layers == 80 else "qlora"
    d = decide(job(status=status, method=method), NONE, inputs_, SETTINGS, NOW)
    got = {c["type"]: c for c in d.status["conditions"]}
    assert (got["Ready"]["status"], got["Reconciling"]["status"], got["Stalled"]["status"]) == expected
    assert all(got[t]["observedGeneration"] == 1 for t in ("Ready", "Reconciling", "Stalled"))
    assert got["Stalled"]["reason"] == got["Reconciling"]["reason"] != ""


def test_kstatus_ready_on_success_and_stalled_on_failure() -> None:
    running = dict(RUNNING)
    done = decide(job(status=running), seen(pod(phase="Succeeded"), complete=True), None, SETTINGS, NOW)
    got = {c["type"]: c["status"] for c in done.status["conditions"]}
    assert (got["Ready"], got["Reconciling"], got["Stalled"]) == ("True", "False", "False")
    failed = decide(
        job(status=running, backoffLimit=0),
        seen(failed_pod(1), failed=1, failure=("BackoffLimitExceeded", "Job has reached the backoff limit")),
        None, SETTINGS, NOW,
    )  # fmt: skip
    got = {c["type"]: c for c in failed.status["conditions"]}
    assert (got["Ready"]["status"], got["Stalled"]["status"]) == ("False", "True")
    assert got["Stalled"]["reason"] == cond.BACKOFF_LIMIT_EXCEEDED


# --- more than one GPU --------------------------------------------------------------------
def test_two_gpus_on_one_node_run_two_ranks_of_one_pod_with_a_rendezvous() -> None:
    j = job(resources={"gpus": 2})
    d = decide(j, NONE, inputs(), SETTINGS, NOW)
    assert d.create is not None
    # the L4 nodes have one GPU each: the smallest class with two on one node is the A100's
    assert d.create.gpu_products == ("NVIDIA-A100-SXM4-40GB",) and d.create.world_size == 2
    assert d.status["distributed"] == {
        "strategy": "ddp", "worldSize": 2, "nodes": 1, "gpusPerNode": 2, "globalBatch": 2 * 4 * 2,
    }  # fmt: skip
    assert "strategy auto chose ddp (optimizer adamw_8bit cannot use fsdp)" in d.status["vram"]["reason"]
    body = resources.get_trainer_job(j, d.create)
    assert (body.spec.completions, body.spec.parallelism, body.spec.backoff_limit) == (1, 1, 3)
    pod = body.spec.template.spec
    c = pod.containers[0]
    env = {e.name: e.value for e in c.env}
    assert env[contract.ENV_NPROC_PER_NODE] == "2" and env[contract.ENV_NNODES] == "1"
    assert env[contract.ENV_RDZV_ENDPOINT] == "j-trainer-0.j-trainer.ns.svc:29400"
    assert env[contract.ENV_RDZV_ID] == "uid-1" and env[contract.ENV_METRICS_PORTS] == "9400,9401"
    assert [(p.name, p.container_port) for p in c.ports] == [
        ("metrics", 9400),
        ("metrics-1", 9401),
        ("rdzv", 29400),
    ]
    assert c.resources.limits[contract.RESOURCE_GPU] == "2" and pod.subdomain == "j-trainer"
    svc = resources.get_service(j, d.create)
    assert svc.metadata.name == "j-trainer" and svc.spec.cluster_ip == "None"
    assert svc.spec.publish_not_ready_addresses and svc.spec.selector == {
        contract.LABEL_JOB: "j", contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER,
    }  # fmt: skip
    doc = json.loads(resources.get_config_map(j, d.create).data[contract.TRAINER_CONFIG_FILE])
    assert doc["spec"]["distributed"] == {"strategy": "ddp"} and doc["spec"]["resources"]["gpus"] == 2


def test_two_nodes_are_two_pods_of_the_indexed_job_and_a_gang_failure_counts_once_per_pod() -> None:
    j = job(resources={"nodes": 2}, backoffLimit=2)
    d = decide(j, NONE, inputs(), SETTINGS, NOW)
    assert d.create is not None and d.create.gpu_products == ("NVIDIA-L4",)  # two L4 nodes
    body = resources.get_trainer_job(j, d.create)
    assert (body.spec.completions, body.spec.parallelism, body.spec.backoff_limit) == (2, 2, 4)
    assert body.spec.completion_mode == "Indexed"
    env = {e.name: e.value for e in body.spec.template.spec.containers[0].env}
    assert env[contract.ENV_NNODES] == "2" and env[contract.ENV_NPROC_PER_NODE] == "1"
    assert contract.ENV_METRICS_PORTS not in env
    # one GPU, one node: no rendezvous, no Service, no subdomain
    one = decide(job(), NONE, inputs(), SETTINGS, NOW)
    assert one.create is not None and "distributed" not in one.status
    single = resources.get_trainer_job(job(), one.create).spec.template.spec
    assert single.subdomain is None and contract.ENV_RDZV_ENDPOINT not in {
        e.name for e in single.containers[0].env
    }


def test_more_gpus_or_nodes_than_the_cluster_has_is_a_condition_before_any_pod() -> None:
    d = decide(job(resources={"gpus": 8, "nodes": 2}), NONE, inputs(), SETTINGS, NOW)
    assert d.create is None and d.status["phase"] == "Pending"
    c = cond.get_condition(d.status["conditions"], cond.SCHEDULABLE)
    assert c is not None and c["reason"] == cond.NO_GPU_NODES
    assert "no GPU class has 2 ready nodes with 8 GPUs each" in c["message"]


def test_auto_shards_with_fsdp_when_no_replica_fits_one_gpu_but_never_with_a_bitsandbytes_optimizer() -> None:
    fused = {"optimizer": "adamw_torch_fused"}
    d = decide(job(method="full", resources={"gpus": 2}, hyperparameters=fused), NONE, inputs("llama-3.1-8b"),
               SETTINGS, NOW)  # fmt: skip
    # a replica of full 8B (92 GiB with DDP's buckets) fits no GPU here; sharded over 2 it fits an H100
    assert d.create is not None and d.create.strategy == "fsdp"
    assert d.create.gpu_products == ("NVIDIA-H100-80GB-HBM3",)
    assert "strategy auto chose fsdp (no replica fits one GPU: sharded)" in d.status["vram"]["reason"]
    doc = json.loads(resources.get_config_map(job(), d.create).data[contract.TRAINER_CONFIG_FILE])
    assert doc["spec"]["distributed"] == {"strategy": "fsdp"}
    # the default 8-bit optimizer cannot step FSDP's shards: DDP (its smaller states fit an H100)
    d = decide(job(method="full", resources={"gpus": 2}), NONE, inputs("llama-3.1-8b"), SETTINGS, NOW)
    assert d.create is not None and d.create.strategy == "ddp"
    assert "optimizer adamw_8bit cannot use fsdp" in d.status["vram"]["reason"]
    # with a replica that fits, auto keeps DDP
    d = decide(job(resources={"gpus": 2}, hyperparameters=fused), NONE, inputs(), SETTINGS, NOW)
    assert d.create is not None and d.create.strategy == "ddp"
    assert "strategy auto chose ddp (a replica fits one GPU)" in d.status["vram"]["reason"]


def test_the_operators_requests_are_limited_to_its_qps_with_bursts() -> None:
    from kubeft_operator.kube import TokenBucket

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(qps=10, burst=5, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):  # a burst goes through at once
        bucket.acquire()
    assert slept == []
    for _ in range(10):  # then one request per 1/qps
        bucket.acquire()
    assert len(slept) == 10 and all(abs(s - 0.1) < 1e-9 for s in slept)
    now[0] += 100  # idle: the bucket refills, but never above the burst
    for _ in range(5):
        bucket.acquire()
    assert len(slept) == 10
    bucket.acquire()
    assert len(slept) == 11 and bucket.waited > 1.0


def test_the_work_queue_dedupes_holds_a_key_being_processed_and_forgets_a_void_schedule() -> None:
    from kubeft_operator.workqueue import WorkQueue

    now = [0.0]
    q: WorkQueue[str] = WorkQueue(clock=lambda: now[0])
    q.add("a")
    q.add("a")  # already queued: once
    assert q.get(timeout=0) == "a" and q.get(timeout=0) is None
    q.add("a")  # changed while being processed: queued again only when done
    assert q.get(timeout=0) is None
    q.done("a")
    assert q.get(timeout=0) == "a"
    q.done("a")
    q.add_after("b", 5)
    assert q.get(timeout=0) is None
    now[0] = 5.0
    assert q.get(timeout=0) == "b"
    q.done("b")
    q.add_after("b", 5)  # a backoff scheduled while the job waited...
    q.forget("b")  # ...void once it waits for nothing: a finished job is not looked at again
    now[0] = 20.0
    assert q.get(timeout=0) is None
