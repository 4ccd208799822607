"""The local pod runner: a tiny kubelet for the pods kwok leaves alone (test and demo harness only).

kwok simulates every pod on the simulated nodes, except kubeft's own trainer and
operator pods (label app.kubernetes.io/component in RUN_COMPONENTS). Once the real
scheduler has bound such a pod, this runner runs its container's command and args
as a local process, the way a kubelet would:

- env: literal values, secretKeyRef / configMapKeyRef (optional honoured), fieldRef
  (metadata.name/namespace/uid, spec.nodeName, spec.serviceAccountName, status.podIP);
- volumes: configMap, secret, emptyDir and projected (serviceAccountToken, configMap, secret,
  downwardAPI fields) volumes are materialised under the pod's directory (a projected token comes
  from the TokenRequest API for the pod's ServiceAccount, bound to the pod, with the source's
  audience and expirationSeconds, and is rewritten once 80% of its lifetime has passed, as a
  kubelet does); a persistentVolumeClaim is the directory of the hostPath or local PersistentVolume
  it is bound to (read-only is only enforced under a read-only root filesystem, below); the pod's
  mounts are mirrored
  under its directory, and env values that point into a mount path, or into a directory
  that holds mounts, are rewritten to that mirror;
- the pod's ServiceAccount: a bound token from the TokenRequest API, handed over as a
  kubeconfig (KUBECONFIG), so the process talks to the API server with exactly the
  RBAC rights the pod would have; only when the pod has a token (automountServiceAccountToken not
  false, or a projected serviceAccountToken the container mounts, whose expiry it then has; the
  runner does not renew it);
- ``readOnlyRootFilesystem: true``: the process runs in its own mount namespace whose every mount
  is read-only except the pod's writable volumes (emptyDir, claims not mounted read-only) and its
  termination log (``rootfs.py``); where ``unshare`` cannot make one, it runs as before (logged);
- ports: each container port gets a free local port (named ports are exported as
  KUBEFT_<NAME>_PORT, the metrics port as KUBEFT_METRICS_PORT, and the container port numbers in
  KUBEFT_METRICS_PORTS become theirs), and the metrics ports (``metrics``, ``metrics-N``)
  are registered as Prometheus scrape targets with namespace/pod/job labels;
- DNS of a headless Service: an env value naming ``<hostname>.<subdomain>.<ns>.svc[:port]`` of a
  pod this runner runs (an Indexed Job's ``<job>-<index>``) becomes 127.0.0.1 and that pod's local
  port; a pod that names one not started yet waits for it (as its rendezvous would);
- status: Running with container state, then Succeeded/Failed with exit code, reason
  and the termination message the process wrote (KUBEFT_TERMINATION_LOG);
- deletion: SIGTERM, the pod's grace period, then SIGKILL; the pod's status then says how the
  process ended (Failed with its exit code), and it is removed once no finalizer holds it.

Each pod runs once (restartPolicy Never semantics); the trainer Job creates a new pod to retry.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import yaml

from kubeft import contract

log = logging.getLogger("kubeft.podrunner")

RUN_COMPONENTS = (contract.COMPONENT_TRAINER, contract.COMPONENT_OPERATOR)
# pods labelled kubeft.io/simulate are kwok's to play (bench/scale), not run here
SELECTOR = f"{contract.LABEL_COMPONENT} in ({','.join(RUN_COMPONENTS)}),!{contract.LABEL_SIMULATE}"
# PYTHONPATH: pods run the code the runner runs (a worktree beside the venv's editable install)
PASS_ENV = (
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
    "TZ",
    "PYTHONPATH",
)
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOTFS = Path(__file__).with_name("rootfs.py")  # started by path: it imports nothing of kubeft
DEFAULT_TOKEN_SECONDS = 24 * 3600  # the automounted token (a kubelet's is renewed; this one is not)


def _unshare_argv() -> list[str]:
    """``unshare`` for a private mount namespace (a user namespace too when not root)."""
    argv = ["unshare", "--mount", "--propagation", "private"]
    return argv if os.geteuid() == 0 else [*argv, "--map-root-user"]


def readonly_root_supported() -> bool:
    """Whether this machine lets the runner make a pod's root filesystem read-only (rootfs.py)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = [*_unshare_argv(), "mount", "-o", "remount,bind,ro", "/"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


