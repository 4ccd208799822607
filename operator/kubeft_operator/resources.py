"""Pure builders of the objects a FineTuneJob owns: ``get_*(job, plan) -> V1…``.

Names are deterministic (a second create of the same attempt collides instead of
duplicating), every object carries the job's labels and a controller owner
reference (deleting the FineTuneJob deletes them), and no builder ever sees a
Secret's value: credentials reach the trainer through ``secretKeyRef`` only, or, for a job with
``spec.storage.roleArn`` and no Secret, as a projected ServiceAccount token that the trainer
exchanges through STS (kubeft.webidentity).
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from kubeft import contract, webidentity

from . import exportcheck
from .api import FineTuneJob
from .modelconfig import shape_to_dict
from .plan import Plan, Scratch

CONFIG_VOLUME = "job-config"
WORK_VOLUME = "work"
SHM_VOLUME = "dshm"
TMP_VOLUME = "tmp"
CACHE_VOLUME = "cache"
TOKEN_VOLUME = "kube-api-access"
ROOT_CA_CONFIG_MAP = "kube-root-ca.crt"  # published in every namespace by the controller-manager


def trainer_name(job: FineTuneJob) -> str:
    """Name of the per-job ServiceAccount, Role and RoleBinding."""
    return f"{job.name}-trainer"


def config_map_name(job: FineTuneJob) -> str:
    """Name of the ConfigMap that holds job.json."""
    return f"{job.name}-config"


TRAINER_JOB_SUFFIX = "-trainer"


def trainer_job_name(job: FineTuneJob) -> str:
    """Name of the batch/v1 Job that runs the trainer (its pods are ``<name>-0-<random>``)."""
    return f"{job.name}{TRAINER_JOB_SUFFIX}"


def labels(job: FineTuneJob) -> dict[str, str]:
    """Labels on every object the job owns."""
    return {
        contract.LABEL_JOB: job.name,
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
        contract.LABEL_PART_OF: contract.MANAGED_BY,
    }


def owner_reference(job: FineTuneJob) -> client.V1OwnerReference:
    """Controller reference to the FineTuneJob (cascade deletion through the garbage collector)."""
    return client.V1OwnerReference(
        api_version=contract.API_VERSION,
        kind=contract.KIND,
        name=job.name,
        uid=job.uid,
        controller=True,
        block_owner_deletion=True,
    )


def _meta(job: FineTuneJob, name: str, extra: dict[str, str] | None = None) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(
        name=name,
        namespace=job.namespace,
        labels=labels(job) | (extra or {}),
        owner_references=[owner_reference(job)],
    )


def get_service_account(job: FineTuneJob, plan: Plan | None = None) -> client.V1ServiceAccount:
    """The trainer's own identity."""
    return client.V1ServiceAccount(metadata=_meta(job, trainer_name(job)))


def get_role(job: FineTuneJob, plan: Plan) -> client.V1Role:
    """get/patch on this one FineTuneJob and its status, and creating Events (what the dataset's
    lengths cut: kubernetes cannot narrow ``create`` by name), nothing else."""
    return client.V1Role(
        metadata=_meta(job, trainer_name(job)),
        rules=[
            client.V1PolicyRule(
                api_groups=[contract.GROUP],
                resources=[contract.PLURAL, f"{contract.PLURAL}/status"],
                resource_names=[job.name],
                verbs=["get", "patch"],
            ),
            client.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["create"]),
        ],
    )


def get_role_binding(job: FineTuneJob, plan: Plan) -> client.V1RoleBinding:
    """Binds the job's Role to the job's ServiceAccount."""
    return client.V1RoleBinding(
        metadata=_meta(job, trainer_name(job)),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=trainer_name(job)),
        subjects=[
            client.RbacV1Subject(kind="ServiceAccount", name=trainer_name(job), namespace=job.namespace)
        ],
    )


