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
    # the first retry delay of a job that waits (see retry_max_seconds)
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
    # more than one replica: the coordination.k8s.io Lease they elect the acting one with ("": a
    # single replica, no election); its namespace defaults to the pod's own (POD_NAMESPACE). The
    # leader renews it every retry period; a standby takes over once it went unrenewed this long.
    leader_election_lease: str = ""
    leader_election_namespace: str = ""
    leader_election_lease_seconds: float = Field(default=10.0, ge=2)
    leader_election_retry_seconds: float = Field(default=2.0, gt=0)
    # worker threads reconciling jobs (a job is never reconciled by two at once)
    workers: int = Field(default=8, ge=1, le=64)
    # a job waiting for something no watch reports (a Secret, a dataset upload, room for it) is
    # looked at again after reconcile_interval_seconds, doubling up to retry_max_seconds
    retry_max_seconds: float = Field(default=60.0, gt=0)
    # a running job without any change is looked at again after this long (from the caches: no
    # request); 0 never
    resync_seconds: float = Field(default=300.0, ge=0)
    # client-side limit on the operator's own API requests (kopf's watches are not counted)
    api_qps: float = Field(default=50.0, gt=0)
    api_burst: int = Field(default=200, ge=1)
    metrics_port: int = Field(default=8080, ge=0, le=65535)  # 0: no /metrics server
    liveness_port: int = Field(default=8081, ge=0, le=65535)  # 0: no /healthz endpoint
    model_config_timeout_seconds: float = Field(default=10.0, gt=0)
    hf_endpoint: str = "https://huggingface.co"
    # URL prefixes (comma-separated) of every endpoint the operator may contact for a job: storage
    # and hub; empty: any. Profiles narrow it further (operator/kubeft_operator/endpoints.py).
    allowed_endpoints: tuple[str, ...] = ()
    trainer_run_as_user: int = 1000
    # extra labels and annotations on trainer pods ("k=v,k2=v2"): cost allocation, a mesh opt-out;
    # the scale benchmark's kubeft.io/simulate=true hands the pods to kwok instead of a runner
    trainer_pod_labels: tuple[tuple[str, str], ...] = ()
    trainer_pod_annotations: tuple[tuple[str, str], ...] = ()
    workdir: str = "/var/lib/kubeft"
    # Secrets (in each job's namespace) the trainer pods pull their image with
    trainer_image_pull_secrets: tuple[str, ...] = ()
    # the trainer pod's /tmp and cache (HF_HOME, XDG_CACHE_HOME, triton, inductor) emptyDirs
    trainer_tmp_bytes: int = Field(default=2**30, ge=64 * 2**20)
    trainer_cache_bytes: int = Field(default=2 * 2**30, ge=64 * 2**20)
    # lifetime of the trainer's projected ServiceAccount token (the kubelet renews it at 80%)
    trainer_token_expiration_seconds: int = Field(default=3600, ge=600)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads ``KUBEFT_<FIELD>`` variables; lists are comma-separated. Raises ValueError on bad values."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(PREFIX + name.upper())
            if raw is None:
                continue
            if name in ("namespaces", "allowed_endpoints", "trainer_image_pull_secrets"):
                values[name] = tuple(n.strip() for n in raw.split(",") if n.strip())
            elif name in ("trainer_pod_labels", "trainer_pod_annotations"):
                pairs = [p.partition("=") for p in raw.split(",") if p.strip()]
                values[name] = tuple((k.strip(), v.strip()) for k, _, v in pairs)
            elif name == "trainer_command":
                values[name] = tuple(shlex.split(raw))
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(f"bad {PREFIX}* setting: {exc}") from exc
