"""The trainer's configuration: the operator's job.json contract, or a job.yaml for local runs.

Three document shapes are accepted, JSON or YAML:

* the contract the operator writes (``kind: TrainerConfig``, path in ``$KUBEFT_JOB_CONFIG``)::

    {"apiVersion": "kubeft.io/v1alpha1", "kind": "TrainerConfig",
     "job": {"name": ..., "namespace": ..., "uid": ...},
     "spec": <FineTuneJob spec>, "placement": {...}, "estimate": {...}}

* a whole ``FineTuneJob`` manifest (``kind: FineTuneJob``; name and namespace from metadata);
* a bare FineTuneJob ``spec`` (a mapping with ``model``).

The spec is kubeft's one spec model (:mod:`kubeft.spec`, the operator's too), with the CRD's
camelCase keys, enums, defaults and bounds. Overrides (``--set hyperparameters.maxSteps=20``) are
dotted spec paths with YAML values. Unknown keys: an error for local files and overrides (a typo
should not be silently ignored), a warning for the operator's job.json (the CRD validated the
spec, and a newer operator may add fields this trainer does not know yet).
"""

from __future__ import annotations

import json
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeft import contract
from kubeft import spec as spec_model
from kubeft.spec import FineTuneJobSpec as JobSpec
from kubeft.spec import LoraSpec
from kubeft_trainer.errors import InvalidInputError

__all__ = ["JobRef", "JobSpec", "LoraSpec", "RuntimeOptions", "TrainerConfig", "load_config", "parse_spec"]

log = logging.getLogger(__name__)

# Top-level keys of the TrainerConfig document.
TRAINER_CONFIG_KEYS = frozenset({"apiVersion", "kind", "job", "attempt", "spec", "placement", "estimate"})
JOB_REF_KEYS = ("name", "namespace", "uid")


@dataclass
class JobRef:
    """Which FineTuneJob this run belongs to."""

    name: str = "local"
    namespace: str = "default"
    uid: str = ""


@dataclass
class RuntimeOptions:
    """How this process runs (from env and CLI flags, never from the spec)."""

    workdir: Path = Path("/tmp/kubeft")
    metrics_port: int | None = contract.METRICS_PORT
    termination_log: Path = Path(contract.TERMINATION_LOG)
    report_status: bool = True
    status_interval_seconds: float = 5.0


@dataclass
class TrainerConfig:
    """Everything one trainer run needs."""

    job: JobRef
    spec: JobSpec
    placement: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, Any] = field(default_factory=dict)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    @property
    def resolved_method(self) -> str:
        """qlora | lora | full; `auto` takes the operator's choice from the estimate."""
        if self.spec.method != "auto":
            return self.spec.method
        method = str(self.estimate.get("method") or "qlora")
        return method if method in ("qlora", "lora", "full") else "qlora"


def parse_spec(spec: Any, strict: bool = True) -> JobSpec:
    """Turns a FineTuneJob spec mapping into the spec model; raises InvalidInputError naming the field."""
    try:
        return spec_model.parse_spec(spec, strict=strict)
    except spec_model.SpecError as exc:
        raise InvalidInputError(str(exc)) from None


def _job_ref(doc: dict[str, Any], strict: bool) -> JobRef:
    unknown = sorted(set(doc) - set(JOB_REF_KEYS))
    if unknown and strict:
        raise InvalidInputError(f"job.{unknown[0]}: unknown key (known: {', '.join(JOB_REF_KEYS)})")
    for key in ("name", "namespace", "uid"):
        if key in doc and not isinstance(doc[key], str):
            raise InvalidInputError(f"job.{key}: expected a string, got {doc[key]!r}")
    return JobRef(**{k: doc[k] for k in JOB_REF_KEYS if k in doc})


# --- documents and overrides ---------------------------------------------------


