"""The FineTuneJob spec as frozen pydantic models, parsed once at the top of each handler.

The CRD schema (crds/kubeft.io_finetunejobs.yaml) rejects bad input at apply time;
these models repeat its defaults so that the operator works on objects created
before a default was added, and give the rest of the code typed access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubeft import estimate as est

Method = Literal["qlora", "lora", "full", "auto"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Architecture(_Model):
    """``spec.model.architecture``: config.json facts given inline instead of read from the model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False

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
    source: str
    architecture: Architecture | None = None


class EvalSpec(_Model):
    split: float | None = None
    source: str | None = None
    every_steps: int | None = None
    prompts: tuple[str, ...] = ()


class DatasetSpec(_Model):
    source: str
    format: Literal["auto", "alpaca", "sharegpt", "messages", "text"] = "auto"
    train_on: Literal["responses", "all"] = "responses"
    chat_template: Literal["auto", "chatml", "llama3"] = "auto"
    eval: EvalSpec | None = None


class LoraSpec(_Model):
    r: int = 16
    alpha: float = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (est.ALL_LINEAR,)
    rslora: bool = False
    dora: bool = False


class Hyperparameters(_Model):
    epochs: float = 1
    max_steps: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 2
    gradient_accumulation: int = 4
    max_seq_length: int = 2048
    packing: bool = True
    gradient_checkpointing: bool = True
    optimizer: str = "adamw_8bit"
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    lora: LoraSpec = Field(default_factory=LoraSpec)


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(_Model):
    gpus: int = 1
    gpu_memory: str | int = "auto"
    gpu_products: tuple[str, ...] = ()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    priority_class_name: str | None = None
    cpu: str | int | None = None
    memory: str | int | None = None


class StorageSpec(_Model):
    endpoint: str | None = None
    bucket: str | None = None
    credentials_secret: str


class CheckpointSpec(_Model):
    every_steps: int = 100
    keep: int = 3


class ExportSpec(_Model):
    formats: tuple[Literal["adapter", "merged-16bit"], ...] | None = None


class FineTuneJobSpec(_Model):
    """``spec`` of a FineTuneJob."""

    model: ModelSpec
    method: Method = "qlora"
    dataset: DatasetSpec
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    suspend: bool = False
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None

    def setup(self, method: est.Method, fused_cross_entropy: bool = False) -> est.Setup:
        """The estimator's inputs for this spec trained with ``method``."""
        hp = self.hyperparameters
        return est.Setup(
            method=method,
            micro_batch=hp.batch_size,
            seq_len=hp.max_seq_length,
            gradient_checkpointing=hp.gradient_checkpointing,
            padding_free=hp.packing,
            fused_cross_entropy=fused_cross_entropy,
            optimizer=hp.optimizer,
            lora_r=hp.lora.r,
            lora_targets=hp.lora.target_modules,
            lora_dropout=hp.lora.dropout,
        )

    def export_formats(self, method: est.Method) -> tuple[str, ...]:
        """Export formats with the method-dependent default filled in."""
        if self.export.formats:
            return tuple(self.export.formats)
        return ("merged-16bit",) if method == "full" else ("adapter",)


class InvalidSpec(ValueError):
    """The object does not parse into the spec model (only for objects the schema let through)."""


class FineTuneJob(_Model):
    """A parsed FineTuneJob: identity, spec and the status as read (a plain dict)."""

    name: str
    namespace: str
    uid: str
    generation: int = 0
    spec: FineTuneJobSpec
    status: dict[str, Any] = Field(default_factory=dict)
    deletion_timestamp: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> FineTuneJob:
        """Parses a FineTuneJob object as the API returns it; raises :class:`InvalidSpec`."""
        meta = body.get("metadata") or {}
        try:
            return cls(
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid", ""),
                generation=meta.get("generation") or 0,
                spec=FineTuneJobSpec.model_validate(dict(body.get("spec") or {})),
                status=dict(body.get("status") or {}),
                deletion_timestamp=meta.get("deletionTimestamp"),
            )
        except (KeyError, ValidationError) as exc:
            raise InvalidSpec(str(exc)) from exc

    @property
    def phase(self) -> str:
        """``status.phase``, empty before the operator first wrote it."""
        return str(self.status.get("phase") or "")

    @property
    def restarts(self) -> int:
        """``status.restarts``: failed attempts so far."""
        return int(self.status.get("restarts") or 0)
