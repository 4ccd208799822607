"""Tenancy: bad FineTuneProfiles and profile-violating jobs refused with readable words, a job
choosing among the profiles its namespace allows, and two tenants kept apart (checkpoints of
another namespace, endpoints outside the profile: refused at apply and by the operator)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import contract
from kubeft import profile as profiles
from kubeft.kubeapi import create_or_replace

SECRET = "storage-creds"  # the credentials fixture's Secret
MINIO = "http://127.0.0.1:9000"  # replaced by the stack's endpoint where it matters


def profile_spec(endpoint: str = MINIO, bucket: str = "kubeft-team", **limits: Any) -> dict[str, Any]:
    return {
        "defaults": {"storage": {"endpoint": endpoint, "bucket": bucket, "credentialsSecret": SECRET}},
        "limits": {
            "methods": ["qlora", "lora"],
            "maxSeqLength": 4096,
            "maxGpus": 2,
            "maxNodes": 1,
            "maxEpochs": 3,
            "gpuProducts": ["NVIDIA-L4", "NVIDIA-A100-SXM4-40GB"],
            "modelSourcePrefixes": ["s3://models/", "hf://meta-llama/"],
            "storageEndpointPrefixes": [endpoint],
            **limits,
        },
    }


def make_profile(custom_objects: Any, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": contract.API_VERSION,
        "kind": profiles.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
    custom_objects.create_cluster_custom_object(contract.GROUP, contract.VERSION, profiles.PLURAL, body)


def api_message(exc: ApiException) -> str:
    return str(json.loads(exc.body)["message"])


# --- bad profiles: the CRD's schema and CEL rules --------------------------------------
BAD_PROFILES: dict[str, tuple[dict[str, Any], str]] = {
    "no-gpus": (profile_spec(maxGpus=0), "spec.limits.maxGpus: Invalid value: 0"),
    "unknown-method": (profile_spec(methods=["sft"]), 'spec.limits.methods[0]: Unsupported value: "sft"'),
    "no-methods": (profile_spec(methods=[]), "spec.limits.methods: Invalid value"),
    "method-twice": (
        profile_spec(methods=["qlora", "qlora"]),
        'spec.limits.methods[1]: Duplicate value: "qlora"',
    ),
    "zero-epochs": (profile_spec(maxEpochs=0), "spec.limits.maxEpochs: Invalid value: 0"),
    "source-not-a-uri": (
        profile_spec(modelSourcePrefixes=["models/"]),
        "limits.modelSourcePrefixes: each must start with s3://, hf:// or pvc://",
    ),
    "endpoint-without-scheme": (
        profile_spec(storageEndpointPrefixes=["minio:9000"]),
        "limits.storageEndpointPrefixes: each must be an http:// or https:// URL with a host",
    ),
    "defaults-outside-limits": (
        profile_spec(storageEndpointPrefixes=["https://s3.internal"]),
        "defaults.storage.endpoint must start with one of limits.storageEndpointPrefixes",
    ),
    "more-nodes-than-gpus": (
        profile_spec(maxGpus=2, maxNodes=4),
        "limits.maxNodes cannot be above limits.maxGpus",
    ),
    "hub-outside-limits": (
        {
            **profile_spec(hubEndpointPrefixes=["https://hf.internal"]),
            "defaults": {"hubEndpoint": "https://huggingface.co"},
        },
        "defaults.hubEndpoint must start with one of limits.hubEndpointPrefixes",
    ),
    "unknown-export-format": (
        {"defaults": {"exportFormats": ["onnx"]}},
        'spec.defaults.exportFormats[0]: Unsupported value: "onnx"',
    ),
    "adapter-for-full-only": (
        {"defaults": {"exportFormats": ["adapter"]}, "limits": {"methods": ["full"]}},
        "defaults.exportFormats cannot hold adapter when limits.methods only allows full",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_a_bad_profile_is_refused_naming_the_profile_and_the_field(
    custom_objects: Any, crds: list[str], case: str
) -> None:
    spec, expected = BAD_PROFILES[case]
    name = f"bad-{case}"
    with pytest.raises(ApiException) as refused:
        make_profile(custom_objects, name, spec)
    message = api_message(refused.value)
    assert f'FineTuneProfile.kubeft.io "{name}" is invalid' in message
    assert expected in message, message


# --- jobs refused by the profile's admission policy -------------------------------------
# (what the job changes, what the refusal must say besides the profile's name)
BAD_JOBS: dict[str, tuple[dict[str, Any], str]] = {
    "method": (
        {"method": "full"},
        "spec.method full is not allowed by FineTuneProfile {p}: use one of qlora, lora",
    ),
    "seq-length": (
        {"hyperparameters": {"maxSeqLength": 8192}},
        "is above FineTuneProfile {p}'s maxSeqLength 4096",
    ),
    "epochs": ({"hyperparameters": {"epochs": 5}}, "is above FineTuneProfile {p}'s maxEpochs"),
    "gpus": (
        {"resources": {"gpus": 4}},
        "asks for 4 GPUs (gpus x nodes); FineTuneProfile {p} allows at most 2",
    ),
    "nodes": (
        {"resources": {"gpus": 1, "nodes": 2}},
        "spec.resources.nodes 2 is above FineTuneProfile {p}'s maxNodes 1",
    ),
    "gpu-class": (
        {"resources": {"gpuProducts": ["NVIDIA-H100-80GB-HBM3"]}},
        "may only name GPU classes FineTuneProfile {p} allows: NVIDIA-L4, NVIDIA-A100-SXM4-40GB",
    ),
    "model-source": (
        {
            "model": {
                "source": "hf://someone/model",
                "architecture": {
                    "hiddenSize": 2048,
                    "numLayers": 16,
                    "numHeads": 32,
                    "numKvHeads": 8,
                    "intermediateSize": 8192,
                    "vocabSize": 128256,
                },
            }
        },
        "spec.model.source hf://someone/model is not allowed by FineTuneProfile {p}: it must start with "
        "one of s3://models/, hf://meta-llama/",
    ),
    "storage-endpoint": (
        {"storage": {"credentialsSecret": SECRET, "endpoint": "http://169.254.169.254"}},
        "spec.storage.endpoint http://169.254.169.254 is not allowed by FineTuneProfile {p}: "
        "use one of {endpoint}",
    ),
    "endpoint-lookalike": (  # a prefix matches at a / boundary: another host is not under it
        {"storage": {"credentialsSecret": SECRET, "endpoint": "{endpoint}0"}},
        "is not allowed by FineTuneProfile {p}: use one of {endpoint}",
    ),
    "resume-other-namespace": (
        {"resumeFrom": "s3://kubeft-team/other-team/run/0f1e2d3c/"},
        "spec.resumeFrom s3://kubeft-team/other-team/run/0f1e2d3c/ is not allowed by FineTuneProfile {p}: "
        "a job may only resume from checkpoints of its own namespace (s3://<bucket>/{ns}/...)",
    ),
    "dataset-other-namespace": (
        {"dataset": {"source": "s3://kubeft-team/other-team/run/0f1e2d3c/artifacts/train.jsonl"}},
        "s3://kubeft-team/other-team/run/0f1e2d3c/artifacts/train.jsonl is not allowed by FineTuneProfile "
        "{p}: in the storage bucket kubeft-team a job may only read under its own namespace, "
        "s3://kubeft-team/{ns}/",
    ),
    "profile-not-allowed": (
        {"profile": "someone-elses"},
        "spec.profile someone-elses is not allowed in namespace {ns}: use {p}, {p}-big",
    ),
    "chosen-profile-limits": (  # the job chose the bigger profile, and is held to that one's limits
        {"profile": "{p}-big", "hyperparameters": {"maxSeqLength": 32768}},
        "is above FineTuneProfile {p}-big's maxSeqLength 16384",
    ),
}


@pytest.fixture()
def two_profiles(
    custom_objects: Any, core_v1: Any, api_client: Any, namespace: str, stack: Any, crds: list[str]
) -> Iterator[str]:
    """A profile (the namespace's default) and a bigger one the namespace also allows, each bound
    to the policy as the operator binds it (profile.binding)."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    admission = client.AdmissionregistrationV1Api(api_client)
    for each, spec in (
        (name, profile_spec(stack.minio_endpoint)),
        (f"{name}-big", profile_spec(stack.minio_endpoint, maxSeqLength=16384, maxGpus=8)),
    ):
        make_profile(custom_objects, each, spec)
        uid = custom_objects.get_cluster_custom_object(
            contract.GROUP, contract.VERSION, profiles.PLURAL, each
        )["metadata"]["uid"]
        create_or_replace(
            admission.create_validating_admission_policy_binding,
            admission.read_validating_admission_policy_binding,
            admission.replace_validating_admission_policy_binding,
            profiles.binding(each, uid),
        )
    core_v1.patch_namespace(
        namespace,
        {"metadata": {"labels": {profiles.LABEL_PROFILE: name},
                      "annotations": {profiles.ANNOTATION_ALLOWED: f"{name}-big"}}},
    )  # fmt: skip
    yield name
    for each in (name, f"{name}-big"):  # their bindings go with them (owner references)
        custom_objects.delete_cluster_custom_object(contract.GROUP, contract.VERSION, profiles.PLURAL, each)


def refusal(jobs: Any, body: dict[str, Any]) -> str:
    try:
        jobs.create(body)
    except ApiException as exc:
        return api_message(exc)
    jobs.delete(body["metadata"]["name"])
    return ""


def fill(value: Any, **names: str) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: fill(v, **names) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, **names) for v in value]
    return value


