"""FineTuneProfile: a platform team's defaults and limits for the FineTuneJobs of a namespace.

A namespace chooses its default profile with the label ``kubeft.io/profile=<name>``; its annotation
``kubeft.io/allowed-profiles`` lists others (comma-separated) a job may name in ``spec.profile``
(:func:`choose`). The API server
enforces the limits at ``kubectl apply`` (the ValidatingAdmissionPolicy kubeft-profile-limits,
charts/kubeft/files/admission-policies.yaml); the operator fills the defaults into a job before it
reads it, and checks the limits again (:func:`violations`) before the job starts, since a profile
may have been tightened after the job was created. The two checks read the same fields;
tests/operator/test_profiles.py runs the same bad jobs through both.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubeft import contract

KIND: Final = "FineTuneProfile"
PLURAL: Final = "finetuneprofiles"
LABEL_PROFILE: Final = f"{contract.GROUP}/profile"  # on a namespace: the name of its default profile
# on a namespace: other profiles its jobs may name in spec.profile (comma-separated)
ANNOTATION_ALLOWED: Final = f"{contract.GROUP}/allowed-profiles"
POLICY: Final = "kubeft-profile-limits"  # the ValidatingAdmissionPolicy; one binding per profile


def endpoint_allowed(endpoint: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``endpoint`` is one of ``prefixes`` or under one of them, at a ``/`` boundary.

    ``https://s3.internal`` allows ``https://s3.internal`` and ``https://s3.internal/x``, never
    ``https://s3.internal.example.com``; the admission policy reads prefixes the same way.
    """
    return any(endpoint == p or endpoint.startswith(p if p.endswith("/") else p + "/") for p in prefixes)


def allowed_profiles(default: str | None, annotation: str | None) -> tuple[str, ...]:
    """The profiles a namespace allows: its label's first, then its annotation's (none without a label)."""
    if not default:
        return ()
    others = [p.strip() for p in (annotation or "").split(",") if p.strip()]
    return (default, *[p for p in others if p != default])


def choose(namespace: str, allowed: tuple[str, ...], requested: str | None) -> tuple[str | None, str | None]:
    """(the profile a job of ``namespace`` gets, None) or (None, why the one it names is refused)."""
    if not requested:
        return (allowed[0] if allowed else None), None
    if requested in allowed:
        return requested, None
    if not allowed:
        return None, (
            f"spec.profile {requested}: namespace {namespace} has no FineTuneProfile "
            f"(label {LABEL_PROFILE}), so its jobs cannot choose one"
        )
    return None, (
        f"spec.profile {requested} is not allowed in namespace {namespace}: use {', '.join(allowed)} "
        f"(label {LABEL_PROFILE}, annotation {ANNOTATION_ALLOWED})"
    )


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class StorageDefaults(_Model):
    endpoint: str | None = None
    bucket: str | None = None
    credentials_secret: str | None = None
    role_arn: str | None = None  # web identity: the role the trainer's token is exchanged for


class Defaults(_Model):
    storage: StorageDefaults = StorageDefaults()
    queue_name: str | None = None
    ttl_seconds_after_finished: int | None = None
    priority_class_name: str | None = None
    export_formats: tuple[str, ...] = ()
    hub_endpoint: str | None = None  # the hub (or mirror) for hf:// models of the profile's jobs


class Limits(_Model):
    model_source_prefixes: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    gpu_products: tuple[str, ...] | None = None
    max_gpus: int | None = Field(default=None, ge=1)
    max_nodes: int | None = Field(default=None, ge=1)
    max_seq_length: int | None = Field(default=None, ge=1)
    max_epochs: float | None = Field(default=None, gt=0)
    storage_endpoint_prefixes: tuple[str, ...] | None = None
    hub_endpoint_prefixes: tuple[str, ...] | None = None


