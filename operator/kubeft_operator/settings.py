"""Operator settings: typed, read from KUBEFT_* environment variables once at startup."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubeft import estimate as est

PREFIX = "KUBEFT_"


class Settings(BaseModel):
    """Every knob of the operator; the field ``trainer_image`` is set by ``KUBEFT_TRAINER_IMAGE``."""

    model_config = ConfigDict(frozen=True)

    trainer_image: str = "ghcr.io/kubeft/trainer:0.1.0"
    trainer_image_pull_policy: str = "IfNotPresent"
    # the trainer container's command (space-separated); the image's kubeft-trainer unless debugging
    trainer_command: tuple[str, ...] = ("kubeft-trainer",)
    default_storage_endpoint: str = "http://minio.minio:9000"
    default_bucket: str = "kubeft"
    # web identity (a job with spec.storage.roleArn, no Secret): the audience of the trainer's
    # projected ServiceAccount token (what the STS expects: EKS's is sts.amazonaws.com, MinIO's is
    # its OpenID client ID), and the STS endpoint ("": the storage endpoint, where MinIO serves STS)
    web_identity_audience: str = Field(default="sts.amazonaws.com", min_length=1)
    web_identity_sts_endpoint: str = ""
    # namespaces to watch; empty means all (cluster-wide)
    namespaces: tuple[str, ...] = ()
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    # required GPU memory = estimate × (1 + margin)
    memory_margin: float = Field(default=est.PLACEMENT_MARGIN, ge=0)
    # the Kueue LocalQueue a job without spec.queueName goes to, when its namespace has one of this
    # name (Kueue's own convention); else such a job's trainer Job runs without a queue
    default_queue_name: str = "default"
    # SIGTERM (preemption, eviction, deletion) gives the trainer this long to save and upload its
    # final checkpoint: the floor plus twice (write, then upload) the checkpoint at this rate
    termination_grace_floor_seconds: int = Field(default=120, ge=0)
    checkpoint_bytes_per_second: float = Field(default=50e6, gt=0)
    # more than one replica: the kopf peering object they share ("" runs standalone, one replica);
    # the highest priority acts, the others pause; 0 picks a random one per process. A replica that
    # stops renewing itself for the lifetime is taken for dead and the next one takes over.
    peering: str = ""
    peering_priority: int = Field(default=0, ge=0)
    peering_lifetime_seconds: int = Field(default=10, ge=2)
    # client-side limit on the operator's own API requests (kopf's watches are not counted)
    api_qps: float = Field(default=20.0, gt=0)
    api_burst: int = Field(default=40, ge=1)
    metrics_port: int = Field(default=8080, ge=0, le=65535)  # 0: no /metrics server
    liveness_port: int = Field(default=8081, ge=0, le=65535)  # 0: no /healthz endpoint
    model_config_timeout_seconds: float = Field(default=10.0, gt=0)
    hf_endpoint: str = "https://huggingface.co"
    trainer_run_as_user: int = 1000
    workdir: str = "/var/lib/kubeft"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads ``KUBEFT_<FIELD>`` variables; lists are comma-separated. Raises ValueError on bad values."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(PREFIX + name.upper())
            if raw is None:
                continue
            if name == "namespaces":
                values[name] = tuple(n.strip() for n in raw.split(",") if n.strip())
            elif name == "trainer_command":
                values[name] = tuple(shlex.split(raw))
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(f"bad {PREFIX}* setting: {exc}") from exc