def test_every_profile_violating_job_is_refused_at_apply_naming_its_profile_and_limit(
    jobs: Any, ftj: Any, two_profiles: str, stack: Any
) -> None:
    p, names = two_profiles, {"p": two_profiles, "ns": jobs.ns, "endpoint": stack.minio_endpoint}
    # the API server's policy informer sees new bindings within a moment
    ftj.wait_for(lambda: refusal(jobs, ftj.job_manifest("probe", method="full")), what="the policy in force")
    assert refusal(jobs, ftj.job_manifest("fine")) == ""  # the defaults are within the limits
    assert refusal(jobs, ftj.job_manifest("bigger", profile=f"{p}-big", resources={"gpus": 4})) == ""
    said = {}
    for case, (change, expected) in BAD_JOBS.items():
        message = refusal(jobs, ftj.job_manifest(case, **fill(change, **names)))
        said[case] = message
        assert p in message and expected.format(**names) in message, (case, message)
    assert len(said) >= 10


def test_namespace_profile_choice_as_the_operator_reads_it() -> None:
    """The operator's half of the choice (handlers.namespace_profile), from its two indexes."""
    from kubeft_operator.handlers import namespace_profile

    team, big = profiles.Profile(name="team"), profiles.Profile(name="team-big")
    by_ns = {"a": [profiles.allowed_profiles("team", " team-big , gone")]}
    specs = {"team": [team], "team-big": [big]}
    assert namespace_profile("a", by_ns, specs) is team
    assert namespace_profile("a", by_ns, specs, "team-big") is big
    assert namespace_profile("plain", by_ns, specs) is None
    refused = namespace_profile("a", by_ns, specs, "other")
    assert refused is not None and refused.violations({}) == [
        "spec.profile other is not allowed in namespace a: use team, team-big, gone "
        "(label kubeft.io/profile, annotation kubeft.io/allowed-profiles)"
    ]
    gone = namespace_profile("a", by_ns, specs, "gone")
    assert gone is not None and gone.violations({}) == ["FineTuneProfile gone does not exist"]
    unprofiled = namespace_profile("plain", by_ns, specs, "team")
    assert unprofiled is not None and "namespace plain has no FineTuneProfile" in unprofiled.violations({})[0]


