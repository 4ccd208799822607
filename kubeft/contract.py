"""Names shared by the operator, the trainer, the dev stack and the tests.

One place for every label, resource name, environment variable and file path
that crosses a process boundary. The operator renders the trainer pod from these;
the trainer reads them; docs/trainer-contract.md describes them for humans.
"""

from __future__ import annotations

from typing import Final

# --- the API -----------------------------------------------------------------
GROUP: Final = "kubeft.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "FineTuneJob"
PLURAL: Final = "finetunejobs"
SINGULAR: Final = "finetunejob"
SHORT_NAME: Final = "ftj"

# --- status: phases, and the one writer of each field ---------------------------------
PHASE_PENDING: Final = "Pending"
PHASE_QUEUED: Final = "Queued"  # the trainer Job waits for Kueue to admit (or readmit) it
PHASE_SCHEDULING: Final = "Scheduling"
PHASE_INITIALIZING: Final = "Initializing"
PHASE_TRAINING: Final = "Training"
PHASE_EVALUATING: Final = "Evaluating"
PHASE_EXPORTING: Final = "Exporting"
PHASE_SUCCEEDED: Final = "Succeeded"
PHASE_FAILED: Final = "Failed"
PHASE_SUSPENDED: Final = "Suspended"
PHASES: Final = (
    PHASE_PENDING, PHASE_QUEUED, PHASE_SCHEDULING, PHASE_INITIALIZING, PHASE_TRAINING, PHASE_EVALUATING,
    PHASE_EXPORTING, PHASE_SUCCEEDED, PHASE_FAILED, PHASE_SUSPENDED,
)  # fmt: skip
# status.phase is written by value: the trainer sets these while its pod runs, the operator every other
TRAINER_PHASES: Final = (PHASE_TRAINING, PHASE_EVALUATING, PHASE_EXPORTING)
OPERATOR_PHASES: Final = tuple(p for p in PHASES if p not in TRAINER_PHASES)
RUNNING_PHASES: Final = (PHASE_SCHEDULING, PHASE_INITIALIZING, *TRAINER_PHASES)
TERMINAL_PHASES: Final = (PHASE_SUCCEEDED, PHASE_FAILED)
# Every other status field has one writer (docs/design.md, "Status ownership").
TRAINER_STATUS_FIELDS: Final = ("progress", "checkpoints", "artifacts", "metrics")
OPERATOR_STATUS_FIELDS: Final = (
    "message", "observedGeneration", "conditions", "vram", "gpu", "queue", "trainerJob", "distributed",
    "node", "pod", "restarts", "lastFailure", "startTime", "completionTime",
)  # fmt: skip

# --- GPU node facts (NVIDIA GPU Feature Discovery labels, device plugin resource)
LABEL_GPU_PRODUCT: Final = "nvidia.com/gpu.product"
LABEL_GPU_MEMORY: Final = "nvidia.com/gpu.memory"  # MiB per GPU
LABEL_GPU_COUNT: Final = "nvidia.com/gpu.count"
LABEL_GPU_PRESENT: Final = "nvidia.com/gpu.present"
RESOURCE_GPU: Final = "nvidia.com/gpu"
GPU_TAINT_KEY: Final = "nvidia.com/gpu"
GPU_TAINT_VALUE: Final = "present"
GPU_TAINT_EFFECT: Final = "NoSchedule"

# --- labels and annotations on objects kubeft creates --------------------------
LABEL_JOB: Final = "kubeft.io/job"  # value: the FineTuneJob's name
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
COMPONENT_TRAINER: Final = "trainer"
COMPONENT_OPERATOR: Final = "operator"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "kubeft"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"

# --- Kueue (kueue.x-k8s.io): the queue a trainer Job waits in, and what Kueue writes back
KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_VERSION: Final = "v1beta2"
LABEL_QUEUE_NAME: Final = "kueue.x-k8s.io/queue-name"  # on the Job: its LocalQueue
# on a trainer pod: kwok plays it (Running, then Succeeded) instead of the local pod runner (bench/scale)
LABEL_SIMULATE: Final = f"{GROUP}/simulate"
LABEL_CONTROLLER_UID: Final = "batch.kubernetes.io/controller-uid"  # on a Job's pods: the Job's uid
LABEL_KUEUE_JOB_UID: Final = "kueue.x-k8s.io/job-uid"  # on the Workload: the Job it admits

# --- the trainer pod -----------------------------------------------------------
TRAINER_CONTAINER: Final = "trainer"
TRAINER_CONFIG_DIR: Final = "/etc/kubeft"
TRAINER_CONFIG_FILE: Final = "job.json"  # key in the job's ConfigMap, file in TRAINER_CONFIG_DIR
METRICS_PORT: Final = 9400
METRICS_PORT_NAME: Final = "metrics"
TERMINATION_LOG: Final = "/dev/termination-log"
# pvc://<claim>/<path> sources: each claim is mounted read-only at PVC_ROOT/<claim>
PVC_ROOT: Final = "/mnt/kubeft/pvc"
# The root filesystem is read-only: the trainer writes only to its emptyDirs, the work directory
# (KUBEFT_WORKDIR), TMP_DIR (HOME and TMPDIR) and CACHE_DIR (HF_HOME, XDG_CACHE_HOME, kernel caches).
TMP_DIR: Final = "/tmp"
CACHE_DIR: Final = "/var/cache/kubeft"
# the ServiceAccount token, projected for the status patch only (where client libraries look for it)
SA_TOKEN_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"

