"""The FineTuneJob spec: one typed model for the operator, the trainer, ``kubeft estimate`` and the bench.

The CRD (crds/kubeft.io_finetunejobs.yaml) refuses bad input at ``kubectl apply``; this model
carries the same enums, defaults and bounds (tests/operator/test_spec_model.py holds the two
side by side), so that:

* the operator reads objects created before a default existed with that default;
* the trainer refuses a bad local ``job.yaml`` (which no apiserver checked) with the field's path;
* the operator's placement estimate and the trainer's plan start from the same numbers
  (:meth:`kubeft.estimate.Setup.from_spec`).

Keys are the CRD's camelCase names; attributes are their snake_case twins. :func:`parse_spec`
is the one way in: strict (unknown keys are errors: a typo in a local file must not be ignored)
or lenient (unknown keys are dropped with a warning: a newer operator may send fields this
trainer does not know yet). Every error reads ``spec.<path>: <what is wrong>``.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kubeft import estimate as est

log = logging.getLogger(__name__)

Method = Literal["qlora", "lora", "full", "auto"]
DatasetFormat = Literal["auto", "alpaca", "sharegpt", "messages", "text"]
TrainOn = Literal["responses", "all"]
ChatTemplate = Literal["auto", "chatml", "llama3"]
Optimizer = est.Optimizer  # the estimator knows what each one keeps per parameter
LrScheduler = Literal[
    "cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"
]
ExportFormat = Literal["adapter", "merged-16bit", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]
Cleanup = Literal["Retain", "Delete"]
Strategy = Literal["auto", "ddp", "fsdp"]
TolerationOperator = Literal["Exists", "Equal"]
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]

METHODS: Final[tuple[str, ...]] = typing.get_args(Method)
OPTIMIZERS: Final[tuple[str, ...]] = typing.get_args(Optimizer)
BUCKET_PATTERN: Final = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"
SECRET_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# an IAM role: arn:aws:iam::123456789012:role/name on AWS, arn:minio:iam:::role/<id> on MinIO
ROLE_ARN_PATTERN: Final = r"^arn:[a-z0-9-]+:iam:[a-z0-9-]*:[0-9]*:role/[!-~]+$"
# <registry host[:port]>/<path>, no tag or digest: each export is tagged <job>-<format>
OCI_REPOSITORY_PATTERN: Final = (
    r"^[A-Za-z0-9-]+([.][A-Za-z0-9-]+)*(:[0-9]{1,5})?(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)+$"
)
EXPORT_FORMATS: Final[tuple[str, ...]] = typing.get_args(ExportFormat)


class SpecError(ValueError):
    """The spec does not parse; the message names each offending field by its path."""


def _one_or_many(value: Any) -> Any:
    """``targetModules: q_proj`` is read as ``[q_proj]`` (local files write a single name so)."""
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Architecture(_Model):
    """``spec.model.architecture``: config.json facts given inline instead of read from the model."""

    hidden_size: int = Field(ge=1, le=65536)
    num_layers: int = Field(ge=1, le=1024)
    num_heads: int = Field(ge=1, le=1024)
    num_kv_heads: int | None = Field(default=None, ge=1, le=1024)
    head_dim: int | None = Field(default=None, ge=1, le=4096)
    intermediate_size: int = Field(ge=1, le=524288)
    vocab_size: int = Field(ge=1, le=4194304)
    tie_word_embeddings: bool = False
    attention_bias: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> Architecture:
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ValueError("numHeads must be a multiple of numKvHeads")
        return self

    def to_shape(self) -> est.ModelShape:
        """The estimator's view of this architecture."""
        return est.ModelShape(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads or self.num_heads,
            head_dim=self.head_dim or self.hidden_size // self.num_heads,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=self.attention_bias,
            model_type="inline",
        )


class ModelSpec(_Model):
    """``spec.model``: where the base model (weights + tokenizer) comes from."""

    source: str = Field(min_length=1, max_length=1024)
    architecture: Architecture | None = None


