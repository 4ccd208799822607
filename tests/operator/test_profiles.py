"""FineTuneProfile: defaults filled in, limits refused at `kubectl apply` by the API server's own
ValidatingAdmissionPolicy, and checked again by the operator when a profile changed under a job."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import contract
from kubeft import profile as profiles

SECRET = "storage-creds"  # the credentials fixture's Secret


def profile_body(name: str, endpoint: str, **limits: Any) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": profiles.KIND,
        "metadata": {"name": name},
        "spec": {
            "defaults": {
                "storage": {"endpoint": endpoint, "bucket": "kubeft-team", "credentialsSecret": SECRET},
                "ttlSecondsAfterFinished": 3600,
            },
            "limits": {
                "methods": ["qlora", "lora"],
                "maxSeqLength": 4096,
                "maxGpus": 2,
                "modelSourcePrefixes": ["s3://models/"],
                "storageEndpointPrefixes": [endpoint],
                **limits,
            },
        },
    }


# --- the Python half (the operator's re-check) ------------------------------------------
def test_defaults_fill_only_what_the_job_leaves_out_and_limits_read_like_the_policy() -> None:
    p = profiles.Profile.from_body(profile_body("team-a", "http://minio:9000", gpuProducts=["NVIDIA-L4"]))
    spec = {"model": {"source": "s3://models/m/"}, "dataset": {"source": "s3://d/x"}, "method": "qlora",
            "storage": {"bucket": "mine"}}  # fmt: skip
    out = p.apply_defaults(spec)
    assert out["storage"] == {"bucket": "mine", "endpoint": "http://minio:9000", "credentialsSecret": SECRET}
    assert out["ttlSecondsAfterFinished"] == 3600 and out["resources"]["gpuProducts"] == ["NVIDIA-L4"]
    assert spec["storage"] == {"bucket": "mine"}  # the stored object is not touched
    assert p.violations(out) == []
    bad = {**out, "method": "full", "hyperparameters": {"maxSeqLength": 8192},
           "resources": {"gpus": 2, "nodes": 2, "gpuProducts": ["NVIDIA-H100-80GB-HBM3"]}}  # fmt: skip
    said = p.violations(bad)
    assert said == [
        "spec.method full: use one of qlora, lora",
        "spec.resources.gpuProducts may only name NVIDIA-L4",
        "4 GPUs (gpus x nodes) is above maxGpus 2",
        "spec.hyperparameters.maxSeqLength 8192 is above maxSeqLength 4096",
    ]


# --- the API server and the operator ----------------------------------------------------
@pytest.fixture()
def profiled(custom_objects: Any, core_v1: Any, namespace: str, stack: Any, crds: list[str]) -> Iterator[str]:
    """A FineTuneProfile, and the test's namespace labelled with it."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    custom_objects.create_cluster_custom_object(
        contract.GROUP, contract.VERSION, profiles.PLURAL, profile_body(name, stack.minio_endpoint)
    )
    core_v1.patch_namespace(namespace, {"metadata": {"labels": {profiles.LABEL_PROFILE: name}}})
    yield name
    custom_objects.delete_cluster_custom_object(contract.GROUP, contract.VERSION, profiles.PLURAL, name)


def refusal(jobs: Any, body: dict[str, Any]) -> str:
    try:
        jobs.create(body)
    except ApiException as exc:
        return str(json.loads(exc.body)["message"])
    jobs.delete(body["metadata"]["name"])
    return ""


def test_a_profile_refuses_at_apply_fills_defaults_and_rechecks_before_the_job_starts(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, custom_objects: Any, api_client: Any,
    ftj: Any, profiled: str, bucket: str, s3_dataset: Any,
) -> None:  # fmt: skip
    admission = client.AdmissionregistrationV1Api(api_client)

    def bound() -> Any:
        try:
            return admission.read_validating_admission_policy_binding(f"{profiles.POLICY}-{profiled}")
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None

    with run_operator() as runner:
        # the operator binds the policy to the profile; the API server enforces it within a moment
        binding = ftj.wait_for(bound, what="the profile's policy binding")
        # every profiled namespace (a job may choose this profile); the policy checks a job only
        # against the profile it gets
        (selector,) = binding.spec.match_resources.namespace_selector.match_expressions
        assert (selector.key, selector.operator) == (profiles.LABEL_PROFILE, "Exists")
        message = ftj.wait_for(lambda: refusal(jobs, ftj.job_manifest("too-full", method="full")),
                               what="the policy refusing method full")  # fmt: skip
        assert (
            f"spec.method full is not allowed by FineTuneProfile {profiled}: use one of qlora, lora"
            in message
        )
        long = ftj.job_manifest("too-long", hyperparameters={"maxSeqLength": 8192})
        assert f"is above FineTuneProfile {profiled}'s maxSeqLength 4096" in refusal(jobs, long)
        hub = ftj.job_manifest("from-hub", model={"source": "hf://someone/model", "architecture": ftj.shape(
            "llama-3.2-1b")})  # fmt: skip
        assert "must start with one of s3://models/" in refusal(jobs, hub)
        many = ftj.job_manifest("too-many", resources={"gpus": 2, "nodes": 2})
        assert "asks for 4 GPUs (gpus x nodes)" in refusal(jobs, many)

        # no storage block: the profile's defaults (its Secret, endpoint and bucket)
        bare = ftj.job_manifest("bare")
        bare["spec"].pop("storage")
        jobs.create(bare)
        placed = ("Scheduling", "Initializing")
        ftj.wait_for(lambda: (jobs.get("bare").get("status") or {}).get("phase") in placed, what="placed")
        config = json.loads(core_v1.read_namespaced_config_map("bare-config", jobs.ns).data["job.json"])
        assert config["spec"]["storage"]["bucket"] == "kubeft-team"
        assert config["spec"]["storage"]["credentialsSecret"] == SECRET
        assert config["spec"]["ttlSecondsAfterFinished"] == 3600

        # a job made within the limits, waiting for its dataset while the profile is tightened: when
        # the data arrives, the operator checks again and refuses to start it (ProfileViolation)
        later = f"s3://{bucket}/uploads/later-{profiled}.jsonl"
        jobs.create(
            ftj.job_manifest("later", dataset={"source": later}, hyperparameters={"maxSeqLength": 4096})
        )

        def waiting() -> bool:
            return (ftj.condition(jobs.get("later"), "Validated") or {}).get("reason") == "DatasetNotFound"

        ftj.wait_for(waiting, what="waiting for its dataset")
        custom_objects.patch_cluster_custom_object(
            contract.GROUP,
            contract.VERSION,
            profiles.PLURAL,
            profiled,
            {"spec": {"limits": {"maxSeqLength": 2048}}},
        )
        s3_dataset(later)

        def violation() -> Any:
            c = ftj.condition(jobs.get("later"), "Validated")
            return c if c and c["reason"] == "ProfileViolation" else None

        c = ftj.wait_for(violation, what="a ProfileViolation condition")
        assert "maxSeqLength 4096 is above maxSeqLength 2048" in c["message"]
        assert jobs.get("later")["status"]["phase"] == "Pending"
        assert (
            client.BatchV1Api(api_client)
            .list_namespaced_job(jobs.ns, label_selector=f"{contract.LABEL_JOB}=later")
            .items
            == []
        )
    assert runner.exception is None
