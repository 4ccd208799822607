"""OCI artifacts: the exports pushed to a registry with ORAS (the ``oras`` package, oras-project's SDK).

One artifact per export format, tagged ``<repository>:<job>-<format>``; each file of the export is a
layer (titled with its file name, so ``oras pull`` writes the files back), and the config blob is a
small JSON document that says what the artifact is. Media types (docs/trainer.md):

    config (the artifact type)   application/vnd.kubeft.model.config.v1+json
    *.safetensors                application/vnd.kubeft.model.safetensors
    *.gguf                       application/vnd.kubeft.model.gguf
    Modelfile                    application/vnd.kubeft.ollama.modelfile
    anything else (json, tokenizer, chat template)
                                 application/vnd.kubeft.model.file

Credentials come from a ``kubernetes.io/dockerconfigjson`` Secret (``export.oci.credentialsSecret``),
whose ``.dockerconfigjson`` the operator passes in ``$KUBEFT_OCI_AUTH``. Registries that answer
with a Basic challenge (distribution with htpasswd) get basic auth; others (Docker Hub, GHCR, Harbor,
ECR...) the token flow, with the same credentials.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeft import contract
from kubeft_trainer.errors import TrainerError

log = logging.getLogger(__name__)

ENV_OCI_AUTH = contract.ENV_OCI_AUTH  # the Secret's .dockerconfigjson
CONFIG_MEDIA_TYPE = "application/vnd.kubeft.model.config.v1+json"
MEDIA_TYPES = {
    ".safetensors": "application/vnd.kubeft.model.safetensors",
    ".gguf": "application/vnd.kubeft.model.gguf",
}
MODELFILE_MEDIA_TYPE = "application/vnd.kubeft.ollama.modelfile"
FILE_MEDIA_TYPE = "application/vnd.kubeft.model.file"
CHUNK_BYTES = 64 << 20  # blobs go up in chunks: a 5 GB GGUF never sits in memory whole
ATTEMPTS = 3


class OciPushError(TrainerError):
    """A push to the registry failed: the message names the export, the reference and why."""

    reason = "ExportFailed"


@dataclass(frozen=True)
class Pushed:
    format: str
    reference: str  # registry/repository:tag
    digest: str  # sha256:... of the manifest

    def status(self) -> dict[str, str]:
        return {"format": self.format, "reference": self.reference, "digest": self.digest}


def media_type(path: Path) -> str:
    if path.name == "Modelfile":
        return MODELFILE_MEDIA_TYPE
    return MEDIA_TYPES.get(path.suffix, FILE_MEDIA_TYPE)


def registry_host(repository: str) -> str:
    return repository.split("/", 1)[0]


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in ("localhost", "[::1]") or name.startswith("127.")


def tag_for(job_name: str, fmt: str) -> str:
    """``<job>-<format>``, within the OCI tag grammar ([A-Za-z0-9_][A-Za-z0-9._-]{0,127})."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{job_name}-{fmt}")[:128]


def credentials(dockerconfigjson: str, host: str) -> tuple[str, str] | None:
    """(user, password) for ``host`` from a .dockerconfigjson document; None when it has none."""
    try:
        auths = json.loads(dockerconfigjson).get("auths", {})
    except (json.JSONDecodeError, AttributeError):
        raise OciPushError(
            "export.oci.credentialsSecret: .dockerconfigjson is not a docker config JSON document"
        ) from None
    for key, entry in auths.items():
        name = re.sub(r"^https?://", "", key).split("/", 1)[0]
        if name != host or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    return None


def _challenge(scheme: str, host: str, timeout: float = 20.0) -> str:
    """The registry's WWW-Authenticate scheme (``basic``, ``bearer``), or '' when it asks for none."""
    import requests

    resp = requests.get(f"{scheme}://{host}/v2/", timeout=timeout)
    header = resp.headers.get("Www-Authenticate", "")
    return header.split(" ", 1)[0].lower() if resp.status_code == 401 else ""


def push(
    directory: Path,
    fmt: str,
    repository: str,
    tag: str,
    auth: str | None,
    plain_http: bool,
    annotations: dict[str, str],
) -> Pushed:
    """Pushes every file of ``directory`` as one artifact; returns its reference and manifest digest."""
    import oras.provider

    host = registry_host(repository)
    reference = f"{repository}:{tag}"
    files = sorted(p for p in directory.iterdir() if p.is_file())
    creds = credentials(auth, host) if auth else None
    scheme = "http" if plain_http else "https"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"format": fmt, **annotations, "files": [p.name for p in files]}))
        docker_config = Path(tmp) / "docker-config.json"
        auths = {}
        if creds is not None:
            auths[host] = {"auth": base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()}
        docker_config.write_text(json.dumps({"auths": auths}))
        docker_config.chmod(0o600)
        last: Exception | None = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                backend = "basic" if _challenge(scheme, host) == "basic" else "token"
                if backend == "basic" and creds is None:
                    raise PermissionError("401 Unauthorized: the registry asks for a user and password")
                client = oras.provider.Registry(hostname=host, insecure=plain_http, auth_backend=backend)
                resp = client.push(
                    target=reference,
                    files=[f"{p}:{media_type(p)}" for p in files],
                    manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}",
                    manifest_annotations={"org.opencontainers.image.title": f"{fmt}", **annotations},
                    config_path=str(docker_config),
                    disable_path_validation=True,
                    do_chunked=True,
                    chunk_size=CHUNK_BYTES,
                    quiet=True,
                )
                digest = resp.headers.get("Docker-Content-Digest", "")
                log.info("pushed %s as %s (%s)", fmt, reference, digest)
                return Pushed(fmt, reference, digest)
            except Exception as exc:  # requests, oras and registry errors alike; the message says which
                last = exc
                if _unauthorized(exc) or attempt == ATTEMPTS:
                    break
                log.warning("pushing %s to %s failed (%s); retrying", fmt, reference, exc)
                time.sleep(2.0 * attempt)
    assert last is not None
    hint = ""
    if _unauthorized(last):
        hint = (
            "; the registry refused the credentials of export.oci.credentialsSecret"
            if creds
            else f"; export.oci.credentialsSecret has no entry for {host}"
        )
    err = OciPushError(f"export.oci: pushing {fmt} to {reference} failed: {_short(last)}{hint}")
    if _unauthorized(last):  # a retry of the pod cannot fix the credentials
        err.exit_code = contract.EXIT_INVALID_INPUT
    raise err


def _unauthorized(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("unauthorized", "401", "403", "forbidden", "denied"))


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def auth_from_env(env: Any = None) -> str | None:
    """The .dockerconfigjson the operator passed, if any."""
    return (env if env is not None else os.environ).get(ENV_OCI_AUTH) or None
