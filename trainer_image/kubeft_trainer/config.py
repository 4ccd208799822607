"""The trainer's configuration: the operator's job.json contract, or a job.yaml for local runs.

Three document shapes are accepted, JSON or YAML:

* the contract the operator writes (``kind: TrainerConfig``, path in ``$KUBEFT_JOB_CONFIG``)::

    {"apiVersion": "kubeft.io/v1alpha1", "kind": "TrainerConfig",
     "job": {"name": ..., "namespace": ..., "uid": ...},
     "spec": <FineTuneJob spec>, "placement": {...}, "estimate": {...}}

* a whole ``FineTuneJob`` manifest (``kind: FineTuneJob``; name and namespace from metadata);
* a bare FineTuneJob ``spec`` (a mapping with ``model``).

Spec keys use the CRD's camelCase names; each dataclass field below maps to one of them.
Overrides (``--set hyperparameters.maxSteps=20``) are dotted spec paths with YAML values.
Unknown keys: an error for local files and overrides (a typo should not be silently ignored),
a warning for the operator's job.json (the CRD validated the spec, and a newer operator may
add fields this trainer does not know yet).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from kubeft import contract
from kubeft_trainer.errors import InvalidInputError

log = logging.getLogger(__name__)

METHODS = ("qlora", "lora", "full", "auto")
FORMATS = ("auto", "alpaca", "sharegpt", "messages", "text")
TRAIN_ON = ("responses", "all")
CHAT_TEMPLATES = ("auto", "chatml", "llama3")
EXPORT_FORMATS = ("adapter", "merged-16bit")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)

# Spec keys that belong to the operator (scheduling, lifecycle); the trainer accepts and ignores them.
OPERATOR_SPEC_KEYS = frozenset(
    {"resources", "suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"}
)
# Top-level keys of the TrainerConfig document.
TRAINER_CONFIG_KEYS = frozenset({"apiVersion", "kind", "job", "attempt", "spec", "placement", "estimate"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


@dataclass
class ModelSpec:
    """spec.model: where the base model (weights + tokenizer) comes from."""

    source: str = ""
    # Architecture override for the operator's VRAM estimate; the trainer reads config.json.
    architecture: dict[str, Any] | None = None


@dataclass
class EvalDataSpec:
    """spec.dataset.eval: held-out fraction or separate dataset, schedule, and prompts to sample."""

    split: float | None = None
    source: str | None = None
    every_steps: int | None = None
    prompts: list[str] = field(default_factory=list)


@dataclass
class DatasetSpec:
    """spec.dataset."""

    source: str = ""
    format: str = "auto"
    eval: EvalDataSpec | None = None
    train_on: str = "responses"
    # auto: the tokenizer's template, else chatml; chatml | llama3: that template.
    chat_template: str = "auto"


@dataclass
class LoraSpec:
    """spec.hyperparameters.lora."""

    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    rslora: bool = False
    dora: bool = False


@dataclass
class Hyperparameters:
    """spec.hyperparameters."""

    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 2
    gradient_accumulation: int = 4
    max_seq_length: int = 2048
    packing: bool = True
    lora: LoraSpec = field(default_factory=LoraSpec)
    optimizer: str = "adamw_8bit"
    seed: int = 0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    max_steps: int | None = None
    gradient_checkpointing: bool = True
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass
class StorageSpec:
    """spec.storage: the job's bucket. No endpoint (or file://DIR) means a local directory."""

    endpoint: str | None = None
    bucket: str = "kubeft"
    credentials_secret: str | None = None


@dataclass
class CheckpointSpec:
    """spec.checkpoints."""

    every_steps: int = 100
    keep: int = 3


@dataclass
class ExportSpec:
    """spec.export."""

    # empty: [adapter] for qlora/lora, [merged-16bit] for full (the CRD's default)
    formats: list[str] = field(default_factory=list)


@dataclass
class JobSpec:
    """The parts of a FineTuneJob spec that the trainer reads."""

    model: ModelSpec = field(default_factory=ModelSpec)
    method: str = "qlora"
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    storage: StorageSpec = field(default_factory=StorageSpec)
    checkpoints: CheckpointSpec = field(default_factory=CheckpointSpec)
    export: ExportSpec = field(default_factory=ExportSpec)

    @property
    def export_formats(self) -> list[str]:
        if self.export.formats:
            return list(self.export.formats)
        return ["merged-16bit"] if self.method == "full" else ["adapter"]

    @property
    def eval_every_steps(self) -> int | None:
        return self.dataset.eval.every_steps if self.dataset.eval is not None else None

    @property
    def eval_prompts(self) -> list[str]:
        return list(self.dataset.eval.prompts) if self.dataset.eval is not None else []


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


# --- parsing -----------------------------------------------------------------

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def _coerce(value: Any, tp: Any, path: str, strict: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path, strict)
            except InvalidInputError as exc:
                errors.append(str(exc))
        raise InvalidInputError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()  # type: ignore[operator]
        return _build(tp, value, path, strict)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise InvalidInputError(f"{path}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]", strict) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InvalidInputError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InvalidInputError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        # YAML 1.1 reads `2e-4` as a string; accept numeric strings for numbers.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise InvalidInputError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise InvalidInputError(f"{path}: expected a string, got {value!r}")
    if tp is Path:
        return Path(value)
    return value