class EvalSpec(_Model):
    """``spec.dataset.eval``: a held-out fraction or a separate dataset, a schedule, prompts to sample."""

    split: float | None = Field(default=None, gt=0, le=0.5)
    source: str | None = Field(default=None, max_length=1024)
    every_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    prompts: tuple[Annotated[str, Field(max_length=4096)], ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _split_or_source(self) -> EvalSpec:
        if self.split is not None and self.source:
            raise ValueError("takes either split or source, not both")
        return self


class DatasetSpec(_Model):
    """``spec.dataset``."""

    source: str = Field(min_length=1, max_length=1024)
    format: DatasetFormat = "auto"
    train_on: TrainOn = "responses"
    # auto: the tokenizer's template, else chatml; chatml | llama3: that template
    chat_template: ChatTemplate = "auto"
    eval: EvalSpec | None = None


class LoraSpec(_Model):
    """``spec.hyperparameters.lora``."""

    r: int = Field(default=16, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0, le=65536)
    dropout: float = Field(default=0.0, ge=0, le=0.9)
    target_modules: Annotated[
        tuple[Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")], ...],
        BeforeValidator(_one_or_many),
    ] = Field(default=(est.ALL_LINEAR,), min_length=1, max_length=32)
    rslora: bool = False
    dora: bool = False

    @model_validator(mode="after")
    def _all_linear_alone(self) -> LoraSpec:
        if est.ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ValueError("targetModules: all-linear already selects every linear layer; list it alone")
        return self


class Hyperparameters(_Model):
    """``spec.hyperparameters``. ``batchSize`` is the micro-batch per GPU."""

    epochs: float = Field(default=1.0, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    batch_size: int = Field(default=2, ge=1, le=4096)
    gradient_accumulation: int = Field(default=4, ge=1, le=4096)
    max_seq_length: int = Field(default=2048, ge=16, le=131072)
    packing: bool = True
    gradient_checkpointing: bool = True
    optimizer: Optimizer = "adamw_8bit"
    lr_scheduler: LrScheduler = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    max_grad_norm: float = Field(default=1.0, ge=0, le=1000)
    seed: int = Field(default=0, ge=0, le=4294967295)
    lora: LoraSpec = LoraSpec()


class Toleration(_Model):
    key: str | None = Field(default=None, max_length=317)
    operator: TolerationOperator | None = None
    value: str | None = Field(default=None, max_length=256)
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(_Model):
    """``spec.resources``: what the operator asks the scheduler for.

    ``gpus`` per node, on ``nodes`` nodes: the trainer runs one process per GPU (torchrun), a world
    of ``gpus × nodes`` ranks.
    """

    gpus: int = Field(default=1, ge=1, le=8)
    nodes: int = Field(default=1, ge=1, le=64)
    gpu_memory: str | int = "auto"
    gpu_products: tuple[Annotated[str, Field(max_length=128)], ...] = Field(default=(), max_length=32)
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32)
    tolerations: tuple[Toleration, ...] = Field(default=(), max_length=32)
    priority_class_name: str | None = Field(default=None, max_length=253)
    cpu: str | int | None = None
    memory: str | int | None = None


class DistributedSpec(_Model):
    """``spec.distributed``: how a job on more than one GPU shares the work.

    ``ddp`` replicates the model on every GPU; ``fsdp`` shards parameters, gradients and optimizer
    states across them; ``auto`` takes DDP when one replica fits a GPU, else FSDP. ``batchSize``
    stays per GPU: the global batch is batchSize × gradientAccumulation × gpus × nodes, and the
    learning rate is not rescaled.
    """

    strategy: Strategy = "auto"


class StorageSpec(_Model):
    """``spec.storage``: the job's bucket. No endpoint (or file://DIR): a local directory (local runs)."""

    endpoint: str | None = Field(default=None, max_length=512)
    bucket: str | None = Field(default=None, min_length=3, max_length=63, pattern=BUCKET_PATTERN)
    credentials_secret: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN
    )
    # no Secret: the trainer's ServiceAccount token is exchanged through STS for this role's keys
    # (AssumeRoleWithWebIdentity: EKS's IRSA, MinIO's OpenID STS)
    role_arn: str | None = Field(default=None, min_length=1, max_length=2048, pattern=ROLE_ARN_PATTERN)

    @model_validator(mode="after")
    def _one_way(self) -> StorageSpec:
        if self.credentials_secret and self.role_arn:
            raise ValueError(
                "credentialsSecret and roleArn: name one (static keys from a Secret, or a role assumed "
                "with the job's ServiceAccount token)"
            )
        return self


class CheckpointSpec(_Model):
    """``spec.checkpoints``."""

    every_steps: int = Field(default=100, ge=1, le=10_000_000)
    keep: int = Field(default=3, ge=1, le=100)


class OciSpec(_Model):
    """``spec.export.oci``: push every export as an OCI artifact (ORAS) to ``repository:<job>-<format>``."""

    repository: str = Field(min_length=1, max_length=255, pattern=OCI_REPOSITORY_PATTERN)
    # a kubernetes.io/dockerconfigjson Secret with an entry for the registry (none: push anonymously)
    credentials_secret: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN
    )
    # plain HTTP instead of HTTPS; registries on loopback (localhost, 127.x) always use plain HTTP
    plain_http: bool = False