_SVC_NAME = re.compile(
    r"(?P<host>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<sub>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\."
    r"(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?(:(?P<port>\d+))?"
)


def _dns_name(pod: Any) -> str | None:
    """The pod's name under its headless Service: ``<hostname>.<subdomain>.<namespace>.svc``."""
    if not pod.spec.hostname or not pod.spec.subdomain:
        return None
    return f"{pod.spec.hostname}.{pod.spec.subdomain}.{pod.metadata.namespace}.svc"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    """One pod's process and what the runner set up for it."""

    uid: str
    namespace: str
    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    started_at: str
    termination_log: Path
    scrape_target: str | None = None
    deleting: bool = field(default=False)
    dns_name: str | None = None  # <hostname>.<subdomain>.<namespace>.svc
    tokens: list[ProjectedToken] = field(default_factory=list)


@dataclass
class ProjectedToken:
    """A projected serviceAccountToken file and when the runner rewrites it."""

    path: Path
    audience: str | None
    expiration_seconds: int
    refresh_at: float = 0.0  # time.monotonic()


class _NotYet(Exception):
    """The pod names another pod (by its Service DNS name) that is not running yet."""


class PodRunner:
    def __init__(self, api: Any, state_dir: Path, kube_server: str, ca_file: Path, targets_dir: Path) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.state_dir = state_dir
        self.kube_server = kube_server
        self.ca_file = ca_file
        self.targets_dir = targets_dir
        self.running: dict[str, Running] = {}
        self.done: set[str] = set()
        self.endpoints: dict[str, dict[int, int]] = {}  # pod DNS name → container port → local port
        self.lock = threading.Lock()
        self.readonly_root = readonly_root_supported()
        if not self.readonly_root:
            log.warning("unshare cannot make a mount namespace here: readOnlyRootFilesystem is not enforced")

    # --- main loop ---------------------------------------------------------
    def loop(self, interval: float = 0.5) -> None:
        while True:
            try:
                self.sync()
            except Exception:
                log.exception("sync failed; retrying")
            time.sleep(interval)

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=SELECTOR).items
        seen = set()
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            if pod.metadata.deletion_timestamp is not None:
                if uid in self.running:
                    # the deletion's own grace (0 for a forced delete: SIGKILL at once), as a kubelet
                    grace = pod.metadata.deletion_grace_period_seconds
                    if grace is None:
                        grace = pod.spec.termination_grace_period_seconds or 30
                    self._terminate(uid, grace)
                elif not pod.metadata.finalizers:
                    # the process is gone: finish the deletion, as a kubelet does
                    self._delete_now(pod)
                continue
            if uid in self.running or uid in self.done or not pod.spec.node_name:
                continue
            if pod.status.phase in ("Succeeded", "Failed"):
                self.done.add(uid)
                continue
            self._start(pod)
        for uid in list(self.running):
            if uid not in seen:  # deleted while we weren't looking
                self._terminate(uid, 0)
        self._refresh_tokens({p.metadata.uid: p for p in pods})

    # --- start ------------------------------------------------------------
    def _start(self, pod: Any) -> None:
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        workdir = self.state_dir / "pods" / f"{ns}_{name}_{uid[:8]}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        tokens: list[ProjectedToken] = []
        try:
            container = pod.spec.containers[0]
            mounts = self._materialise_volumes(pod, container, workdir, tokens)
            env, targets, ports = self._env(pod, container, workdir, mounts)
            argv = [*(container.command or []), *(container.args or [])]
            if not argv:
                raise RuntimeError(
                    "container has no command: the local runner cannot use the image's entrypoint"
                )
            exe = shutil.which(argv[0], path=env["PATH"])
            if exe is None:
                raise RuntimeError(f"executable {argv[0]!r} not found on PATH {env['PATH']}")
            cmd = [exe, *argv[1:]]
            sc = container.security_context
            if sc is not None and sc.read_only_root_filesystem and self.readonly_root:
                cmd = self._read_only_root(pod, container, mounts, env, cmd)
        except _NotYet as exc:
            log.info("pod %s/%s waits: %s", ns, name, exc)
            return
        except Exception as exc:
            log.warning("pod %s/%s cannot start: %s", ns, name, exc)
            self._report_failed_to_start(pod, str(exc))
            self.done.add(uid)
            return
        logfile = open(workdir / "container.log", "ab")  # noqa: SIM115 (handed to the child)
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=workdir,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logfile.close()
        run = Running(uid, ns, name, proc, workdir, _now(), Path(env[contract.ENV_TERMINATION_LOG]))
        run.dns_name = _dns_name(pod)
        run.tokens = tokens
        if run.dns_name:
            self.endpoints[run.dns_name] = ports
        if targets:
            run.scrape_target = self._add_scrape_target(pod, targets)
        with self.lock:
            self.running[uid] = run
        log.info(
            "pod %s/%s: started %s (pid %d, log %s)", ns, name, argv, proc.pid, workdir / "container.log"
        )
        self._patch_status(ns, name, self._running_status(pod, run))
        threading.Thread(target=self._wait, args=(pod, run), daemon=True).start()

    def _materialise_volumes(
        self, pod: Any, container: Any, workdir: Path, tokens: list[ProjectedToken]
    ) -> dict[str, Path]:
        """mountPath → local directory, for configMap, secret, emptyDir, projected and PVC volumes.

        ``tokens`` gets the projected serviceAccountToken files (written here; refreshed by sync).
        """
        sources: dict[str, Path] = {}
        for vol in pod.spec.volumes or []:
            if vol.persistent_volume_claim is not None:
                sources[vol.name] = self._claim_dir(pod, vol.persistent_volume_claim.claim_name)
                continue
            local = workdir / "volumes" / vol.name
            local.mkdir(parents=True, exist_ok=True)
            if vol.config_map is not None:
                self._write_items(
                    local,
                    self._config_map(pod, vol.config_map.name, vol.config_map.optional),
                    vol.config_map.items,
                )
            elif vol.secret is not None:
                data = self._secret(pod, vol.secret.secret_name, vol.secret.optional)
                self._write_items(local, data, vol.secret.items)
            elif vol.projected is not None:
                self._write_projected(pod, local, vol.projected, tokens)
            sources[vol.name] = local
        mounts: dict[str, Path] = {}
        for m in container.volume_mounts or []:
            if m.name in sources:
                mounts[m.mount_path.rstrip("/")] = sources[m.name] / (m.sub_path or "")
        return mounts

    def _write_projected(self, pod: Any, local: Path, projected: Any, tokens: list[ProjectedToken]) -> None:
        """A projected volume's files: a ServiceAccount token (``tokens`` gets it: sync refreshes
        it), ConfigMap/Secret items, pod fields."""
        for src in projected.sources or []:
            if src.service_account_token is not None:
                t = src.service_account_token
                token = ProjectedToken(local / t.path, t.audience, t.expiration_seconds or 3600)
                self._write_token(pod, token)
                tokens.append(token)
            elif src.config_map is not None:
                data = self._config_map(pod, src.config_map.name, src.config_map.optional)
                self._write_items(local, data, src.config_map.items)
            elif src.secret is not None:
                data = self._secret(pod, src.secret.name, src.secret.optional)
                self._write_items(local, data, src.secret.items)
            elif src.downward_api is not None:
                for item in src.downward_api.items or []:
                    if item.field_ref is not None:
                        value = self._field(pod, item.field_ref.field_path).encode()
                        self._write_items(local, {item.path: value}, None)

    @staticmethod
    def _api_token(pod: Any, container: Any) -> tuple[list[str], int] | None:
        """(audiences, lifetime) of the API token the container has; None when it has none."""
        mounted = {m.name for m in container.volume_mounts or []}
        for vol in pod.spec.volumes or []:
            if vol.projected is None or vol.name not in mounted:
                continue
            for src in vol.projected.sources or []:
                t = src.service_account_token
                if t is not None and not t.audience:  # for the API server (its default audience)
                    return [], t.expiration_seconds or 3600
        if pod.spec.automount_service_account_token is False:
            return None
        return [], DEFAULT_TOKEN_SECONDS

    def _read_only_root(
        self,
        pod: Any,
        container: Any,
        mounts: dict[str, Path],
        env: dict[str, str],
        cmd: list[str],
    ) -> list[str]:
        """``cmd`` run by rootfs.py in a mount namespace: writable are the emptyDir volumes, the claims
        not mounted read-only and the termination log; every other path is read-only."""
        kinds = {v.name: v for v in pod.spec.volumes or []}
        writable = []
        for m in container.volume_mounts or []:
            vol = kinds.get(m.name)
            if vol is None or m.read_only or m.mount_path.rstrip("/") not in mounts:
                continue
            claim = vol.persistent_volume_claim
            if vol.empty_dir is not None or (claim is not None and not claim.read_only):
                writable.append(str(mounts[m.mount_path.rstrip("/")]))
        log_file = Path(env[contract.ENV_TERMINATION_LOG])
        log_file.touch()
        writable.append(str(log_file))
        args = [arg for w in writable for arg in ("--writable", w)]
        return [*_unshare_argv(), sys.executable, str(ROOTFS), *args, "--", *cmd]

    def _write_token(self, pod: Any, token: ProjectedToken) -> None:
        """A bound token for the pod's ServiceAccount into ``token.path`` (atomically, as a kubelet)."""
        expiry = token.expiration_seconds
        value = self._token(pod, [token.audience] if token.audience else [], expiry)
        token.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = token.path.with_name(f".{token.path.name}.tmp")
        tmp.write_text(value)
        tmp.chmod(0o600)
        tmp.rename(token.path)
        token.refresh_at = time.monotonic() + 0.8 * expiry  # the kubelet's rule: at 80% of the TTL

    def _refresh_tokens(self, pods: dict[str, Any]) -> None:
        """Rewrites the projected tokens of running pods that are due."""
        now = time.monotonic()
        with self.lock:
            runs = list(self.running.values())
        for run in runs:
            pod = pods.get(run.uid)
            for token in run.tokens:
                if pod is not None and not run.deleting and now >= token.refresh_at:
                    try:
                        self._write_token(pod, token)
                        log.info("pod %s/%s: refreshed token %s", run.namespace, run.name, token.path)
                    except Exception:
                        log.exception("pod %s/%s: token refresh failed; retrying", run.namespace, run.name)

    def _claim_dir(self, pod: Any, claim: str) -> Path:
        """The directory of the hostPath/local PersistentVolume a claim is bound to."""
        from kubernetes.client.rest import ApiException

        ns = pod.metadata.namespace
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, ns)
        except ApiException as exc:
            raise RuntimeError(f'persistentvolumeclaim "{claim}" not found') from exc
        if not pvc.spec.volume_name:
            raise RuntimeError(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        src = pv.spec.host_path or pv.spec.local
        if src is None or not src.path:
            raise RuntimeError(
                f"persistentvolume {pv.metadata.name}: the local pod runner mounts only hostPath and "
                "local volumes"
            )
        return Path(src.path)

    @staticmethod
    def _mirror(workdir: Path, mounts: dict[str, Path]) -> Path:
        """The container's view of its mounts under ``workdir/root``: each mount path a symlink."""
        root = workdir / "root"
        for mount, local in mounts.items():
            link = root / mount.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(local.resolve(), target_is_directory=True)
        return root

    @staticmethod
    def _write_items(local: Path, data: dict[str, bytes], items: Any) -> None:
        if items:
            data = {i.path: data[i.key] for i in items if i.key in data}
        for key, value in data.items():
            (local / key).parent.mkdir(parents=True, exist_ok=True)
            (local / key).write_bytes(value)

    def _config_map(self, pod: Any, name: str, optional: bool | None) -> dict[str, bytes]:
        return self._read_data(pod, "configmap", name, optional)

    def _secret(self, pod: Any, name: str, optional: bool | None) -> dict[str, bytes]:
        return self._read_data(pod, "secret", name, optional)

    def _read_data(self, pod: Any, kind: str, name: str, optional: bool | None) -> dict[str, bytes]:
        """A ConfigMap's or Secret's data as bytes; {} for a missing optional one."""
        from kubernetes.client.rest import ApiException

        read = self.core.read_namespaced_secret if kind == "secret" else self.core.read_namespaced_config_map
        try:
            obj = read(name, pod.metadata.namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise RuntimeError(f'{kind} "{name}" not found') from exc
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
        out = {k: v.encode() for k, v in (obj.data or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.binary_data or {}).items()})
        return out

    def _env(
        self, pod: Any, container: Any, workdir: Path, mounts: dict[str, Path]
    ) -> tuple[dict[str, str], list[str], dict[int, int]]:
        bindir = str(Path(sys.executable).parent)
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(
            {
                "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
                "HOME": str(workdir / "home"),
                "HOSTNAME": pod.metadata.name,
                "PYTHONUNBUFFERED": "1",
            }
        )
        (workdir / "home").mkdir(exist_ok=True)
        caches: dict[tuple[str, str], dict[str, bytes]] = {}

        def lookup(kind: str, name: str, key: str, optional: bool | None) -> str | None:
            if (kind, name) not in caches:
                getter = self._secret if kind == "secret" else self._config_map
                caches[(kind, name)] = getter(pod, name, optional)
            value = caches[(kind, name)].get(key)
            if value is None and not optional:
                raise RuntimeError(f"couldn't find key {key} in {kind} {pod.metadata.namespace}/{name}")
            return None if value is None else value.decode()

        for ev in container.env or []:
            value: str | None = ev.value or ""
            src = ev.value_from
            if src is not None:
                if src.secret_key_ref is not None:
                    r = src.secret_key_ref
                    value = lookup("secret", r.name, r.key, r.optional)
                elif src.config_map_key_ref is not None:
                    r = src.config_map_key_ref
                    value = lookup("configmap", r.name, r.key, r.optional)
                elif src.field_ref is not None:
                    value = self._field(pod, src.field_ref.field_path)
            if value is not None:
                env[ev.name] = value
        for ef in container.env_from or []:
            prefix = ef.prefix or ""
            if ef.secret_ref is not None:
                data = self._secret(pod, ef.secret_ref.name, ef.secret_ref.optional)
            elif ef.config_map_ref is not None:
                data = self._config_map(pod, ef.config_map_ref.name, ef.config_map_ref.optional)
            else:
                continue
            env.update({prefix + k: v.decode() for k, v in data.items()})
        # paths into mounted volumes, or into directories holding mounts → the mirror of the mounts
        root = self._mirror(workdir, mounts)
        for key, value in list(env.items()):
            if value.startswith("/") and any(
                value == m or value.startswith(m + "/") or m.startswith(value.rstrip("/") + "/")
                for m in mounts
            ):
                env[key] = str(root) + value
        # a volume at /tmp is the container's /tmp: tempfile and friends must find it there (the
        # process sees this machine's /tmp, read-only under a read-only root filesystem)
        if "/tmp" in mounts and not any(ev.name == "TMPDIR" for ev in container.env or []):
            env["TMPDIR"] = str(root) + "/tmp"
        # the pod's own identity: a bound ServiceAccount token in a kubeconfig, if the pod has one
        token = self._api_token(pod, container)
        if token is not None:
            env["KUBECONFIG"] = str(self._kubeconfig(pod, workdir, *token))
        env[contract.ENV_TERMINATION_LOG] = str(workdir / "termination-log")
        # ports: every container port gets a free local one
        targets = []
        ports: dict[int, int] = {}
        for port in container.ports or []:
            local = ports[port.container_port] = free_port()
            if port.name:
                env[f"KUBEFT_{port.name.upper().replace('-', '_')}_PORT"] = str(local)
            if port.name == contract.METRICS_PORT_NAME or port.container_port == contract.METRICS_PORT:
                env[contract.ENV_METRICS_PORT] = str(local)
            if (port.name or "").startswith(contract.METRICS_PORT_NAME):
                targets.append(f"127.0.0.1:{local}")
        if contract.ENV_METRICS_PORTS in env:
            env[contract.ENV_METRICS_PORTS] = ",".join(
                str(ports.get(int(p), p)) for p in env[contract.ENV_METRICS_PORTS].split(",") if p.strip()
            )
        own = _dns_name(pod)
        for key, value in list(env.items()):
            env[key] = _SVC_NAME.sub(lambda m: self._resolve(m, own, ports), value)
        return env, targets, ports

    def _resolve(self, match: re.Match[str], own: str | None, own_ports: dict[int, int]) -> str:
        """``<host>.<sub>.<ns>.svc[.cluster.local][:port]`` → 127.0.0.1[:local port] of that pod."""
        name = f"{match['host']}.{match['sub']}.{match['ns']}.svc"
        ports = own_ports if name == own else self.endpoints.get(name)
        if ports is None:
            raise _NotYet(f"{name} is not running yet")
        port = match["port"]
        return "127.0.0.1" + (f":{ports.get(int(port), int(port))}" if port else "")

    @staticmethod
    def _field(pod: Any, path: str) -> str:
        values = {
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "spec.nodeName": pod.spec.node_name,
            "spec.serviceAccountName": pod.spec.service_account_name,
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        if path.startswith("metadata.labels['"):
            return str((pod.metadata.labels or {}).get(path.split("'")[1], ""))
        return str(values.get(path, ""))

    def _token(self, pod: Any, audiences: list[str], seconds: int) -> str:
        """A token of the pod's ServiceAccount bound to the pod (TokenRequest, as a kubelet asks)."""
        from kubernetes import client

        sa = pod.spec.service_account_name or "default"
        req = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=audiences,
                expiration_seconds=seconds,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        )
        return str(
            self.core.create_namespaced_service_account_token(sa, pod.metadata.namespace, req).status.token
        )

    def _kubeconfig(self, pod: Any, workdir: Path, audiences: list[str], seconds: int) -> Path:
        sa = pod.spec.service_account_name or "default"
        token = self._token(pod, audiences, seconds)
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "pod",
            "clusters": [
                {"name": "local", "cluster": {"server": self.kube_server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {"cluster": "local", "user": sa, "namespace": pod.metadata.namespace},
                }
            ],
        }
        path = workdir / "kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def _add_scrape_target(self, pod: Any, addresses: list[str]) -> str:
        labels = pod.metadata.labels or {}
        name = f"pod_{pod.metadata.namespace}_{pod.metadata.name}"
        doc = [
            {
                "targets": addresses,
                "labels": {
                    "job": labels.get(contract.LABEL_COMPONENT, "pod"),
                    "namespace": pod.metadata.namespace,
                    "pod": pod.metadata.name,
                    **({"kubeft_job": labels[contract.LABEL_JOB]} if contract.LABEL_JOB in labels else {}),
                },
            }
        ]
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_dir / f"{name}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.rename(self.targets_dir / f"{name}.json")
        return name

    # --- status -----------------------------------------------------------
    @staticmethod
    def _conditions(ready: bool) -> list[dict[str, Any]]:
        now = _now()
        flag = "True" if ready else "False"
        return [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ]

    def _running_status(self, pod: Any, run: Running) -> dict[str, Any]:
        c = pod.spec.containers[0]
        return {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "hostIP": "127.0.0.1",
            "startTime": run.started_at,
            "conditions": self._conditions(True),
            "containerStatuses": [
                {
                    "name": c.name,
                    "image": c.image,
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": run.started_at}},
                }
            ],
        }

    def _terminated_status(
        self, pod: Any, code: int, reason: str, message: str, started_at: str
    ) -> dict[str, Any]:
        """A pod status whose only container has terminated, as a kubelet reports it."""
        c = pod.spec.containers[0]
        terminated = {"exitCode": code, "reason": reason, "message": message}
        terminated.update(startedAt=started_at, finishedAt=_now())
        return {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": self._conditions(False),
            "containerStatuses": [{
                "name": c.name, "image": c.image, "imageID": "", "ready": False, "started": False,
                "restartCount": 0, "state": {"terminated": terminated},
            }],
        }  # fmt: skip

    def _report_failed_to_start(self, pod: Any, message: str) -> None:
        reason = "CreateContainerConfigError"
        status = self._terminated_status(pod, 128, reason, message, _now())
        self._patch_status(
            pod.metadata.namespace, pod.metadata.name, {**status, "message": message, "reason": reason}
        )

    def _patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.core.patch_namespaced_pod_status(name, ns, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    # --- exit and deletion ------------------------------------------------
    def _wait(self, pod: Any, run: Running) -> None:
        code = run.proc.wait()
        with self.lock:
            self.running.pop(run.uid, None)
            if run.dns_name:
                self.endpoints.pop(run.dns_name, None)
            self.done.add(run.uid)
        if run.scrape_target:
            (self.targets_dir / f"{run.scrape_target}.json").unlink(missing_ok=True)
        message = ""
        with contextlib.suppress(FileNotFoundError):
            message = run.termination_log.read_text(errors="replace")[-4096:]
        if code < 0:  # killed by a signal: report it the way the kubelet does (128 + signal)
            code = 128 - code
        reason = "Completed" if code == 0 else ("OOMKilled" if message.startswith("OOMKilled") else "Error")
        log.info("pod %s/%s: exited %d (%s)", run.namespace, run.name, code, reason)
        # a deleted pod too ends in a terminal phase before it goes, as a kubelet reports it: the
        # Job controller reads its exit code (pod failure policy) and then drops its finalizer
        status = self._terminated_status(pod, code, reason, message, run.started_at)
        self._patch_status(run.namespace, run.name, status)

    def _terminate(self, uid: str, grace: int) -> None:
        with self.lock:
            run = self.running.get(uid)
        if run is None or run.deleting:
            return
        run.deleting = True
        log.info("pod %s/%s deleted: stopping its process (grace %ds)", run.namespace, run.name, grace)

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)
            try:
                run.proc.wait(timeout=max(grace, 0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)

        threading.Thread(target=stop, daemon=True).start()

    def _delete_now(self, pod: Any) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                # in the body: with a body, the API server ignores the query's gracePeriodSeconds
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def stop_all(self) -> None:
        for uid in list(self.running):
            self._terminate(uid, 5)


def _serve_health(port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--targets-dir", required=True, type=Path)
    parser.add_argument("--ca-file", required=True, type=Path)
    parser.add_argument("--health-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    runner = PodRunner(
        client.ApiClient(configuration), args.state_dir, configuration.host, args.ca_file, args.targets_dir
    )

    def on_term(signum: int, frame: Any) -> None:
        runner.stop_all()
        time.sleep(1)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    _serve_health(args.health_port)
    runner.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