# --- two tenants --------------------------------------------------------------------------
@pytest.fixture()
def other_namespace(core_v1: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core_v1.delete_namespace(name, propagation_policy="Background")


def test_two_tenants_a_cannot_read_bs_checkpoints_nor_reach_an_endpoint_outside_its_profile(
    jobs: Any, credentials: Any, run_operator: Any, core_v1: Any, custom_objects: Any, ftj: Any,
    bucket: str, minio_client: Any, other_namespace: str, stack: Any, monkeypatch: pytest.MonkeyPatch,
    s3_dataset: Callable[[str], str],
) -> None:  # fmt: skip
    from kubeft.dev import fakehub

    a, b = jobs.ns, other_namespace
    suffix = uuid.uuid4().hex[:6]
    for ns in (a, b):  # each tenant: its profile, the same storage bucket, the hub mirror only
        make_profile(custom_objects, f"{ns}-{suffix}", profile_spec(
            stack.minio_endpoint, bucket, modelSourcePrefixes=["s3://models/", "hf://meta-llama/"],
            hubEndpointPrefixes=["https://hf-mirror.internal"]))  # fmt: skip
    # B's run left a checkpoint in the bucket
    checkpoint = f"{b}/medqa/1234abcd/checkpoints/step-10/"
    minio_client.put_object(bucket, checkpoint + "adapter_model.safetensors", io.BytesIO(b"weights"), 7)
    # A made a job resuming from it before its namespace was onboarded (no profile: not checked)
    sneaky = ftj.job_manifest("sneaky", resumeFrom=f"s3://{bucket}/{checkpoint}")
    sneaky["spec"]["storage"]["bucket"] = bucket
    jobs.create(sneaky)
    for ns in (a, b):
        core_v1.patch_namespace(ns, {"metadata": {"labels": {profiles.LABEL_PROFILE: f"{ns}-{suffix}"}}})

    with fakehub.serve(fakehub.FakeHub({})) as hub:
        monkeypatch.setenv("KUBEFT_HF_ENDPOINT", hub.url)  # the operator's own hub: not in A's profile
        try:
            with run_operator() as runner:
                # at apply: B's checkpoints and artifacts, and an endpoint outside A's profile
                resume = ftj.job_manifest("resume-b", resumeFrom=f"s3://{bucket}/{checkpoint}")
                message = ftj.wait_for(lambda: refusal(jobs, resume), what="A's profile bound")
                assert (
                    f"FineTuneProfile {a}-{suffix}: a job may only resume from checkpoints of its own"
                    in message
                )
                steal = ftj.job_manifest(
                    "steal", dataset={"source": f"s3://{bucket}/{b}/medqa/1234abcd/x.jsonl"}
                )
                assert f"a job may only read under its own namespace, s3://{bucket}/{a}/" in refusal(
                    jobs, steal
                )
                ssrf = ftj.job_manifest("ssrf")
                ssrf["spec"]["storage"]["endpoint"] = "http://169.254.169.254"
                assert f"is not allowed by FineTuneProfile {a}-{suffix}" in refusal(jobs, ssrf)
                # A's own checkpoints: fine
                minio_client.put_object(bucket, f"{a}/old/5678/checkpoints/step-1/x", io.BytesIO(b"w"), 1)
                assert refusal(jobs, ftj.job_manifest("own", resumeFrom=f"s3://{bucket}/{a}/old/5678/")) == ""

                # the operator: the job made before onboarding does not start
                def violation(name: str, reason: str) -> Any:
                    c = ftj.condition(jobs.get(name), "Validated")
                    return c if c and c["reason"] == reason else None

                c = ftj.wait_for(lambda: violation("sneaky", "ProfileViolation"), what="ProfileViolation")
                assert f"spec.resumeFrom s3://{bucket}/{checkpoint}" in c["message"]
                assert f"FineTuneProfile {a}-{suffix}" in c["message"]

                # an hf:// model: the operator's hub is not in the profile's hubEndpointPrefixes, so it
                # is not asked at all (and says so)
                hf = ftj.job_manifest("from-hub", model={"source": "hf://meta-llama/Llama-3.2-1B"})
                jobs.create(hf)
                c = ftj.wait_for(
                    lambda: violation("from-hub", "EndpointNotAllowed"), what="EndpointNotAllowed"
                )
                assert c["message"] == (
                    f"the Hugging Face hub {hub.url} is not allowed by FineTuneProfile {a}-{suffix} "
                    "(hubEndpointPrefixes: https://hf-mirror.internal); the operator did not contact it"
                )
                assert hub.requests == []
                assert jobs.get("from-hub")["status"]["phase"] == "Pending"
                batch = client.BatchV1Api(core_v1.api_client)
                for name in ("sneaky", "from-hub"):  # no trainer Job for either
                    assert not batch.list_namespaced_job(
                        a, label_selector=f"{contract.LABEL_JOB}={name}"
                    ).items
            assert runner.exception is None
        finally:
            for ns in (a, b):
                custom_objects.delete_cluster_custom_object(
                    contract.GROUP, contract.VERSION, profiles.PLURAL, f"{ns}-{suffix}"
                )


def test_the_operator_checks_endpoints_and_foreign_reads_as_the_policy_does() -> None:
    """The operator's half (profile.violations, endpoints.problem): the same words as at apply,
    and the operator-wide KUBEFT_ALLOWED_ENDPOINTS for namespaces without a profile."""
    from kubeft_operator.api import FineTuneJob
    from kubeft_operator.endpoints import problem
    from kubeft_operator.settings import Settings

    assert profiles.endpoint_allowed("https://s3.internal/", ("https://s3.internal",))
    assert not profiles.endpoint_allowed("https://s3.internal.evil.com", ("https://s3.internal",))
    p = profiles.Profile.from_body(
        {"metadata": {"name": "team"}, "spec": profile_spec("https://s3.internal")}
    )
    spec = p.apply_defaults({"model": {"source": "s3://models/m/"}, "method": "qlora",
                             "dataset": {"source": "s3://kubeft-team/b/run/1/artifacts/x.jsonl"},
                             "resumeFrom": "s3://elsewhere/b/run/1/"})  # fmt: skip
    assert p.violations(spec, "a") == [
        "spec.resumeFrom s3://elsewhere/b/run/1/: a job may only resume from checkpoints of its own "
        "namespace (s3://<bucket>/a/...)",
        "spec.dataset.source s3://kubeft-team/b/run/1/artifacts/x.jsonl: in the storage bucket kubeft-team "
        "a job may only read under its own namespace, s3://kubeft-team/a/",
    ]
    settings = Settings.from_env(
        {"KUBEFT_ALLOWED_ENDPOINTS": "http://minio.minio:9000, https://huggingface.co"}
    )
    body: dict[str, Any] = {"metadata": {"name": "j", "namespace": "a"},
            "spec": {"model": {"source": "hf://org/m"}, "dataset": {"source": "s3://d/x"},
                     "storage": {"credentialsSecret": "s", "endpoint": "http://10.0.0.1:9000"}}}  # fmt: skip
    assert problem(FineTuneJob.from_body(body), settings) == (
        "the storage endpoint http://10.0.0.1:9000 is not in the operator's allowed endpoints "
        "(KUBEFT_ALLOWED_ENDPOINTS: http://minio.minio:9000, https://huggingface.co); the operator did not "
        "contact it"
    )
    del body["spec"]["storage"]["endpoint"]
    assert problem(FineTuneJob.from_body(body), settings) is None
    mirror = profiles.Profile.from_body({"metadata": {"name": "m"}, "spec": {
        "defaults": {"hubEndpoint": "https://hf-mirror.internal"},
        "limits": {"hubEndpointPrefixes": ["https://hf-mirror.internal"]}}})  # fmt: skip
    refused = problem(FineTuneJob.from_body(body, mirror), settings)
    assert (
        refused is not None
        and "the Hugging Face hub https://hf-mirror.internal is not in the operator's" in refused
    )


# --- examples/platform: a team's namespace, its profiles, its jobs --------------------------
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "platform"


def test_the_platform_example_gives_a_namespace_its_profiles_and_runs_its_jobs(
    jobs: Any, run_operator: Any, core_v1: Any, custom_objects: Any, ftj: Any, stack: Any,
    s3_dataset: Callable[[str], str], credentials: dict[str, str],
) -> None:  # fmt: skip
    def docs(name: str) -> list[dict[str, Any]]:  # the stack's MinIO for the cluster's
        text = (EXAMPLE / name).read_text().replace("http://minio.minio:9000", stack.minio_endpoint)
        return [d for d in yaml.safe_load_all(text) if d]

    made = []
    try:
        for doc in docs("profiles.yaml"):
            try:
                custom_objects.delete_cluster_custom_object(
                    contract.GROUP, contract.VERSION, profiles.PLURAL, doc["metadata"]["name"]
                )  # left by an interrupted run
            except ApiException as exc:
                if exc.status != 404:
                    raise
            made.append(doc["metadata"]["name"])
            make_profile(custom_objects, doc["metadata"]["name"], doc["spec"])
        (namespace,) = docs("namespace.yaml")  # its label and annotation, on the test's namespace
        meta = namespace["metadata"]
        core_v1.patch_namespace(
            jobs.ns, {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]}}
        )
        keys = {k: base64.b64encode(v.encode()).decode() for k, v in credentials.items()}
        core_v1.create_namespaced_secret(jobs.ns, {"metadata": {"name": "minio-creds"}, "data": keys})
        examples = docs("jobs.yaml")
        with run_operator() as runner:
            for job in examples:
                job["metadata"].pop("namespace")
                s3_dataset(job["spec"]["dataset"]["source"])
                ftj.wait_for(
                    lambda job=job: refusal_or_created(jobs, job), what=f"{job['metadata']['name']} accepted"
                )
            # without spec.profile the long context is the default profile's to refuse
            default = {**examples[1], "metadata": {"name": "long-default"}}
            default["spec"] = {k: v for k, v in examples[1]["spec"].items() if k != "profile"}
            said = ftj.wait_for(lambda: refusal(jobs, default), what="team-ml's binding in force")
            assert "is above FineTuneProfile team-ml's maxSeqLength 8192" in said
            placed = ("Scheduling", "Initializing", "Training")
            for job in examples:
                name = job["metadata"]["name"]
                ftj.wait_for(lambda name=name: (jobs.get(name).get("status") or {}).get("phase") in placed,
                             what=f"{name} placed", timeout=90)  # fmt: skip
                config = json.loads(
                    core_v1.read_namespaced_config_map(f"{name}-config", jobs.ns).data["job.json"]
                )
                assert config["spec"]["storage"]["credentialsSecret"] == "minio-creds"
                assert config["spec"]["storage"]["bucket"] == "kubeft"
            large = jobs.get("long-context")["status"]["gpu"]["product"]
            assert large in ("NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3")  # team-ml-large's classes
        assert runner.exception is None
    finally:
        for name in made:
            custom_objects.delete_cluster_custom_object(
                contract.GROUP, contract.VERSION, profiles.PLURAL, name
            )