class ExportSpec(_Model):
    """``spec.export``: empty formats means [adapter] for qlora/lora and [merged-16bit] for full."""

    formats: tuple[ExportFormat, ...] | None = Field(default=None, min_length=1, max_length=5)
    oci: OciSpec | None = None

    @model_validator(mode="after")
    def _distinct(self) -> ExportSpec:
        if self.formats and len(set(self.formats)) != len(self.formats):
            raise ValueError("formats: each format once")
        return self


class FineTuneJobSpec(_Model):
    """``spec`` of a FineTuneJob."""

    model: ModelSpec
    method: Method = "qlora"
    dataset: DatasetSpec
    hyperparameters: Hyperparameters = Hyperparameters()
    resources: ResourcesSpec = ResourcesSpec()
    storage: StorageSpec = StorageSpec()
    checkpoints: CheckpointSpec = CheckpointSpec()
    export: ExportSpec = ExportSpec()
    distributed: DistributedSpec = DistributedSpec()
    # a checkpoint of an earlier run to start from: s3://<bucket>/<namespace>/<job>/<uid>/ (its newest)
    # or .../checkpoints/step-N/; same base model and method (the trainer checks its manifest)
    resume_from: str | None = Field(default=None, max_length=1024)
    # the FineTuneProfile of the job, among those its namespace allows; unset: the namespace's default
    profile: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    # what deleting the FineTuneJob does to its run's checkpoints and artifacts in storage
    cleanup: Cleanup = "Retain"
    # the Kueue LocalQueue of the trainer Job; unset: the namespace's LocalQueue "default", if any
    queue_name: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    suspend: bool = False
    backoff_limit: int = Field(default=3, ge=0, le=100)
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _method_fits_the_rest(self) -> FineTuneJobSpec:
        if self.method == "full" and self.export.formats and "adapter" in self.export.formats:
            raise ValueError(
                "export.formats: 'adapter' needs method qlora, lora or auto; "
                "method full exports 'merged-16bit'"
            )
        optimizer = self.hyperparameters.optimizer
        if self.distributed.strategy == "fsdp" and optimizer in est.OPTIMIZERS_NO_FSDP:
            raise ValueError(
                f"distributed.strategy fsdp cannot use optimizer {optimizer} (bitsandbytes optimizers do not"
                " step FSDP's shards): use adamw_torch_fused, or strategy ddp"
            )
        if self.distributed.strategy == "fsdp" and self.world_size == 1:
            raise ValueError("distributed.strategy fsdp shards over GPUs: set resources.gpus or nodes > 1")
        if self.method == "full" and "lora" in self.hyperparameters.model_fields_set:
            raise ValueError("hyperparameters.lora: only the qlora and lora methods use it, not method: full")
        return self

    @property
    def world_size(self) -> int:
        """Training processes: one per GPU, on every node."""
        return self.resources.gpus * self.resources.nodes

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step: per-GPU batch × accumulation × world size."""
        hp = self.hyperparameters
        return hp.batch_size * hp.gradient_accumulation * self.world_size

    def candidate_methods(self) -> tuple[est.Method, ...]:
        """The methods the job may train with, most accurate first: ``auto`` is every one, except
        full fine-tuning when an adapter export is asked for (full training makes no adapter)."""
        if self.method != "auto":
            return (self.method,)
        if self.export.formats and "adapter" in self.export.formats:
            return tuple(m for m in est.METHODS if m != "full")
        return est.METHODS

    def export_formats(self, method: str) -> tuple[str, ...]:
        """Export formats with the method-dependent default filled in (``method`` resolved, never auto)."""
        if self.export.formats:
            return tuple(self.export.formats)
        return ("merged-16bit",) if method == "full" else ("adapter",)

    @property
    def eval_every_steps(self) -> int | None:
        """``dataset.eval.everySteps`` (None: the trainer's default schedule)."""
        return self.dataset.eval.every_steps if self.dataset.eval is not None else None

    @property
    def eval_prompts(self) -> tuple[str, ...]:
        """``dataset.eval.prompts``: prompts whose generations are sampled after training."""
        return self.dataset.eval.prompts if self.dataset.eval is not None else ()


# --- parsing ---------------------------------------------------------------------------------------


def _submodel(annotation: Any) -> type[_Model] | None:
    """The model class a field holds (directly, optionally, or as the items of a tuple), if any."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, _Model):
            return arg
        for inner in typing.get_args(arg):
            if isinstance(inner, type) and issubclass(inner, _Model):
                return inner
    return None


def keys(model: type[_Model]) -> dict[str, str]:
    """A model's spec keys (camelCase) → attribute names."""
    return {(f.alias or name): name for name, f in model.model_fields.items()}


def model_at(path: typing.Sequence[str], model: type[_Model] = FineTuneJobSpec) -> type[_Model] | None:
    """The model class at a path of spec keys (``["hyperparameters", "lora"]``), None for a leaf."""
    for key in path:
        names = keys(model)
        if key not in names:
            return None
        sub = _submodel(model.model_fields[names[key]].annotation)
        if sub is None:
            return None
        model = sub
    return model


def _prune(model: type[_Model], data: Any, path: str, dropped: list[str]) -> Any:
    """``data`` without the keys ``model`` does not know (their paths go to ``dropped``)."""
    if not isinstance(data, Mapping):
        return data
    names = keys(model)
    out: dict[str, Any] = {}
    for key, value in data.items():
        attr = names.get(key) or (key if key in model.model_fields else None)
        if attr is None:
            dropped.append(f"{path}.{key}")
            continue
        sub = _submodel(model.model_fields[attr].annotation)
        if sub is not None and isinstance(value, list):
            value = [_prune(sub, v, f"{path}.{key}[{i}]", dropped) for i, v in enumerate(value)]
        elif sub is not None:
            value = _prune(sub, value, f"{path}.{key}", dropped)
        out[key] = value
    return out


def _where(root: str, loc: tuple[Any, ...]) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(root: str, err: Mapping[str, Any]) -> str:
    """One pydantic error as ``spec.path: what is wrong``."""
    loc = tuple(p for p in err.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-")))
    where = _where(root, loc)
    kind, ctx, got = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        parent = model_at([str(p) for p in loc[:-1] if not isinstance(p, int)])
        known = f" (known: {', '.join(sorted(keys(parent)))})" if parent is not None else ""
        return f"{where}: unknown key{known}"
    if kind == "literal_error":
        return f"{where}: {got!r} is not one of {ctx.get('expected', '')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{where}: expected an integer, got {got!r}"
    if kind in ("float_parsing", "float_type"):
        return f"{where}: expected a number, got {got!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{where}: expected true or false, got {got!r}"
    bounds = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}  # fmt: skip
    if kind in bounds:
        words, key = bounds[kind]
        return f"{where}: must be {words} {ctx.get(key)}, got {got!r}"
    if kind == "value_error":  # a cross-field check: its message starts with a key path, or is plain text
        msg = str(ctx.get("error", err.get("msg", "")))
        return f"{where}{'.' if re.match(r'[A-Za-z][A-Za-z0-9.]*: ', msg) else ': '}{msg}"
    return f"{where}: {err.get('msg', 'invalid')}" + (f", got {got!r}" if kind.endswith("_type") else "")


def parse_spec(data: Any, *, strict: bool = True, root: str = "spec") -> FineTuneJobSpec:
    """A spec mapping (camelCase keys) as a :class:`FineTuneJobSpec`; raises :class:`SpecError`.

    ``strict=False`` drops unknown keys with a warning naming each (the operator's job.json, the
    objects the apiserver already checked); ``strict=True`` refuses them.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"{root}: expected a mapping, got {data!r}")
    if not strict:
        dropped: list[str] = []
        data = _prune(FineTuneJobSpec, data, root, dropped)
        for path in dropped:
            log.warning("ignoring unknown key %s (this version of kubeft does not know it)", path)
    try:
        return FineTuneJobSpec.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_describe(root, e) for e in exc.errors(include_url=False)]
        raise SpecError("; ".join(dict.fromkeys(problems))) from None