def trainer_config(job: FineTuneJob, plan: Plan) -> dict[str, Any]:
    """The job.json document the trainer reads (kind TrainerConfig).

    ``spec`` is the FineTuneJob spec with every default filled in, the method
    resolved (never ``auto``) and the storage endpoint/bucket set.
    """
    spec = job.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    spec["method"] = plan.method
    spec["distributed"] = {"strategy": plan.strategy}  # resolved: never auto
    if plan.method == "full":  # LoRA settings (their defaults, or auto's) mean nothing to full training
        spec.get("hyperparameters", {}).pop("lora", None)
    spec["storage"]["endpoint"] = plan.endpoint
    spec["storage"]["bucket"] = plan.bucket
    spec["export"] = {**spec.get("export", {}), "formats": list(job.spec.export_formats(plan.method))}
    # the GPU classes the pod may land on (Kueue picks one when queued); the trainer plans for the
    # least memory among them
    placement: dict[str, Any] = {
        "gpuProducts": list(plan.gpu_products),
        "gpuMemoryBytes": plan.gpu_memory_bytes,
        "gpuCount": plan.gpu_count,
    }
    if len(plan.gpu_products) == 1:
        placement["gpuProduct"] = plan.gpu_products[0]
    estimate = plan.estimate_doc()
    if plan.shape is not None:
        estimate["modelShape"] = shape_to_dict(plan.shape)
    return {
        "apiVersion": contract.TRAINER_CONFIG_API_VERSION,
        "kind": contract.TRAINER_CONFIG_KIND,
        "job": {"name": job.name, "namespace": job.namespace, "uid": job.uid},
        "spec": spec,
        "placement": placement,
        "estimate": estimate,
    }


def get_config_map(job: FineTuneJob, plan: Plan) -> client.V1ConfigMap:
    """ConfigMap ``<job>-config`` with key job.json."""
    doc = trainer_config(job, plan)
    return client.V1ConfigMap(
        metadata=_meta(job, config_map_name(job)),
        data={contract.TRAINER_CONFIG_FILE: json.dumps(doc, indent=2, sort_keys=True)},
    )


def source_claims(job: FineTuneJob) -> dict[str, list[str]]:
    """Claims of the job's ``pvc://`` sources → the spec fields that name them (in spec order)."""
    ds = job.spec.dataset
    fields = [("spec.model.source", job.spec.model.source), ("spec.dataset.source", ds.source)]
    if ds.eval is not None and ds.eval.source:
        fields.append(("spec.dataset.eval.source", ds.eval.source))
    claims: dict[str, list[str]] = {}
    for what, uri in fields:
        claim = contract.pvc_claim(uri)
        if claim:
            claims.setdefault(claim, []).append(what)
    return claims


def _claim_volumes(job: FineTuneJob) -> tuple[list[client.V1Volume], list[client.V1VolumeMount]]:
    """A read-only volume per claim of a pvc:// source, mounted at PVC_ROOT/<claim>."""
    volumes, mounts = [], []
    for i, claim in enumerate(source_claims(job)):
        name = f"source-{i}"
        volumes.append(
            client.V1Volume(
                name=name,
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=claim, read_only=True
                ),
            )
        )
        mounts.append(
            client.V1VolumeMount(name=name, mount_path=f"{contract.PVC_ROOT}/{claim}", read_only=True)
        )
    return volumes, mounts


def uses_web_identity(job: FineTuneJob) -> bool:
    """No credentials Secret, a role: the trainer exchanges its ServiceAccount token for keys (STS)."""
    return not job.spec.storage.credentials_secret and bool(job.spec.storage.role_arn)


