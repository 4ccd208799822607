"""Every example in examples/ is accepted by the API server and placed by the operator.

The big ones are placed, not trained: their trainer pods (hf:// models, no hub here)
are not what these tests look at.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeft import contract

from .conftest import apply, wait_status

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def delete_and_wait(custom_objects: Any, core_v1: Any, ns: str, name: str, timeout: float = 150) -> None:
    """Deletes a job and waits until its pods are gone (cascade delete), so later tests find GPUs free."""
    custom_objects.delete_namespaced_custom_object(
        contract.GROUP, contract.VERSION, ns, contract.PLURAL, name
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={name}").items:
        assert time.monotonic() < deadline, f"pods of {ns}/{name} outlived the job by {timeout:.0f}s"
        time.sleep(0.5)


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


def placed(status: dict[str, Any]) -> bool:
    """Placed on a GPU: the namespace has a Kueue queue, so once Kueue admitted it on a flavor."""
    return conditions(status).get("Schedulable", {}).get("status") == "True" and bool(
        (status.get("gpu") or {}).get("product")
    )


@pytest.mark.parametrize(
    ("example", "method", "products"),
    [
        ("qlora-llama-3.1-8b-alpaca.yaml", "qlora", {"NVIDIA-L4"}),
        ("lora-qwen2.5-7b-sharegpt.yaml", "lora", {"NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3"}),
        # 12.4 GiB with the margin: an L4 when one is free (other tests' pods may hold both)
        ("full-llama-3.2-1b.yaml", "full", {"NVIDIA-L4", "NVIDIA-A100-SXM4-40GB"}),
        # auto: the most accurate method that fits the largest class (full 8B needs an 80 GB GPU)
        ("auto-method.yaml", "full", {"NVIDIA-H100-80GB-HBM3"}),
        # 4 × 2,048 tokens through the trainer's chunked LM head: 5.6 GiB, an L4 (when one is free)
        ("pvc-llama-3.2-1b.yaml", "lora", {"NVIDIA-L4", "NVIDIA-A100-SXM4-40GB"}),
    ],
)
def test_example_is_accepted_and_placed(
    stack: Any,
    core_v1: Any,
    custom_objects: Any,
    e2e_namespace: str,
    s3_dataset: Any,
    example: str,
    method: str,
    products: set[str],
) -> None:
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    name = manifest["metadata"]["name"]
    claim = contract.pvc_claim(manifest["spec"]["model"]["source"])
    if claim:  # the operator places a job once its claim exists (binding is the cluster's business)
        core_v1.create_namespaced_persistent_volume_claim(
            e2e_namespace,
            {"metadata": {"name": claim}, "spec": {"accessModes": ["ReadOnlyMany"],
                                                  "resources": {"requests": {"storage": "1Gi"}}}},
        )  # fmt: skip
    else:
        s3_dataset(manifest["spec"]["dataset"]["source"])
    apply(stack, e2e_namespace, manifest)
    status = wait_status(custom_objects, e2e_namespace, name, placed)
    assert status["vram"]["method"] == method
    assert status["gpu"]["product"] in products, status["gpu"]
    assert status["vram"]["estimatedBytes"] * 1.1 <= status["gpu"]["memoryBytes"]
    delete_and_wait(custom_objects, core_v1, e2e_namespace, name)


def test_suspended_example_gets_no_pod_until_resumed(
    stack: Any, core_v1: Any, custom_objects: Any, e2e_namespace: str, s3_dataset: Any
) -> None:
    manifest = yaml.safe_load((EXAMPLES / "suspended.yaml").read_text())
    name = manifest["metadata"]["name"]
    s3_dataset(manifest["spec"]["dataset"]["source"])
    apply(stack, e2e_namespace, manifest)
    wait_status(custom_objects, e2e_namespace, name, lambda s: s.get("phase") == "Suspended")
    time.sleep(3)
    pods = core_v1.list_namespaced_pod(e2e_namespace, label_selector=f"{contract.LABEL_JOB}={name}").items
    assert pods == []
    custom_objects.patch_namespaced_custom_object(
        contract.GROUP, contract.VERSION, e2e_namespace, contract.PLURAL, name, {"spec": {"suspend": False}}
    )
    wait_status(custom_objects, e2e_namespace, name, lambda s: bool(s.get("pod")))
    delete_and_wait(custom_objects, core_v1, e2e_namespace, name)


def test_gitops_folder_renders_and_its_jobs_are_accepted(
    stack: Any, core_v1: Any, custom_objects: Any, e2e_namespace: str, s3_dataset: Any
) -> None:
    rendered = subprocess.run(
        [str(stack.bin_dir / "kubectl"), "kustomize", str(EXAMPLES / "gitops")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert {d["kind"] for d in docs} == {"Namespace", "FineTuneJob"}
    jobs = [d for d in docs if d["kind"] == "FineTuneJob"]
    assert all(
        j["metadata"]["namespace"] == "team-a" and j["metadata"]["labels"]["team"] == "team-a" for j in jobs
    )
    for job in jobs:  # the API server validates them (in the test's namespace: team-a is not ours)
        job["metadata"].pop("namespace")
        s3_dataset(job["spec"]["dataset"]["source"])
        apply(stack, e2e_namespace, job)
        status = wait_status(custom_objects, e2e_namespace, job["metadata"]["name"], placed)
        assert status["gpu"]["product"]
        delete_and_wait(custom_objects, core_v1, e2e_namespace, job["metadata"]["name"])