# Environment variables the operator sets on the trainer container.
ENV_JOB_CONFIG: Final = "KUBEFT_JOB_CONFIG"  # path to job.json
ENV_JOB_NAME: Final = "KUBEFT_JOB_NAME"
ENV_JOB_NAMESPACE: Final = "KUBEFT_JOB_NAMESPACE"
ENV_METRICS_PORT: Final = "KUBEFT_METRICS_PORT"
ENV_TERMINATION_LOG: Final = "KUBEFT_TERMINATION_LOG"  # override of TERMINATION_LOG (local runs)
ENV_WORKDIR: Final = "KUBEFT_WORKDIR"  # scratch space for downloads and checkpoints
ENV_PVC_ROOT: Final = "KUBEFT_PVC_ROOT"  # where the claims of pvc:// sources are mounted (PVC_ROOT)
ENV_S3_ACCESS_KEY: Final = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY: Final = "AWS_SECRET_ACCESS_KEY"
ENV_HF_TOKEN: Final = "HF_TOKEN"
# the hub or a mirror of it (a profile's defaults.hubEndpoint, else the operator's)
ENV_HF_ENDPOINT: Final = "HF_ENDPOINT"
# more than one GPU: the trainer runs under torchrun, one process per GPU, a c10d rendezvous on the
# pod of index 0 (its node rank is the Indexed Job's JOB_COMPLETION_INDEX)
ENV_NNODES: Final = "KUBEFT_NNODES"
ENV_NPROC_PER_NODE: Final = "KUBEFT_NPROC_PER_NODE"
ENV_RDZV_ENDPOINT: Final = "KUBEFT_RDZV_ENDPOINT"  # host:port of index 0 (the headless Service)
ENV_RDZV_ID: Final = "KUBEFT_RDZV_ID"  # the FineTuneJob's UID
ENV_METRICS_PORTS: Final = "KUBEFT_METRICS_PORTS"  # one metrics port per local rank, comma-separated
ENV_NODE_RANK: Final = "JOB_COMPLETION_INDEX"  # set by the Indexed Job controller
RDZV_PORT: Final = 29400
RDZV_PORT_NAME: Final = "rdzv"
ENV_OCI_AUTH: Final = "KUBEFT_OCI_AUTH"  # export.oci.credentialsSecret's .dockerconfigjson

# Keys the storage credentials Secret (spec.storage.credentialsSecret) must hold.
SECRET_ACCESS_KEY: Final = "accessKey"
SECRET_SECRET_KEY: Final = "secretKey"
SECRET_HF_TOKEN: Final = "hfToken"  # optional
# The key of a kubernetes.io/dockerconfigjson Secret (export.oci.credentialsSecret).
SECRET_DOCKER_CONFIG: Final = ".dockerconfigjson"

# Trainer exit codes: the trainer Job retries a failed pod up to spec.backoffLimit, except for
# EXIT_INVALID_INPUT (bad dataset, unreadable model...), which fails it at once (retrying cannot
# help), and EXIT_TERMINATED (SIGTERM after a final checkpoint: preempted, evicted, drained, deleted),
# which costs no retry.
EXIT_OK: Final = 0
EXIT_INVALID_INPUT: Final = 2
EXIT_TERMINATED: Final = 143  # 128 + SIGTERM

# The trainer config document (job.json) that the operator writes and the trainer reads.
TRAINER_CONFIG_API_VERSION: Final = API_VERSION
TRAINER_CONFIG_KIND: Final = "TrainerConfig"


# Storage layout under s3://<spec.storage.bucket>/
LOCAL_RUN: Final = "local"  # the run of a job that has no UID (`kubeft train` without a cluster)


def job_prefix(namespace: str, name: str, uid: str = "") -> str:
    """Object prefix (no bucket, no trailing slash) that holds everything of one job: its checkpoints
    and artifacts, under ``<namespace>/<name>/<uid>``. A job deleted and created again under the same
    name has a new UID, so it starts fresh instead of resuming the old run (``spec.resumeFrom`` can
    point at that run on purpose)."""
    return f"{namespace}/{name}/{uid or LOCAL_RUN}"


def checkpoint_prefix(job_root: str, step: int) -> str:
    """The step-N checkpoint of the job run whose prefix is ``job_root`` (:func:`job_prefix`)."""
    return f"{job_root}/checkpoints/step-{step}"


def artifacts_prefix(job_root: str) -> str:
    """The exported artifacts of the job run whose prefix is ``job_root``."""
    return f"{job_root}/artifacts"


CHECKPOINT_MANIFEST: Final = "manifest.json"  # written last: marks a checkpoint complete


def pvc_claim(uri: str) -> str | None:
    """The claim of a ``pvc://<claim>/<path>`` source; None for other sources."""
    if not uri.startswith("pvc://"):
        return None
    return uri[len("pvc://") :].partition("/")[0] or None