def _storage_env(job: FineTuneJob, plan: Plan) -> list[client.V1EnvVar]:
    """Static keys from the Secret, or the web identity chain (role, token file, STS endpoint)."""
    secret = job.spec.storage.credentials_secret
    if uses_web_identity(job):
        env = [
            client.V1EnvVar(name=webidentity.ENV_ROLE_ARN, value=job.spec.storage.role_arn),
            client.V1EnvVar(
                name=webidentity.ENV_TOKEN_FILE, value=f"{webidentity.TOKEN_DIR}/{webidentity.TOKEN_FILE}"
            ),
            client.V1EnvVar(name=webidentity.ENV_SESSION_NAME, value=session_name(job)),
        ]
        if plan.settings.web_identity_sts_endpoint:
            env.append(
                client.V1EnvVar(
                    name=webidentity.ENV_STS_ENDPOINT, value=plan.settings.web_identity_sts_endpoint
                )
            )
        return env

    def from_secret(name: str, key: str, optional: bool = False) -> client.V1EnvVar:
        return client.V1EnvVar(
            name=name,
            value_from=client.V1EnvVarSource(
                secret_key_ref=client.V1SecretKeySelector(name=secret, key=key, optional=optional or None)
            ),
        )

    env = [
        from_secret(contract.ENV_S3_ACCESS_KEY, contract.SECRET_ACCESS_KEY),
        from_secret(contract.ENV_S3_SECRET_KEY, contract.SECRET_SECRET_KEY),
    ]
    if plan.has_hf_token:
        env.append(from_secret(contract.ENV_HF_TOKEN, contract.SECRET_HF_TOKEN, optional=True))
    return env


def session_name(job: FineTuneJob, who: str = "trainer") -> str:
    """The STS session name (it shows in the storage's audit log): kubeft-<who>-<namespace>-<job>."""
    return f"kubeft-{who}-{job.namespace}-{job.name}"[:64]


def _web_identity_volume(
    job: FineTuneJob, plan: Plan
) -> tuple[list[client.V1Volume], list[client.V1VolumeMount]]:
    """The projected ServiceAccount token (the STS's audience) of a web-identity job; none otherwise."""
    if not uses_web_identity(job):
        return [], []
    volume = client.V1Volume(
        name=webidentity.TOKEN_VOLUME,
        projected=client.V1ProjectedVolumeSource(
            sources=[
                client.V1VolumeProjection(
                    service_account_token=client.V1ServiceAccountTokenProjection(
                        audience=plan.settings.web_identity_audience,
                        expiration_seconds=webidentity.TOKEN_SECONDS,
                        path=webidentity.TOKEN_FILE,
                    )
                )
            ]
        ),
    )
    mount = client.V1VolumeMount(
        name=webidentity.TOKEN_VOLUME, mount_path=webidentity.TOKEN_DIR, read_only=True
    )
    return [volume], [mount]


def _env(job: FineTuneJob, plan: Plan) -> list[client.V1EnvVar]:
    profile_hub = job.profile.defaults.hub_endpoint if job.profile is not None else None
    hub = profile_hub or plan.settings.hf_endpoint
    env = [
        client.V1EnvVar(
            name=contract.ENV_JOB_CONFIG,
            value=f"{contract.TRAINER_CONFIG_DIR}/{contract.TRAINER_CONFIG_FILE}",
        ),
        client.V1EnvVar(name=contract.ENV_JOB_NAME, value=job.name),
        client.V1EnvVar(name=contract.ENV_JOB_NAMESPACE, value=job.namespace),
        client.V1EnvVar(name=contract.ENV_METRICS_PORT, value=str(contract.METRICS_PORT)),
        client.V1EnvVar(name=contract.ENV_WORKDIR, value=plan.settings.workdir),
        *writable_env(),
        # the hub (or mirror) the operator read the model config from: the profile's, else its own
        client.V1EnvVar(name=contract.ENV_HF_ENDPOINT, value=hub),
        *_storage_env(job, plan),
    ]
    if source_claims(job):
        env.append(client.V1EnvVar(name=contract.ENV_PVC_ROOT, value=contract.PVC_ROOT))
    if plan.world_size > 1:
        gpus = plan.gpu_count
        env += [
            client.V1EnvVar(name=contract.ENV_NNODES, value=str(plan.nodes)),
            client.V1EnvVar(name=contract.ENV_NPROC_PER_NODE, value=str(gpus)),
            client.V1EnvVar(name=contract.ENV_RDZV_ENDPOINT, value=rendezvous_endpoint(job)),
            client.V1EnvVar(name=contract.ENV_RDZV_ID, value=job.uid or job.name),
        ]
        if gpus > 1:
            ports = ",".join(str(contract.METRICS_PORT + r) for r in range(gpus))
            env.append(client.V1EnvVar(name=contract.ENV_METRICS_PORTS, value=ports))
    return env + exportcheck.oci_env(job)