def _build(cls: type[T], data: Any, path: str, strict: bool) -> T:
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    by_key = {_camel(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        f = by_key.get(key)
        if f is None:
            if cls is JobSpec and key in OPERATOR_SPEC_KEYS:
                continue
            known = ", ".join(sorted(by_key))
            if strict:
                raise InvalidInputError(f"{sub}: unknown key (known: {known})")
            log.warning("ignoring unknown key %s (this trainer knows: %s)", sub, known)
            continue
        kwargs[f.name] = _coerce(value, hints[f.name], sub, strict)
    return cls(**kwargs)


def parse_spec(spec: Any, strict: bool = True) -> JobSpec:
    """Turns a FineTuneJob spec mapping into a JobSpec and checks it; raises InvalidInputError."""
    parsed = _build(JobSpec, spec, "spec", strict)
    validate(parsed)
    return parsed


def validate(spec: JobSpec) -> None:
    """Cross-field checks with plain messages (the CRD checks enums too; local files bypass it)."""

    def one_of(path: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise InvalidInputError(f"{path}: {value!r} is not one of {', '.join(allowed)}")

    if not spec.model.source:
        raise InvalidInputError(
            "spec.model.source is required (s3://bucket/prefix/, hf://org/name or a path)"
        )
    if not spec.dataset.source:
        raise InvalidInputError(
            "spec.dataset.source is required (s3://bucket/file.jsonl, hf://... or a path)"
        )
    one_of("spec.method", spec.method, METHODS)
    one_of("spec.dataset.format", spec.dataset.format, FORMATS)
    one_of("spec.dataset.trainOn", spec.dataset.train_on, TRAIN_ON)
    one_of("spec.dataset.chatTemplate", spec.dataset.chat_template, CHAT_TEMPLATES)
    ev = spec.dataset.eval
    if ev is not None:
        if ev.split is not None and ev.source:
            raise InvalidInputError("spec.dataset.eval: set either split or source, not both")
        if ev.split is not None and not 0.0 < ev.split < 1.0:
            raise InvalidInputError(
                f"spec.dataset.eval.split: {ev.split} must be between 0 and 1 (exclusive)"
            )
    hp = spec.hyperparameters
    one_of("spec.hyperparameters.optimizer", hp.optimizer, OPTIMIZERS)
    one_of("spec.hyperparameters.lrScheduler", hp.lr_scheduler, SCHEDULERS)
    positive = {
        "epochs": hp.epochs,
        "learningRate": hp.learning_rate,
        "batchSize": hp.batch_size,
        "gradientAccumulation": hp.gradient_accumulation,
        "maxSeqLength": hp.max_seq_length,
        "lora.r": hp.lora.r,
        "lora.alpha": hp.lora.alpha,
    }
    for name, value in positive.items():
        if value <= 0:
            raise InvalidInputError(f"spec.hyperparameters.{name}: must be greater than 0, got {value}")
    if hp.max_steps is not None and hp.max_steps <= 0:
        raise InvalidInputError(f"spec.hyperparameters.maxSteps: must be greater than 0, got {hp.max_steps}")
    if not 0.0 <= hp.lora.dropout < 1.0:
        raise InvalidInputError(f"spec.hyperparameters.lora.dropout: {hp.lora.dropout} must be in [0, 1)")
    if not 0.0 <= hp.warmup_ratio < 1.0:
        raise InvalidInputError(f"spec.hyperparameters.warmupRatio: {hp.warmup_ratio} must be in [0, 1)")
    if spec.checkpoints.every_steps <= 0 or spec.checkpoints.keep <= 0:
        raise InvalidInputError("spec.checkpoints: everySteps and keep must be greater than 0")
    if ev is not None and ev.every_steps is not None and ev.every_steps <= 0:
        raise InvalidInputError("spec.dataset.eval.everySteps: must be greater than 0")
    for fmt in spec.export.formats:
        one_of("spec.export.formats[]", fmt, EXPORT_FORMATS)
    if spec.method == "full" and "adapter" in spec.export.formats:
        raise InvalidInputError(
            "spec.export.formats: 'adapter' needs method qlora or lora; method full exports 'merged-16bit'"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", spec.storage.bucket):
        raise InvalidInputError(f"spec.storage.bucket: {spec.storage.bucket!r} is not a valid bucket name")


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
    cls: Any = JobSpec
    for i, part in enumerate(parts):
        names = {_camel(f.name): f for f in dataclasses.fields(cls)}
        if part not in names:
            where = ".".join(parts[:i]) or "spec"
            raise InvalidInputError(
                f"override {key}: {where} has no key {part!r} (known: {', '.join(sorted(names))})"
            )
        tp = typing.get_type_hints(cls)[names[part].name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        cls = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if cls is None and i < len(parts) - 1:
            raise InvalidInputError(f"override {key}: {part!r} is not a mapping")
    if not parts:
        raise InvalidInputError(f"override {assignment!r}: empty key")
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
    job = _build(JobRef, job_doc, "job", strict)
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
