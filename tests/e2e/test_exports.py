"""Exports a user can serve, through the whole product: GGUF files and OCI artifacts.

The quickstart (examples/quickstart.yaml) asks for gguf-q4_k_m and pushes every export to the
local stack's registry (CNCF distribution, basic auth). Each artifact is pulled back with ORAS
and used: the adapter loads with peft onto the base model, the GGUF loads in llama.cpp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubeft import contract, demo
from kubeft.dev import stack as devstack

from .conftest import apply
from .test_examples import conditions, wait_status
from .test_quickstart import quickstart

pytestmark = [pytest.mark.stack, pytest.mark.slow]

FAST = {"epochs": 4}  # 60 steps: enough to see the answers learnt


def _registry(stack: Any, user: str | None = None, password: str | None = None) -> Any:
    import oras.provider

    c = oras.provider.Registry(hostname=stack.registry, insecure=True, auth_backend="basic")
    c.auth.set_basic_auth(user or stack.registry_user, password or stack.registry_password)
    return c


def _pull(stack: Any, reference: str, digest: str, out: Path) -> tuple[dict[str, Any], list[Path]]:
    """The manifest and the files of an artifact, pulled by digest (what the status pins)."""
    registry = _registry(stack)
    pinned = f"{reference.rsplit(':', 1)[0]}@{digest}"
    manifest = registry.get_manifest(pinned)
    files = registry.pull(target=pinned, outdir=str(out))
    return manifest, [Path(f) for f in files]


def refused_before_any_pod(core_v1: Any, custom_objects: Any, ns: str, name: str) -> dict[str, Any]:
    """The Validated=False condition the job gets, once it has it; no trainer pod was made."""
    status = wait_status(
        custom_objects, ns, name, lambda s: conditions(s).get("Validated", {}).get("status") == "False"
    )
    assert not core_v1.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={name}").items
    return dict(conditions(status)["Validated"])


def test_quickstart_pushes_adapter_merged_and_gguf_that_load_back(
    stack: Any, api_client: Any, e2e_namespace: str, tmp_path: Path
) -> None:
    import llama_cpp
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubeft.dev import tinymodel

    ns, name = e2e_namespace, "exports"
    apply(stack, ns, quickstart(name, hyperparameters=FAST))
    job = demo.watch(api_client, timeout=900, namespace=ns, name=name)
    assert job is not None
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    artifacts = status["artifacts"]
    assert artifacts["gguf-q4_k_m"].endswith("/artifacts/gguf-q4_k_m/")
    pushed = {a["format"]: a for a in artifacts["oci"]}
    assert set(pushed) == {"adapter", "merged-16bit", "gguf-q4_k_m"}
    for fmt, item in pushed.items():
        assert item["reference"] == f"{stack.registry}/demo/quickstart:{name}-{fmt}"
        assert item["digest"].startswith("sha256:")

    # the adapter: pulled with ORAS, loaded with peft onto the base model, equal to the merged model
    manifest, files = _pull(stack, **_ref(pushed["adapter"]), out=tmp_path / "adapter")
    assert manifest["config"]["mediaType"] == "application/vnd.kubeft.model.config.v1+json"
    types = {
        layer["annotations"]["org.opencontainers.image.title"]: layer["mediaType"]
        for layer in manifest["layers"]
    }
    assert types["adapter_model.safetensors"] == "application/vnd.kubeft.model.safetensors"
    assert types["adapter_config.json"] == "application/vnd.kubeft.model.file"
    assert manifest["annotations"]["io.kubeft.method"] == "qlora"
    assert {f.name for f in files} >= {"adapter_model.safetensors", "adapter_config.json"}
    _, merged_files = _pull(stack, **_ref(pushed["merged-16bit"]), out=tmp_path / "merged")
    assert any(f.name == "model.safetensors" for f in merged_files)
    base_dir = devstack.CACHE / "demo" / "tiny-llama"  # what demo.upload_inputs put in MinIO
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    q, a = tinymodel.QA[0]
    ids = tok(f"{q} {a}", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lora = with_adapter(input_ids=ids).logits
        flat = merged(input_ids=ids).logits
        untrained = plain(input_ids=ids).logits
    scale = lora.abs().max().item()
    # trained on the NF4 base (QLoRA): the merged bf16 model is base-dequantised + adapter, so it is close
    # to the adapter on the original base but not equal; the adapter moved the model much more than that
    assert (untrained - lora).abs().max().item() > 2 * (flat - lora).abs().max().item()
    assert (flat - lora).abs().max().item() < 0.25 * scale

    # the GGUF: pulled with ORAS, loaded in llama.cpp with its Modelfile beside it, answers
    manifest, files = _pull(stack, **_ref(pushed["gguf-q4_k_m"]), out=tmp_path / "gguf")
    types = {
        layer["annotations"]["org.opencontainers.image.title"]: layer["mediaType"]
        for layer in manifest["layers"]
    }
    assert types == {
        "model-q4_k_m.gguf": "application/vnd.kubeft.model.gguf",
        "Modelfile": "application/vnd.kubeft.ollama.modelfile",
    }
    assert "FROM ./model-q4_k_m.gguf" in (tmp_path / "gguf" / "Modelfile").read_text()
    llm = llama_cpp.Llama(str(tmp_path / "gguf" / "model-q4_k_m.gguf"), n_ctx=256, verbose=False)
    try:
        reply: Any = llm.create_chat_completion(
            messages=[{"role": "user", "content": q}], max_tokens=24, temperature=0.0
        )
    finally:
        llm.close()
    text = reply["choices"][0]["message"]["content"]
    print(f"llama.cpp, Q4_K_M from the registry: {q!r} → {text!r}")
    assert reply["usage"]["completion_tokens"] > 0


def _ref(item: dict[str, str]) -> dict[str, str]:
    return {"reference": item["reference"], "digest": item["digest"]}


def _docker_secret(core: Any, ns: str, name: str, dockerconfigjson: str) -> None:
    core.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            type="kubernetes.io/dockerconfigjson",
            string_data={contract.SECRET_DOCKER_CONFIG: dockerconfigjson},
        ),
    )


def test_wrong_registry_credentials_fail_the_job_and_keep_the_s3_artifacts(
    stack: Any, api_client: Any, core_v1: Any, e2e_namespace: str
) -> None:
    ns, name = e2e_namespace, "badcreds"
    _docker_secret(core_v1, ns, "wrong-registry-creds", stack.registry_auth(password="not-the-password"))
    export = {
        "formats": ["adapter", "merged-16bit"],
        "oci": {
            "repository": f"{stack.registry}/demo/quickstart",
            "credentialsSecret": "wrong-registry-creds",
        },
    }
    apply(stack, ns, quickstart(name, hyperparameters={"epochs": 1}, export=export))
    job = demo.watch(api_client, timeout=900, namespace=ns, name=name)
    assert job is not None
    status = job["status"]
    assert status["phase"] == "Failed", status
    failed = conditions(status)["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "ExportFailed"
    reference = f"{stack.registry}/demo/quickstart:{name}-adapter"
    # which export, where, and why: the first push (the adapter) was refused
    assert f"export.oci: pushing adapter to {reference} failed" in failed["message"], failed
    assert "the registry refused the credentials of export.oci.credentialsSecret" in failed["message"]
    assert status.get("restarts", 0) == 0  # not retried: new credentials need a new job
    # what reached object storage is kept, and the status still says where
    mc = stack.minio_client()
    for key in ("adapter", "merged"):
        bucket, prefix = status["artifacts"][key].removeprefix("s3://").split("/", 1)
        names = [o.object_name for o in mc.list_objects(bucket, prefix=prefix, recursive=True)]
        assert any(n.endswith(".safetensors") for n in names), (key, names)
    assert "oci" not in status["artifacts"]
    assert "kept in object storage" in status["progress"]["message"]


def test_gguf_of_an_architecture_the_converter_refuses_is_stopped_before_any_pod(
    stack: Any, core_v1: Any, custom_objects: Any, e2e_namespace: str
) -> None:
    ns, name = e2e_namespace, "gguf-arch"
    config = json.loads((devstack.CACHE / "demo" / "tiny-llama" / "config.json").read_text())
    config["architectures"] = ["SpeechT5ForTextToSpeech"]
    mc = stack.minio_client()
    body = json.dumps(config).encode()
    import io

    mc.put_object(demo.MODEL_BUCKET, "unsupported-arch/config.json", io.BytesIO(body), len(body))
    manifest = quickstart(
        name,
        model={"source": f"s3://{demo.MODEL_BUCKET}/unsupported-arch/"},
        export={"formats": ["adapter", "gguf-q4_k_m"]},
    )
    manifest["spec"]["export"].pop("oci")
    apply(stack, ns, manifest)
    validated = refused_before_any_pod(core_v1, custom_objects, ns, name)
    assert validated["reason"] == "InvalidSpec"
    assert "does not support the architecture SpeechT5ForTextToSpeech" in validated["message"]


def test_oci_credentials_secret_that_does_not_exist_is_reported_before_any_pod(
    stack: Any, core_v1: Any, custom_objects: Any, e2e_namespace: str
) -> None:
    ns, name = e2e_namespace, "no-registry-secret"
    export = {"oci": {"repository": f"{stack.registry}/demo/quickstart", "credentialsSecret": "nowhere"}}
    apply(stack, ns, quickstart(name, export=export))
    validated = refused_before_any_pod(core_v1, custom_objects, ns, name)
    assert validated["reason"] == "SecretNotFound"
    assert "export.oci.credentialsSecret 'nowhere' not found" in validated["message"]