def writable_env() -> list[client.V1EnvVar]:
    """Every place the trainer and its libraries write by default, pointed at the pod's emptyDirs
    (the root filesystem is read-only): home and temporary files in TMP_DIR, caches in CACHE_DIR."""
    cache = contract.CACHE_DIR
    values = {
        "HOME": contract.TMP_DIR,
        "TMPDIR": contract.TMP_DIR,
        "XDG_CACHE_HOME": cache,
        "HF_HOME": f"{cache}/huggingface",  # hub metadata, datasets' and transformers' module caches
        "TRITON_CACHE_DIR": f"{cache}/triton",
        "TORCHINDUCTOR_CACHE_DIR": f"{cache}/torchinductor",
        "CUDA_CACHE_PATH": f"{cache}/nv",  # the driver's JIT-compiled kernels (else $HOME/.nv)
        # a one-shot download gains nothing from hf_xet's chunk cache (up to 10 GB in HF_HOME)
        "HF_XET_CHUNK_CACHE_SIZE_BYTES": "0",
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ next to the image's read-only modules
    }
    return [client.V1EnvVar(name=k, value=v) for k, v in values.items()]


def _quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity, in whole GiB where it is one."""
    return f"{n // 2**30}Gi" if n % 2**30 == 0 else str(n)


def scratch(job: FineTuneJob, plan: Plan) -> Scratch:
    """The trainer pod's local disk by volume, from the checkpoint estimate and the export formats."""
    formats = job.spec.export_formats(plan.method)
    return plan.scratch(formats, model_downloaded=contract.pvc_claim(job.spec.model.source) is None)


def _token_volume(plan: Plan) -> client.V1Volume:
    """The ServiceAccount token the trainer patches its job's status with: projected, short-lived
    (renewed by the kubelet), with the cluster's CA and the namespace, where client libraries look."""
    return client.V1Volume(
        name=TOKEN_VOLUME,
        projected=client.V1ProjectedVolumeSource(
            default_mode=0o644,
            sources=[
                client.V1VolumeProjection(
                    service_account_token=client.V1ServiceAccountTokenProjection(
                        path="token", expiration_seconds=plan.settings.trainer_token_expiration_seconds
                    )
                ),
                client.V1VolumeProjection(
                    config_map=client.V1ConfigMapProjection(
                        name=ROOT_CA_CONFIG_MAP, items=[client.V1KeyToPath(key="ca.crt", path="ca.crt")]
                    )
                ),
                client.V1VolumeProjection(
                    downward_api=client.V1DownwardAPIProjection(
                        items=[
                            client.V1DownwardAPIVolumeFile(
                                path="namespace",
                                field_ref=client.V1ObjectFieldSelector(
                                    api_version="v1", field_path="metadata.namespace"
                                ),
                            )
                        ]
                    )
                ),
            ],
        ),
    )


def rendezvous_endpoint(job: FineTuneJob) -> str:
    """host:port of the pod of index 0, through the headless Service (stable pod DNS names)."""
    name = trainer_job_name(job)
    return f"{name}-0.{name}.{job.namespace}.svc:{contract.RDZV_PORT}"


def _ports(plan: Plan) -> list[client.V1ContainerPort]:
    """Metrics (one port per local rank) and, with more than one pod or GPU, the rendezvous."""
    ports = [client.V1ContainerPort(name=contract.METRICS_PORT_NAME, container_port=contract.METRICS_PORT)]
    for rank in range(1, plan.gpu_count):
        ports.append(
            client.V1ContainerPort(
                name=f"{contract.METRICS_PORT_NAME}-{rank}", container_port=contract.METRICS_PORT + rank
            )
        )
    if plan.world_size > 1:
        ports.append(client.V1ContainerPort(name=contract.RDZV_PORT_NAME, container_port=contract.RDZV_PORT))
    return ports


def get_service(job: FineTuneJob, plan: Plan) -> client.V1Service:
    """The headless Service that gives each trainer pod a stable DNS name (<job>-trainer-<index>),
    for torchrun's rendezvous; only jobs on more than one GPU have one."""
    return client.V1Service(
        metadata=_meta(job, trainer_job_name(job)),
        spec=client.V1ServiceSpec(
            cluster_ip="None",
            publish_not_ready_addresses=True,  # the ranks meet before any is ready
            selector={contract.LABEL_JOB: job.name, contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER},
            ports=[client.V1ServicePort(name=contract.RDZV_PORT_NAME, port=contract.RDZV_PORT)],
        ),
    )