class Profile(_Model):
    """One FineTuneProfile (its ``metadata.name`` and ``spec``)."""

    name: str
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    # set by the operator, not read from a profile: why no job may use this one (it does not exist,
    # or the namespace does not allow it); every job is refused with these words
    refusal: str | None = Field(default=None, exclude=True)

    @classmethod
    def refused(cls, name: str, why: str) -> Profile:
        """A stand-in profile that refuses every job, saying ``why``."""
        return cls(name=name, refusal=why)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Profile:
        spec = dict(body.get("spec") or {})
        return cls.model_validate({"name": body["metadata"]["name"], **spec})

    def apply_defaults(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A job's spec (as stored: camelCase) with this profile's defaults where the job has none.

        Without ``resources.gpuProducts`` a job of a profile that limits GPU classes is narrowed
        to those classes, so placement never picks one the profile forbids.
        """
        out = copy.deepcopy(dict(spec))
        d = self.defaults
        storage = out.setdefault("storage", {})
        # a job that names its own credentials (a Secret or a role) keeps them: the profile's other
        # kind is not added beside them
        own_credentials = bool(storage.get("credentialsSecret") or storage.get("roleArn"))
        for key, value in (
            ("endpoint", d.storage.endpoint),
            ("bucket", d.storage.bucket),
            ("credentialsSecret", None if own_credentials else d.storage.credentials_secret),
            ("roleArn", None if own_credentials else d.storage.role_arn),
        ):
            if value and not storage.get(key):
                storage[key] = value
        if d.queue_name and not out.get("queueName"):
            out["queueName"] = d.queue_name
        if d.ttl_seconds_after_finished is not None and out.get("ttlSecondsAfterFinished") is None:
            out["ttlSecondsAfterFinished"] = d.ttl_seconds_after_finished
        resources = out.setdefault("resources", {})
        if d.priority_class_name and not resources.get("priorityClassName"):
            resources["priorityClassName"] = d.priority_class_name
        if self.limits.gpu_products and not resources.get("gpuProducts"):
            resources["gpuProducts"] = list(self.limits.gpu_products)
        if d.export_formats and not (out.get("export") or {}).get("formats"):
            formats = [f for f in d.export_formats if not (out.get("method") == "full" and f == "adapter")]
            if formats:
                out.setdefault("export", {})["formats"] = formats
        return out

    def violations(self, spec: Mapping[str, Any], namespace: str = "", default_bucket: str = "") -> list[str]:
        """What in a job's spec (camelCase, defaults filled) this profile's limits forbid.

        With ``namespace``, also what would read another namespace's prefix of the job's storage
        bucket (``default_bucket`` when the job and the profile leave it out).
        """
        if self.refusal:
            return [self.refusal]
        lim = self.limits
        out: list[str] = []
        source = str((spec.get("model") or {}).get("source") or "")
        if lim.model_source_prefixes is not None and not any(
            source.startswith(p) for p in lim.model_source_prefixes
        ):
            out.append(
                f"spec.model.source {source} must start with one of {', '.join(lim.model_source_prefixes)}"
            )
        method = str(spec.get("method") or "qlora")
        if lim.methods is not None and method not in lim.methods:
            out.append(f"spec.method {method}: use one of {', '.join(lim.methods)}")
        res = spec.get("resources") or {}
        products = list(res.get("gpuProducts") or [])
        if lim.gpu_products is not None and not set(products) <= set(lim.gpu_products):
            out.append(f"spec.resources.gpuProducts may only name {', '.join(lim.gpu_products)}")
        gpus, nodes = int(res.get("gpus") or 1), int(res.get("nodes") or 1)
        if lim.max_gpus is not None and gpus * nodes > lim.max_gpus:
            out.append(f"{gpus * nodes} GPUs (gpus x nodes) is above maxGpus {lim.max_gpus}")
        if lim.max_nodes is not None and nodes > lim.max_nodes:
            out.append(f"spec.resources.nodes {nodes} is above maxNodes {lim.max_nodes}")
        hp = spec.get("hyperparameters") or {}
        seq = int(hp.get("maxSeqLength") or 2048)
        if lim.max_seq_length is not None and seq > lim.max_seq_length:
            out.append(f"spec.hyperparameters.maxSeqLength {seq} is above maxSeqLength {lim.max_seq_length}")
        epochs = float(hp.get("epochs") or 1)
        if lim.max_epochs is not None and epochs > lim.max_epochs:
            out.append(f"spec.hyperparameters.epochs {epochs:g} is above maxEpochs {lim.max_epochs:g}")
        endpoint = (spec.get("storage") or {}).get("endpoint")
        prefixes = lim.storage_endpoint_prefixes
        if prefixes is not None and endpoint and not endpoint_allowed(str(endpoint), prefixes):
            out.append(f"spec.storage.endpoint {endpoint}: use one of {', '.join(prefixes)}")
        if namespace:
            out += foreign_reads(spec, namespace, default_bucket)
        return out

    def hub_endpoint(self, operator_default: str) -> str:
        """The hub the operator reads this profile's hf:// models from."""
        return self.defaults.hub_endpoint or operator_default


def foreign_reads(spec: Mapping[str, Any], namespace: str, default_bucket: str) -> list[str]:
    """What a job of ``namespace`` would read from another namespace's runs.

    Runs live under ``<bucket>/<namespace>/<job>/<uid>/``: ``resumeFrom`` must be under the job's own
    namespace (in any bucket), and a model, dataset or eval source in the job's storage bucket too.
    """
    out: list[str] = []
    resume = str(spec.get("resumeFrom") or "")
    if resume and not resume.removeprefix("s3://").partition("/")[2].startswith(namespace + "/"):
        out.append(
            f"spec.resumeFrom {resume}: a job may only resume from checkpoints of its own namespace "
            f"(s3://<bucket>/{namespace}/...)"
        )
    bucket = str((spec.get("storage") or {}).get("bucket") or default_bucket)
    if bucket:
        dataset = spec.get("dataset") or {}
        for field, source in (
            ("spec.model.source", (spec.get("model") or {}).get("source")),
            ("spec.dataset.source", dataset.get("source")),
            ("spec.dataset.eval.source", (dataset.get("eval") or {}).get("source")),
        ):
            text = str(source or "")
            if text.startswith(f"s3://{bucket}/") and not text.startswith(f"s3://{bucket}/{namespace}/"):
                out.append(
                    f"{field} {text}: in the storage bucket {bucket} a job may only read under its own "
                    f"namespace, s3://{bucket}/{namespace}/"
                )
    return out


def binding(profile_name: str, owner_uid: str) -> dict[str, Any]:
    """The ValidatingAdmissionPolicyBinding that checks the namespaces of one profile against it."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {
            "name": f"{POLICY}-{profile_name}",
            "labels": {contract.LABEL_PART_OF: contract.MANAGED_BY, LABEL_PROFILE: profile_name},
            # deleting the profile deletes its binding (garbage collector)
            "ownerReferences": [
                {"apiVersion": contract.API_VERSION, "kind": KIND, "name": profile_name, "uid": owner_uid}
            ],
        },
        "spec": {
            "policyName": POLICY,
            # the profile going away must not lock its jobs (kopf's finalizers): the binding goes too
            "paramRef": {"name": profile_name, "parameterNotFoundAction": "Allow"},
            "validationActions": ["Deny"],
            # every profiled namespace: a job there may name this profile (spec.profile); the policy
            # checks only the jobs whose profile is this one
            "matchResources": {
                "namespaceSelector": {"matchExpressions": [{"key": LABEL_PROFILE, "operator": "Exists"}]}
            },
        },
    }