def refusal_or_created(jobs: Any, body: dict[str, Any]) -> bool:
    """Creates the job once the API server takes it (the policy's bindings are made by the operator)."""
    try:
        jobs.create(body)
    except ApiException as exc:
        if exc.status == 409:
            return True
        if exc.status in (403, 422):  # a binding or the profile's informer is not there yet
            return False
        raise
    return True


def test_a_profiles_hub_reaches_the_trainer_pod() -> None:
    """defaults.hubEndpoint: the trainer downloads hf:// models from the same hub the operator read."""
    from kubeft_operator import placement as pl
    from kubeft_operator import resources
    from kubeft_operator.api import FineTuneJob
    from kubeft_operator.reconcile import Inputs, Observed, decide
    from kubeft_operator.settings import Settings

    from kubeft import estimate as est

    l4 = {"metadata": {"name": "gpu-l4-0", "labels": {contract.LABEL_GPU_PRODUCT: "NVIDIA-L4",
                                                     contract.LABEL_GPU_MEMORY: "23034"}},
          "status": {"allocatable": {contract.RESOURCE_GPU: "1"},
                     "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
    now = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
    mirror = profiles.Profile.from_body(
        {"metadata": {"name": "m"}, "spec": {"defaults": {"hubEndpoint": "https://hf-mirror.internal"}}}
    )
    body = {"metadata": {"name": "j", "namespace": "a", "uid": "u"},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.2-1B"}, "dataset": {"source": "s3://d/x"},
                     "storage": {"credentialsSecret": "s"}}}  # fmt: skip
    shape = est.known_shape("llama-3.2-1b")
    for profile, expected in ((mirror, "https://hf-mirror.internal"), (None, Settings().hf_endpoint)):
        j = FineTuneJob.from_body(body, profile)
        inputs = Inputs(classes=pl.gpu_classes(pl.gpu_nodes([l4], [])), shape=shape)
        plan = decide(j, Observed(), inputs, Settings(), now).create
        assert plan is not None
        env = {
            e.name: e.value for e in resources.get_trainer_job(j, plan).spec.template.spec.containers[0].env
        }
        assert env.get(contract.ENV_HF_ENDPOINT) == expected