def _affinity(plan: Plan) -> client.V1Affinity:
    """Nodes of the allowed GPU classes: one term per label that names their GPU (terms are ORed).

    Kueue's flavor assignment reads the same requirement: a ResourceFlavor whose nodeLabels
    (GFD's product label) it excludes is never assigned, so Kueue picks among these classes."""
    selectors = plan.gpu_node_selectors
    terms = []
    for label, values in selectors.items():
        exprs = [client.V1NodeSelectorRequirement(key=label, operator="In", values=list(values))]
        if label == contract.LABEL_GPU_PRODUCT:  # GPU Feature Discovery also says the GPU is there
            exprs.append(
                client.V1NodeSelectorRequirement(
                    key=contract.LABEL_GPU_PRESENT, operator="In", values=["true"]
                )
            )
        terms.append(client.V1NodeSelectorTerm(match_expressions=exprs))
    return client.V1Affinity(
        node_affinity=client.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=client.V1NodeSelector(
                node_selector_terms=terms
            )
        )
    )


def _tolerations(job: FineTuneJob) -> list[client.V1Toleration]:
    out = [
        client.V1Toleration(key=contract.GPU_TAINT_KEY, operator="Exists", effect=contract.GPU_TAINT_EFFECT)
    ]
    for t in job.spec.resources.tolerations:
        out.append(
            client.V1Toleration(
                key=t.key,
                operator=t.operator,
                value=t.value,
                effect=t.effect,
                toleration_seconds=t.toleration_seconds,
            )
        )
    return out


def get_pod_template(job: FineTuneJob, plan: Plan) -> client.V1PodTemplateSpec:
    """The trainer pod: on the allowed GPU classes, non-root with a read-only root filesystem (it
    writes to size-limited emptyDirs only), its own ServiceAccount's token for the status patch."""
    res = job.spec.resources
    gpu = str(res.gpus)
    disk = scratch(job, plan)
    limits: dict[str, str] = {contract.RESOURCE_GPU: gpu}
    requests: dict[str, str] = {contract.RESOURCE_GPU: gpu, "ephemeral-storage": _quantity(disk.total)}
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = limits["memory"] = str(res.memory)
    uid = plan.settings.trainer_run_as_user
    claim_volumes, claim_mounts = _claim_volumes(job)
    token_volumes, token_mounts = _web_identity_volume(job, plan)
    container = client.V1Container(
        name=contract.TRAINER_CONTAINER,
        image=plan.settings.trainer_image,
        image_pull_policy=plan.settings.trainer_image_pull_policy,
        command=list(plan.settings.trainer_command),
        env=_env(job, plan),
        ports=_ports(plan),
        resources=client.V1ResourceRequirements(limits=limits, requests=requests),
        volume_mounts=[
            client.V1VolumeMount(name=CONFIG_VOLUME, mount_path=contract.TRAINER_CONFIG_DIR, read_only=True),
            client.V1VolumeMount(name=WORK_VOLUME, mount_path=plan.settings.workdir),
            client.V1VolumeMount(name=TMP_VOLUME, mount_path=contract.TMP_DIR),
            client.V1VolumeMount(name=CACHE_VOLUME, mount_path=contract.CACHE_DIR),
            client.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"),
            client.V1VolumeMount(name=TOKEN_VOLUME, mount_path=contract.SA_TOKEN_DIR, read_only=True),
            *claim_mounts,
            *token_mounts,
        ],
        termination_message_path=contract.TERMINATION_LOG,
        termination_message_policy="FallbackToLogsOnError",
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            run_as_user=uid,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
    )
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(
            labels=dict(plan.settings.trainer_pod_labels)
            | labels(job)
            | {contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER},
            annotations=dict(plan.settings.trainer_pod_annotations) or None,
        ),
        spec=client.V1PodSpec(
            containers=[container],
            restart_policy="Never",  # retries are the Job's: a new pod, its pod failure policy, backoffLimit
            # with the headless Service, pod <job>-trainer-<index> is <job>-trainer-<index>.<job>-trainer
            subdomain=trainer_job_name(job) if plan.world_size > 1 else None,
            service_account_name=trainer_name(job),
            # no automatic token: the trainer container mounts its own, projected (_token_volume)
            automount_service_account_token=False,
            image_pull_secrets=[
                client.V1LocalObjectReference(name=n) for n in plan.settings.trainer_image_pull_secrets
            ]
            or None,
            enable_service_links=False,
            affinity=_affinity(plan),
            tolerations=_tolerations(job),
            node_selector=dict(res.node_selector) or None,
            priority_class_name=res.priority_class_name,
            # room for the final checkpoint on SIGTERM, sized from the checkpoint estimate
            termination_grace_period_seconds=plan.grace_period_seconds,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=uid,
                run_as_group=uid,
                fs_group=uid,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            volumes=[
                client.V1Volume(
                    name=CONFIG_VOLUME,
                    config_map=client.V1ConfigMapVolumeSource(name=config_map_name(job)),
                ),
                *(
                    client.V1Volume(
                        name=name, empty_dir=client.V1EmptyDirVolumeSource(size_limit=_quantity(size))
                    )
                    for name, size in (
                        (WORK_VOLUME, disk.work),
                        (TMP_VOLUME, disk.tmp),
                        (CACHE_VOLUME, disk.cache),
                    )
                ),
                client.V1Volume(
                    name=SHM_VOLUME,
                    empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit="2Gi"),
                ),
                _token_volume(plan),
                *claim_volumes,
                *token_volumes,
            ],
        ),
    )