def read_document(path: Path) -> dict[str, Any]:
    """Reads a JSON or YAML mapping; InvalidInputError with the file name when it can't."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInputError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(
            f"config {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise InvalidInputError(f"config {path}: expected a mapping at the top level")
    return doc


def split_document(
    doc: dict[str, Any], strict: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Returns (job, spec, extras) from any of the three accepted shapes."""
    kind = doc.get("kind")
    if kind == contract.TRAINER_CONFIG_KIND:
        api = doc.get("apiVersion")
        if api != contract.TRAINER_CONFIG_API_VERSION:
            raise InvalidInputError(
                f"config apiVersion {api!r} is not supported (expected {contract.TRAINER_CONFIG_API_VERSION})"
            )
        extra = set(doc) - TRAINER_CONFIG_KEYS
        for key in sorted(extra):
            if strict:
                raise InvalidInputError(f"{key}: unknown top-level key in TrainerConfig")
            log.warning("ignoring unknown top-level key %s in TrainerConfig", key)
        extras = {"placement": doc.get("placement") or {}, "estimate": doc.get("estimate") or {}}
        return dict(doc.get("job") or {}), dict(doc.get("spec") or {}), extras
    if kind == contract.KIND:
        meta = doc.get("metadata") or {}
        job = {k: meta[k] for k in ("name", "namespace", "uid") if k in meta}
        return job, dict(doc.get("spec") or {}), {}
    if kind is None and "model" in doc:
        return {}, dict(doc), {}
    raise InvalidInputError(
        f"config: kind {kind!r} is not a TrainerConfig or a FineTuneJob, and the document is not a spec "
        "(a mapping with model, dataset, ...)"
    )


def apply_override(spec: dict[str, Any], assignment: str) -> None:
    """Applies one `a.b.c=value` override to a spec mapping; the path must name a known field."""
    if "=" not in assignment:
        raise InvalidInputError(
            f"override {assignment!r}: expected KEY=VALUE, e.g. hyperparameters.maxSteps=20"
        )
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if parts and parts[0] == "spec":
        parts = parts[1:]
    if not parts:
        raise InvalidInputError(f"override {assignment!r}: empty key")
    for i, part in enumerate(parts):
        model = spec_model.model_at(parts[:i])
        if model is None:
            raise InvalidInputError(f"override {key}: {parts[i - 1]!r} is not a mapping")
        known = spec_model.keys(model)
        if part not in known:
            where = ".".join(parts[:i]) or "spec"
            raise InvalidInputError(
                f"override {key}: {where} has no key {part!r} (known: {', '.join(sorted(known))})"
            )
    value = yaml.safe_load(raw) if raw.strip() else ""
    node = spec
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def runtime_from_env(env: typing.Mapping[str, str]) -> RuntimeOptions:
    """Runtime options from the environment the operator sets (contract.ENV_*)."""
    rt = RuntimeOptions()
    if env.get(contract.ENV_WORKDIR):
        rt.workdir = Path(env[contract.ENV_WORKDIR])
    if env.get(contract.ENV_METRICS_PORT):
        try:
            rt.metrics_port = int(env[contract.ENV_METRICS_PORT])
        except ValueError as exc:
            raise InvalidInputError(f"{contract.ENV_METRICS_PORT}: not a port number") from exc
    if env.get(contract.ENV_TERMINATION_LOG):
        rt.termination_log = Path(env[contract.ENV_TERMINATION_LOG])
    return rt


def load_config(
    path: Path | None = None,
    overrides: typing.Sequence[str] = (),
    env: typing.Mapping[str, str] | None = None,
    strict: bool | None = None,
) -> TrainerConfig:
    """Loads the run's config: `path` (else $KUBEFT_JOB_CONFIG), overrides, the job's identity from env.

    `strict` (unknown keys are errors) defaults to True for an explicit `path` (local runs) and
    False for the operator's file.
    """
    env = os.environ if env is None else env
    if path is None:
        if not env.get(contract.ENV_JOB_CONFIG):
            raise InvalidInputError(f"no config: pass --config FILE or set {contract.ENV_JOB_CONFIG}")
        path = Path(env[contract.ENV_JOB_CONFIG])
        strict = False if strict is None else strict
    strict = True if strict is None else strict
    doc = read_document(path)
    job_doc, spec_doc, extras = split_document(doc, strict)
    for assignment in overrides:
        apply_override(spec_doc, assignment)
    spec = parse_spec(spec_doc, strict)
    job = _job_ref(job_doc, strict)
    if env.get(contract.ENV_JOB_NAME):
        job.name = env[contract.ENV_JOB_NAME]
    if env.get(contract.ENV_JOB_NAMESPACE):
        job.namespace = env[contract.ENV_JOB_NAMESPACE]
    for what, value in (("placement", extras.get("placement")), ("estimate", extras.get("estimate"))):
        if value is not None and not isinstance(value, dict):
            raise InvalidInputError(f"{what}: expected a mapping")
    return TrainerConfig(
        job=job,
        spec=spec,
        placement=dict(extras.get("placement") or {}),
        estimate=dict(extras.get("estimate") or {}),
        runtime=runtime_from_env(env),
    )
