"""What the exports need before any pod runs: a GGUF the converter can make, the registry's Secret.

Called from one line of :meth:`kube.Kube.inputs` (Validated=False with the reason it returns), and
from :func:`oci_env` by the pod's environment. Kept apart from the reconcile loop on purpose.

* ``gguf-*`` formats of a model whose config.json names an architecture llama.cpp's
  convert_hf_to_gguf.py does not register (kubeft.gguf.SUPPORTED_ARCHITECTURES): InvalidSpec.
  Models the operator cannot read config.json of (inline ``model.architecture``) are left to the
  trainer, which runs the converter on the vocabulary before training.
* ``export.oci.credentialsSecret``: it must exist and hold ``.dockerconfigjson`` (a
  ``kubernetes.io/dockerconfigjson`` Secret); SecretNotFound / SecretKeyMissing otherwise.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeft import contract, gguf
from kubeft import estimate as est

from . import conditions as cond
from .api import FineTuneJob
from .modelconfig import DatasetProblem


def problem(core: Any, job: FineTuneJob, shape: est.ModelShape) -> DatasetProblem | None:
    """Why the job's exports cannot be made as asked (a Validated=False reason and message), or None."""
    export = job.spec.export
    if any(gguf.is_gguf(f) for f in export.formats or ()):
        why = gguf.architecture_problem(list(shape.architectures))
        if why:
            return DatasetProblem(cond.INVALID_SPEC, f"spec.export.formats: {why}")
    oci = export.oci
    if oci is None or not oci.credentials_secret:
        return None
    name = oci.credentials_secret
    try:
        secret = core.read_namespaced_secret(name, job.namespace)
    except ApiException as exc:
        if exc.status == 403:
            return DatasetProblem(
                cond.SECRET_FORBIDDEN,
                cond.secret_forbidden("export.oci.credentialsSecret", name, job.namespace),
            )
        if exc.status != 404:
            raise
        return DatasetProblem(
            cond.SECRET_NOT_FOUND,
            f"export.oci.credentialsSecret {name!r} not found in namespace {job.namespace} "
            "(a kubernetes.io/dockerconfigjson Secret: kubectl create secret docker-registry ...)",
        )
    raw = (secret.data or {}).get(contract.SECRET_DOCKER_CONFIG)
    if raw is None:
        return DatasetProblem(
            cond.SECRET_KEY_MISSING,
            f"Secret {name!r} has no key {contract.SECRET_DOCKER_CONFIG} "
            "(export.oci.credentialsSecret must be a kubernetes.io/dockerconfigjson Secret)",
        )
    try:
        auths = json.loads(base64.b64decode(raw)).get("auths", {})
    except (ValueError, AttributeError):
        auths = None
    if not isinstance(auths, dict):
        return DatasetProblem(
            cond.INVALID_SPEC,
            f"Secret {name!r}: {contract.SECRET_DOCKER_CONFIG} is not a docker config document",
        )
    return None


def oci_env(job: FineTuneJob) -> list[client.V1EnvVar]:
    """The registry credentials for the trainer: the Secret's .dockerconfigjson in $KUBEFT_OCI_AUTH."""
    oci = job.spec.export.oci
    if oci is None or not oci.credentials_secret:
        return []
    ref = client.V1SecretKeySelector(name=oci.credentials_secret, key=contract.SECRET_DOCKER_CONFIG)
    return [client.V1EnvVar(name=contract.ENV_OCI_AUTH, value_from=client.V1EnvVarSource(secret_key_ref=ref))]