def pod_failure_policy() -> client.V1PodFailurePolicy:
    """What a failed trainer pod means for the Job.

    - DisruptionTarget (preemption, eviction, node drain, taint manager): ignored, no retry used up;
    - exit code 143 (SIGTERM, after the trainer saved a final checkpoint): ignored, likewise;
    - exit code 2 (the trainer rejected its input): the Job fails at once, retrying cannot help;
    - anything else (OOMKilled included) counts against backoffLimit.
    """
    return client.V1PodFailurePolicy(
        rules=[
            client.V1PodFailurePolicyRule(
                action="Ignore",
                on_pod_conditions=[
                    client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                ],
            ),
            client.V1PodFailurePolicyRule(
                action="Ignore",
                on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=contract.TRAINER_CONTAINER, operator="In",
                    values=[contract.EXIT_TERMINATED],
                ),
            ),
            client.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name=contract.TRAINER_CONTAINER, operator="In",
                    values=[contract.EXIT_INVALID_INPUT],
                ),
            ),
        ]
    )  # fmt: skip


def get_trainer_job(job: FineTuneJob, plan: Plan) -> client.V1Job:
    """The batch/v1 Job that runs the trainer: Indexed, one completion (one index per node later).

    In a queue it is created suspended with Kueue's queue-name label: Kueue admits it (and may
    suspend it again to preempt it). ``activeDeadlineSeconds`` is the Job's: its clock starts when
    the Job starts and starts again after every suspension, so time queued or suspended is not
    counted. A replacement pod is only made once the failed one has fully stopped
    (``podReplacementPolicy: Failed``): two trainers never write the same checkpoints.
    """
    spec = job.spec
    extra = {contract.LABEL_QUEUE_NAME: plan.queue} if plan.queue else {}
    return client.V1Job(
        metadata=_meta(job, trainer_job_name(job), extra),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=plan.nodes,
            parallelism=plan.nodes,
            # one crash ends the whole gang (collective timeouts): each of its pods fails once
            backoff_limit=spec.backoff_limit * plan.nodes,
            active_deadline_seconds=spec.active_deadline_seconds,
            pod_failure_policy=pod_failure_policy(),
            pod_replacement_policy="Failed",
            suspend=bool(plan.queue),  # Kueue unsuspends it (a suspended FineTuneJob gets no Job yet)
            template=get_pod_template(job, plan),
        ),
    )
