"""The API server itself refuses bad FineTuneJobs, with a message a user can act on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.stack

BAD: list[tuple[str, dict[str, Any], str]] = [
    # (what is wrong, spec keys replaced, text the API server's message must contain)
    ("method not in the enum", {"method": "dpo"}, 'supported values: "qlora", "lora", "full", "auto"'),
    ("model source not a URI", {"model": {"source": "llama-3"}}, "model.source must be s3://"),
    ("model source with http", {"model": {"source": "https://x/y"}}, "model.source must be s3://"),
    ("pvc model without architecture", {"model": {"source": "pvc://models/llama/"}},
     "model.architecture is required with a pvc:// model"),
    ("dataset without source", {"dataset": {"format": "alpaca"}}, "spec.dataset.source: Required value"),
    ("dataset source bucket only", {"dataset": {"source": "s3://data"}}, "dataset.source must be s3://"),
    ("dataset format unknown", {"dataset": {"source": "s3://dd/x.jsonl", "format": "csv"}}, '"alpaca"'),
    ("eval split and source", {"dataset": {"source": "s3://dd/x", "eval": {"split": 0.1, "source": "s3://dd/e"}}},
     "either split or source"),
    ("eval split zero", {"dataset": {"source": "s3://dd/x", "eval": {"split": 0}}}, "greater than 0"),
    ("learning rate zero", {"hyperparameters": {"learningRate": 0}}, "should be greater than 0"),
    ("batch size zero", {"hyperparameters": {"batchSize": 0}}, "should be greater than or equal to 1"),
    ("max seq length too small", {"hyperparameters": {"maxSeqLength": 8}}, "greater than or equal to 16"),
    ("max seq length too large", {"hyperparameters": {"maxSeqLength": 262144}}, "or equal to 131072"),
    ("lora r too large", {"hyperparameters": {"lora": {"r": 2048}}}, "less than or equal to 1024"),
    ("all-linear with names", {"hyperparameters": {"lora": {"targetModules": ["all-linear", "q_proj"]}}},
     "list it alone"),
    ("optimizer unknown", {"hyperparameters": {"optimizer": "lion"}}, '"adamw_8bit"'),
    ("export format unknown", {"export": {"formats": ["gguf"]}}, '"merged-16bit"'),
    ("gguf type unknown", {"export": {"formats": ["gguf-q5_k_s"]}},
     'supported values: "adapter", "merged-16bit", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"'),
    ("oci without repository", {"export": {"oci": {"credentialsSecret": "registry-creds"}}},
     "export.oci.repository is required: the registry and repository to push the exports to"),
    ("oci repository without registry", {"export": {"oci": {"repository": "models"}}},
     "export.oci.repository must be <registry host[:port]>/<path>"),
    ("oci repository with a tag", {"export": {"oci": {"repository": "ghcr.io/acme/models:v1"}}},
     "without a tag"),
    ("adapter export with full", {"method": "full", "export": {"formats": ["adapter"]}}, "a LoRA method"),
    ("lora settings with full", {"method": "full", "hyperparameters": {"lora": {"r": 8}}},
     "only used by the qlora and lora methods"),
    ("no credentials", {"storage": {"bucket": "kubeft"}},
     "spec.storage.credentialsSecret or spec.storage.roleArn: Required value"),
    ("secret and role", {"storage": {"credentialsSecret": "c", "roleArn": "arn:aws:iam::1:role/r"}},
     "storage.credentialsSecret and storage.roleArn: name one"),
    ("role not an ARN", {"storage": {"roleArn": "team-a-role"}}, "storage.roleArn must be an IAM role ARN"),
    ("bad bucket name", {"storage": {"credentialsSecret": "c", "bucket": "Bad_X"}}, "spec.storage.bucket"),
    ("endpoint not a URL", {"storage": {"credentialsSecret": "c", "endpoint": "minio:9000"}},
     "storage.endpoint must be an http://"),
    ("gpus out of range", {"resources": {"gpus": 16}}, "less than or equal to 8"),
    ("no gpus on two nodes", {"resources": {"gpus": 0, "nodes": 2}}, "greater than or equal to 1"),
    ("fsdp on one gpu", {"distributed": {"strategy": "fsdp"}}, "fsdp shards over several GPUs"),
    ("unknown strategy", {"distributed": {"strategy": "zero3"}}, "Unsupported value"),
    ("fsdp with an 8-bit optimizer", {"distributed": {"strategy": "fsdp"}, "resources": {"gpus": 2}},
     "fsdp cannot use a bitsandbytes optimizer"),
    ("gpu memory not a quantity", {"resources": {"gpuMemory": "lots"}}, "auto or a positive quantity"),
    ("negative backoff limit", {"backoffLimit": -1}, "greater than or equal to 0"),
    ("architecture heads mismatch", {"model": {"source": "s3://models/m/", "architecture": {
        "hiddenSize": 64, "numLayers": 2, "numHeads": 6, "numKvHeads": 4, "intermediateSize": 128,
        "vocabSize": 100}}}, "multiple of numKvHeads"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "spec", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_spec_is_rejected_with_a_readable_message(
    jobs: Any, ftj: Any, what: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as err:
        jobs.create(ftj.job_manifest("bad", **spec))
    assert err.value.status == 422, what
    text = json.loads(err.value.body)["message"]
    assert message in text, text


def test_a_role_instead_of_a_secret_is_accepted(jobs: Any, ftj: Any) -> None:
    """Web identity: no Secret named, a role (AWS's or MinIO's form) instead."""
    for name, arn in (
        ("aws", "arn:aws:iam::123456789012:role/team-a"),
        ("minio", "arn:minio:iam:::role/x-Y_1"),
    ):
        obj = jobs.create(ftj.job_manifest(name, storage={"bucket": "kubeft", "roleArn": arn}))
        assert obj["spec"]["storage"] == {"bucket": "kubeft", "roleArn": arn}


def test_too_long_name_is_rejected(jobs: Any, ftj: Any) -> None:
    with pytest.raises(ApiException) as err:
        jobs.create(ftj.job_manifest("x" * 53))
    assert "at most 52 characters" in json.loads(err.value.body)["message"]


def test_defaults_are_filled_in_by_the_api_server(jobs: Any, ftj: Any) -> None:
    obj = jobs.create(ftj.job_manifest("defaults"))
    spec = obj["spec"]
    assert spec["hyperparameters"]["batchSize"] == 2
    assert spec["hyperparameters"]["maxSeqLength"] == 2048
    assert spec["hyperparameters"]["packing"] is True
    assert spec["dataset"]["format"] == "auto" and spec["dataset"]["trainOn"] == "responses"
    assert spec["resources"] == {"gpus": 1, "nodes": 1, "gpuMemory": "auto"}
    assert spec["distributed"] == {"strategy": "auto"}
    assert spec["backoffLimit"] == 3 and spec["suspend"] is False


def test_training_fields_are_immutable_once_started_but_suspend_is_not(jobs: Any, ftj: Any) -> None:
    jobs.create(ftj.job_manifest("immutable"))
    jobs.patch("immutable", {"spec": {"hyperparameters": {"batchSize": 4}}})  # not started: allowed
    jobs.patch_status("immutable", {"phase": "Training", "startTime": "2026-11-23T10:00:00Z"})
    with pytest.raises(ApiException) as err:
        jobs.patch("immutable", {"spec": {"hyperparameters": {"batchSize": 8}}})
    assert "cannot change once the job has started" in json.loads(err.value.body)["message"]
    jobs.patch("immutable", {"spec": {"suspend": True}})
    assert jobs.get("immutable")["spec"]["suspend"] is True
