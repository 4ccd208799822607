"""The local stack: a real Kubernetes control plane with simulated GPU nodes, MinIO and Prometheus.

Everything runs as local processes on loopback, from binaries built from their Go
modules (hack/build-binaries.sh, cached by version under ~/.cache/kubeft/bin) and
Debian's prometheus package:

    etcd → kube-apiserver → kube-controller-manager, kube-scheduler → kwok (GPU nodes)
    MinIO (S3)   Prometheus (scrapes file_sd targets under <state>/prometheus/targets)
    an OCI registry (CNCF distribution, basic auth from an htpasswd file) for the exports
    Kueue (its CRDs from its Go module; a ClusterQueue over the GPU classes, kubeft/dev/queues.py)

`up()` is idempotent: a healthy running stack is left alone. `down()` stops every
process and removes the state directory, so the next `up()` starts from nothing.
Why we orchestrate the processes ourselves instead of through kwokctl: see
docs/local-stack.md.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeft import contract
from kubeft.dev import nodes as gpu_nodes
from kubeft.dev import queues
from kubeft.dev.podrunner import RUN_COMPONENTS

log = logging.getLogger("kubeft.dev")

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KUBEFT_CACHE", Path.home() / ".cache" / "kubeft"))
BIN = CACHE / "bin"
STATE = Path(os.environ.get("KUBEFT_STACK_DIR", CACHE / "stack"))
KWOK_STAGES = Path(__file__).resolve().parent / "kwok"

HOST = "127.0.0.1"
PORTS = {
    "etcd": 12379,
    "etcd-peer": 12380,
    "kube-apiserver": 16443,
    "kube-controller-manager": 16457,
    "kube-scheduler": 16459,
    "kwok": 16460,
    "minio": 19000,
    "minio-console": 19001,
    "prometheus": 19090,
    "podrunner": 16470,
    "kueue": 16480,  # health probes (/healthz, /readyz), plain HTTP
    "kueue-metrics": 16481,  # HTTPS, authenticated and authorized against the API server
    "kueue-webhook": 16482,  # HTTPS; no webhook configuration points at it (docs/local-stack.md)
    "registry": 19500,  # the OCI registry, plain HTTP (loopback: clients treat it as insecure-allowed)
    "registry-debug": 19501,  # its /debug/health
}
SERVICE_CIDR = "10.96.0.0/16"
MINIO_ACCESS_KEY = "kubeft"
MINIO_SECRET_KEY = "kubeft-local-secret"  # loopback-only dev stack; not a product credential
SCRAPE_INTERVAL = "2s"
# Storage without static keys: the API server is its own service-account issuer (OIDC discovery and
# JWKS served by it, readable anonymously), and MinIO trusts that issuer for STS
# AssumeRoleWithWebIdentity. The token audience is MinIO's OpenID client ID; EKS's IRSA uses the same one.
SA_ISSUER = f"https://{HOST}:{PORTS['kube-apiserver']}"
LEGACY_SA_ISSUER = "https://kubernetes.default.svc.cluster.local"  # still accepted, no longer minted
WEB_IDENTITY_AUDIENCE = "sts.amazonaws.com"
WEB_IDENTITY_POLICY = "readwrite"  # MinIO's canned policy: what a web-identity session may do
OIDC_DISCOVERY_BINDING = "kubeft-oidc-discovery-anonymous"
# The registry's one user (basic auth). Distribution reads bcrypt hashes only; this is the hash of
# REGISTRY_PASSWORD (cost 10), computed once, so starting the stack needs no bcrypt library.
REGISTRY_USER = "kubeft"
REGISTRY_PASSWORD = "kubeft-registry-secret"  # loopback-only dev stack; not a product credential
REGISTRY_PASSWORD_BCRYPT = "$2b$10$SKBHle60eCOAgpVXDKIS.u0XZn54TTUI1xHdeObi2eTWE2x8KJVmS"

# Components a stack started before they existed lacks: `up` starts them beside it rather than
# restarting the whole stack.
ADDONS = ("kueue", "registry")

# Start order; down() stops in reverse.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "minio",
    "prometheus",
    "podrunner",
    "kueue",
    "registry",
)


class StackError(RuntimeError):
    """The stack could not be brought up; the message says which component and where its log is."""


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack's pieces are; what tests and the demo need to reach them."""

    state_dir: Path
    kubeconfig: Path
    env_file: Path
    minio_endpoint: str
    minio_access_key: str
    minio_secret_key: str
    prometheus_url: str
    prometheus_targets_dir: Path
    bin_dir: Path
    registry: str = f"{HOST}:{PORTS['registry']}"  # host:port, plain HTTP
    registry_user: str = REGISTRY_USER
    registry_password: str = REGISTRY_PASSWORD
    web_identity_audience: str = WEB_IDENTITY_AUDIENCE

    @property
    def web_identity_role_arn(self) -> str:
        """The role a web-identity session assumes on this stack's MinIO (see :func:`minio_role_arn`)."""
        return minio_role_arn(self.web_identity_audience)

    def registry_auth(self, user: str | None = None, password: str | None = None) -> str:
        """A ``.dockerconfigjson`` document for the stack's registry (its own user, or the one given)."""
        pair = f"{user or self.registry_user}:{password or self.registry_password}"
        token = base64.b64encode(pair.encode())
        return json.dumps({"auths": {self.registry: {"auth": token.decode()}}})

    def minio_client(self) -> Any:
        """A `minio.Minio` client with the stack's root credentials."""
        from minio import Minio

        return Minio(
            self.minio_endpoint.split("://", 1)[1],
            access_key=self.minio_access_key,
            secret_key=self.minio_secret_key,
            secure=False,
        )

    def add_scrape_target(self, name: str, address: str, labels: dict[str, str] | None = None) -> Path:
        """Makes Prometheus scrape `address` (host:port, path /metrics) from now on, as job `name`.

        Prometheus picks the file up within a few seconds (file_sd refresh).
        """
        path = self.prometheus_targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": {"job": name, **(labels or {})}}]))
        tmp.rename(path)
        return path

    def remove_scrape_target(self, name: str) -> None:
        (self.prometheus_targets_dir / f"{name}.json").unlink(missing_ok=True)


def minio_role_arn(client_id: str, region: str = "") -> str:
    """The role ARN MinIO gives an OpenID provider with a role policy.

    MinIO derives it from the client ID (internal/config/identity/openid/openid.go: the resource ID
    is base64url(sha1(client ID)), no padding), so it is stable across restarts and computable here.
    """
    digest = base64.urlsafe_b64encode(hashlib.sha1(client_id.encode()).digest()).rstrip(b"=").decode()
    return f"arn:minio:iam:{region}::role/{digest}"


def info() -> StackInfo:
    return StackInfo(
        state_dir=STATE,
        kubeconfig=STATE / "kubeconfig",
        env_file=STATE / "env",
        minio_endpoint=f"http://{HOST}:{PORTS['minio']}",
        minio_access_key=MINIO_ACCESS_KEY,
        minio_secret_key=MINIO_SECRET_KEY,
        prometheus_url=f"http://{HOST}:{PORTS['prometheus']}",
        prometheus_targets_dir=STATE / "prometheus" / "targets",
        bin_dir=BIN,
    )


# --- processes ---------------------------------------------------------------


def _pidfile(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def _pid(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # a zombie child of this process still answers kill(0); reap it
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None
    except ChildProcessError:
        pass
    return pid


def _start(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    logfile = STATE / "logs" / f"{name}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=STATE,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # outlives `kubeft dev up`; a Ctrl-C in the shell doesn't reach it
        )
    _pidfile(name).write_text(str(proc.pid))
    log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))


def _stop(name: str, timeout: float = 15.0) -> None:
    pid = _pid(name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid(name) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid(name) is not None:
            log.warning("%s did not stop on SIGTERM; killing it", name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _pid(name) is not None:
                time.sleep(0.05)
    _pidfile(name).unlink(missing_ok=True)


def _wait(name: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _pid(name) is None:
            raise StackError(
                f"{name} exited during start-up; see {STATE / 'logs' / (name + '.log')}:\n"
                + _tail(STATE / "logs" / f"{name}.log")
            )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError):
            pass
        time.sleep(0.25)
    raise StackError(
        f"{name} not healthy after {timeout:.0f}s; see {STATE / 'logs' / (name + '.log')}:\n"
        + _tail(STATE / "logs" / f"{name}.log")
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as resp:
        return bool(resp.status == 200)


def _admin_tls() -> ssl.SSLContext:
    pki = STATE / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --- set-up steps ------------------------------------------------------------


def ensure_binaries() -> None:
    """Builds the Go binaries that are missing (cached by version; a no-op when all exist)."""
    needed = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kwok",
        "minio",
        "kueue",
        "registry",
    ]
    if all((BIN / n).exists() for n in needed) and kueue_crd_dir().is_dir():
        return
    log.info("building the local stack's binaries from their Go modules (first run: several minutes)")
    subprocess.run([str(REPO / "hack" / "build-binaries.sh"), "all"], check=True)


def prometheus_binary() -> str:
    """Debian's prometheus, installed with apt-get when missing."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0:
        raise StackError("prometheus is not installed; run: sudo apt-get install prometheus")
    log.info("installing Debian's prometheus package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
    ):
        # quiet unless it fails: a dpkg log of every package says nothing a user needs
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise StackError(f"{' '.join(argv)} failed (exit {done.returncode}):\n{tail}")
    return "/usr/bin/prometheus"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=STATE / "pki")


def _make_pki() -> None:
    """CA, API server serving cert, admin client cert (system:masters), service-account key pair."""
    pki = STATE / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "admin.crt").exists():
        return
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=kubeft-local-ca",
    )
    sans = ",".join(
        [
            f"IP:{HOST}",
            "IP:10.96.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    _issue("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth")
    _issue("admin", "/O=system:masters/CN=kubeft-admin", "extendedKeyUsage=clientAuth")
    _openssl("genrsa", "-out", "sa.key", "2048")
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def _issue(name: str, subj: str, ext: str) -> None:
    """<pki>/<name>.crt and .key, signed by the stack's CA with the given extensions."""
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj
    )
    (STATE / "pki" / f"{name}.ext").write_text(ext + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "3650",
        "-extfile",
        f"{name}.ext",
    )


def _write_kubeconfig() -> None:
    pki = STATE / "pki"

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubeft-local",
                "cluster": {
                    "server": f"https://{HOST}:{PORTS['kube-apiserver']}",
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": "kubeft-admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [
            {"name": "kubeft-local", "context": {"cluster": "kubeft-local", "user": "kubeft-admin"}}
        ],
        "current-context": "kubeft-local",
    }
    path = STATE / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    path.chmod(0o600)


def _refresh_kwok_config() -> None:
    """A running stack whose kwok stages are not this checkout's (a new stage): restart kwok."""
    path = STATE / "kwok.yaml"
    before = path.read_text() if path.exists() else ""
    if _write_kwok_config().read_text() != before:
        log.warning("kwok's stages changed since it started: restarting it")
        stop_component("kwok")
        start_component("kwok")


def _write_kwok_config() -> Path:
    """kwok's stages: its defaults, with trainer pods left to the local pod runner.

    Supplying any Stage replaces all of kwok's defaults, so the node stages are here too.
    Pods of RUN_COMPONENTS (kubeft's trainer and operator) are left to the local pod runner.
    Pod deletion stays with kwok for every pod, so namespaces and owners can always be deleted.
    """
    exclude_trainer = {
        "key": f'.metadata.labels["{contract.LABEL_COMPONENT}"]',
        "operator": "NotIn",
        "values": list(RUN_COMPONENTS),
    }
    docs = [
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            # explicit: kwok applies its defaults only to a config it generated itself
            "options": {
                "podPlayStageParallelism": 4,
                "nodePlayStageParallelism": 4,
                "nodeLeaseParallelism": 4,
                "podsOnNodeSyncParallelism": 1,
                "enablePodsOnNodeSyncListPager": True,
                "enablePodsOnNodeSyncStreamWatch": False,
            },
        }
    ]
    simulated = {
        "key": f'.metadata.labels["{contract.LABEL_SIMULATE}"]',
        "operator": "In",
        "values": ["true"],
    }
    for path in sorted(KWOK_STAGES.glob("*.yaml")):
        stage = yaml.safe_load(path.read_text())
        if stage["spec"]["resourceRef"]["kind"] == "Pod" and stage["metadata"]["name"] != "pod-delete":
            # trainer pods labelled kubeft.io/simulate=true (bench/scale): kwok plays them too
            twin = copy.deepcopy(stage)
            twin["metadata"]["name"] += "-simulated"
            twin["spec"]["selector"]["matchExpressions"].append(simulated)
            docs.append(twin)
            stage["spec"]["selector"]["matchExpressions"].append(exclude_trainer)
        docs.append(stage)
    out = STATE / "kwok.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


# --- Kueue --------------------------------------------------------------------

# cmd/kueue/main.go (v0.17) reads the metrics server's certificate from this fixed path whenever
# internal cert management is off; there is no flag or config field for it.
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")
KUEUE_NAMESPACE = "kueue-system"  # Kueue's own namespace (its default); nothing of Kueue runs in it here


def kueue_version() -> str:
    """The Kueue version the stack runs: the one built (bin/kueue → kueue-<version>), else the pinned one."""
    link = BIN / "kueue"
    if link.is_symlink():
        return os.readlink(link).removeprefix("kueue-")
    if os.environ.get("KUEUE_VERSION"):
        return os.environ["KUEUE_VERSION"]
    script = (REPO / "hack" / "build-binaries.sh").read_text()
    found = re.search(r'KUEUE_VERSION="\$\{KUEUE_VERSION:-(v[^}]+)\}"', script)
    if not found:
        raise StackError("no KUEUE_VERSION pinned in hack/build-binaries.sh")
    return found.group(1)


def kueue_crd_dir() -> Path:
    """Kueue's CRDs, read from its Go module in the module cache (downloaded by hack/build-binaries.sh)."""
    modcache = Path(os.environ.get("GOMODCACHE") or CACHE / "go" / "mod")
    return modcache / "sigs.k8s.io" / f"kueue@{kueue_version()}" / "config" / "components" / "crd" / "bases"


def _kueue_config() -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2): only batch/v1 Jobs that name a queue,
    every listener on loopback, no leader election, no internal cert management (see docs/local-stack.md).
    """
    p = PORTS
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"{HOST}:{p['kueue']}"},
        "metrics": {"bindAddress": f"{HOST}:{p['kueue-metrics']}"},
        # the webhook server must run (Kueue's /readyz waits for it) but no webhook configuration
        # is registered, so the API server never calls it
        "webhook": {"host": HOST, "port": p["kueue-webhook"], "certDir": str(STATE / "kueue" / "certs")},
        "leaderElection": {"leaderElect": False},
        # cert management writes a Secret that a kubelet would mount into certDir, then patches
        # webhook configurations and conversion webhooks that do not exist here: off
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        # local disk is the scheduler's to place (nodes' ephemeral-storage), not a queue's quota: the
        # trainer pod's ephemeral-storage request would otherwise make every workload inadmissible
        # ("resource ephemeral-storage unavailable in ClusterQueue") (docs/platform.md)
        "resources": {"excludeResourcePrefixes": ["ephemeral-storage"]},
        # the visibility API server is an aggregated API server reading /visibility/tls.* (fixed path)
        "featureGates": {"VisibilityOnDemand": False},
    }


def _prepare_kueue() -> None:
    """Kueue's serving certificates and configuration, and its CRDs applied (the API server runs by now)."""
    from kubeft.dev.kube import apply_crds

    pki = STATE / "pki"
    if not (pki / "kueue.crt").exists():
        _issue("kueue", "/CN=kueue", f"subjectAltName=IP:{HOST},DNS:localhost\nextendedKeyUsage=serverAuth")
    pair = {"tls.crt": (pki / "kueue.crt").read_bytes(), "tls.key": (pki / "kueue.key").read_bytes()}
    certs = STATE / "kueue" / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    for fname, data in pair.items():
        (certs / fname).write_bytes(data)
    try:
        KUEUE_METRICS_CERTS.mkdir(parents=True, exist_ok=True)
        for fname, data in pair.items():
            path = KUEUE_METRICS_CERTS / fname
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
    except PermissionError as exc:
        raise StackError(
            f"Kueue reads its metrics certificate from {KUEUE_METRICS_CERTS} (fixed in its code); "
            f"make it writable: sudo install -d -o $USER {KUEUE_METRICS_CERTS} ({exc})"
        ) from exc
    (STATE / "kueue" / "config.yaml").write_text(yaml.safe_dump(_kueue_config(), sort_keys=False))
    crds = sorted(kueue_crd_dir().glob("*.yaml"))
    if not crds:
        raise StackError(f"no Kueue CRDs in {kueue_crd_dir()}; run: hack/build-binaries.sh kueue")
    apply_crds(_api_client(info()), crds)


def _prepare_registry() -> None:
    """The registry's configuration: blobs under <state>/registry/data, basic auth from an htpasswd file."""
    root = STATE / "registry"
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "htpasswd").write_text(f"{REGISTRY_USER}:{REGISTRY_PASSWORD_BCRYPT}\n")
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {
            "addr": f"{HOST}:{PORTS['registry']}",
            "secret": "kubeft-local-registry",  # signs upload state; one instance, so any fixed value
            "debug": {"addr": f"{HOST}:{PORTS['registry-debug']}"},
        },
        "auth": {"htpasswd": {"realm": "kubeft-local", "path": str(root / "htpasswd")}},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))


ALERT_RULES = REPO / "charts" / "kubeft" / "files" / "alerts.yaml"


def _write_prometheus_config() -> bool:
    """Writes prometheus.yml and kubeft's alerting rules; True when either changed."""
    prom = STATE / "prometheus"
    (prom / "targets").mkdir(parents=True, exist_ok=True)
    rules = prom / "alerts.yaml"
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        # the chart's rules, evaluated like a cluster's Prometheus would
        "rule_files": [str(rules)] if ALERT_RULES.exists() else [],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{HOST}:{PORTS['prometheus']}"]}]},
            {
                # one JSON file per target; tests, the demo and the pod runner drop them here
                "job_name": "kubeft-targets",
                # the trainer's series carry their own `job`/`namespace` labels (the FineTuneJob's)
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(prom / "targets" / "*.json")], "refresh_interval": "2s"}],
            },
        ],
    }
    files = {prom / "prometheus.yml": yaml.safe_dump(config, sort_keys=False)}
    if ALERT_RULES.exists():
        files[rules] = ALERT_RULES.read_text()
    changed = False
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed = True
    return changed


def _refresh_prometheus_config() -> None:
    """A running Prometheus picks up a changed config or rules file (it runs with --web.enable-lifecycle)."""
    if _write_prometheus_config():
        req = urllib.request.Request(f"http://{HOST}:{PORTS['prometheus']}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass
        log.info("prometheus: configuration reloaded")


def _argv(name: str) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of one component."""
    pki = STATE / "pki"
    kubeconfig = str(STATE / "kubeconfig")
    p = PORTS
    if name == "etcd":
        return [
            str(BIN / "etcd"),
            "--name=kubeft",
            f"--data-dir={STATE / 'etcd'}",
            f"--listen-client-urls=http://{HOST}:{p['etcd']}",
            f"--advertise-client-urls=http://{HOST}:{p['etcd']}",
            f"--listen-peer-urls=http://{HOST}:{p['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://{HOST}:{p['etcd-peer']}",
            f"--initial-cluster=kubeft=http://{HOST}:{p['etcd-peer']}",
            "--unsafe-no-fsync=true",  # throwaway test cluster: durability is not the point, speed is
            "--quota-backend-bytes=4294967296",
            "--auto-compaction-retention=1",
        ], {}
    if name == "kube-apiserver":
        return [
            str(BIN / "kube-apiserver"),
            f"--etcd-servers=http://{HOST}:{p['etcd']}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={p['kube-apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # the first issuer mints tokens; discovery (/.well-known/openid-configuration) names it
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-issuer={LEGACY_SA_ISSUER}",
            f"--service-account-jwks-uri={SA_ISSUER}/openid/v1/jwks",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            "--event-ttl=1h",
        ], {}
    if name == "kube-controller-manager":
        return [
            str(BIN / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={p['kube-controller-manager']}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle",
            "--profiling=false",
        ], {}
    if name == "kube-scheduler":
        return [
            str(BIN / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={p['kube-scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
        ], {}
    if name == "kwok":
        return [
            str(BIN / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={STATE / 'kwok.yaml'}",
            f"--manage-nodes-with-label-selector={gpu_nodes.KWOK_NODE_LABEL}=true",
            f"--server-address={HOST}:{p['kwok']}",
            f"--node-ip={HOST}",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
        ], {}
    if name == "minio":
        return [
            str(BIN / "minio"),
            "server",
            str(STATE / "minio"),
            f"--certs-dir={STATE / 'minio-certs'}",  # CAs/: the API server's CA, for OIDC discovery
            f"--address={HOST}:{p['minio']}",
            f"--console-address={HOST}:{p['minio-console']}",
            "--quiet",
        ], {
            "MINIO_ROOT_USER": MINIO_ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": MINIO_SECRET_KEY,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "off",
            # STS AssumeRoleWithWebIdentity: tokens of the API server's service-account issuer
            # (audience = client ID) get the role policy
            "MINIO_IDENTITY_OPENID_CONFIG_URL": f"{SA_ISSUER}/.well-known/openid-configuration",
            "MINIO_IDENTITY_OPENID_CLIENT_ID": WEB_IDENTITY_AUDIENCE,
            "MINIO_IDENTITY_OPENID_ROLE_POLICY": WEB_IDENTITY_POLICY,
            "MINIO_IDENTITY_OPENID_DISPLAY_NAME": "kube-apiserver service accounts",
        }
    if name == "prometheus":
        prom = STATE / "prometheus"
        return [
            prometheus_binary(),
            f"--config.file={prom / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom / 'data'}",
            f"--web.listen-address={HOST}:{p['prometheus']}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ], {}
    if name == "kueue":
        return [
            str(BIN / "kueue"),
            f"--config={STATE / 'kueue' / 'config.yaml'}",
            f"--kubeconfig={kubeconfig}",
            "--zap-log-level=info",
        ], {}
    if name == "registry":
        return [str(BIN / "registry"), "serve", str(STATE / "registry" / "config.yml")], {
            "OTEL_TRACES_EXPORTER": "none",  # v3 exports traces over OTLP by default; nothing listens here
        }
    if name == "podrunner":
        return [
            sys.executable,
            "-m",
            "kubeft.dev.podrunner",
            f"--kubeconfig={kubeconfig}",
            f"--state-dir={STATE}",
            f"--targets-dir={STATE / 'prometheus' / 'targets'}",
            f"--ca-file={pki / 'ca.crt'}",
            f"--health-port={p['podrunner']}",
        ], {}
    raise KeyError(name)


def _health(name: str) -> Callable[[], bool]:
    p = PORTS
    if name == "etcd":
        return lambda: _http_ok(f"http://{HOST}:{p['etcd']}/health")
    if name == "kube-apiserver":
        return lambda: _http_ok(f"https://{HOST}:{p['kube-apiserver']}/readyz", _admin_tls())
    if name in ("kube-controller-manager", "kube-scheduler"):
        return lambda: _http_ok(f"https://{HOST}:{p[name]}/healthz", _insecure_tls())
    if name == "kwok":
        return lambda: _http_ok(f"http://{HOST}:{p['kwok']}/healthz")
    if name == "minio":
        return lambda: _http_ok(f"http://{HOST}:{p['minio']}/minio/health/ready")
    if name == "prometheus":
        return lambda: _http_ok(f"http://{HOST}:{p['prometheus']}/-/ready")
    if name == "podrunner":
        return lambda: _http_ok(f"http://{HOST}:{p['podrunner']}/healthz")
    if name == "registry":
        return lambda: _http_ok(f"http://{HOST}:{p['registry-debug']}/debug/health")
    if name == "kueue":  # ready: caches synced, controllers and the (unregistered) webhook server started
        return lambda: _http_ok(f"http://{HOST}:{p['kueue']}/readyz")
    raise KeyError(name)


def _podrunner_code() -> str:
    """Fingerprint of the pod runner's source: a running runner with other code is restarted by `up`."""
    here = Path(__file__).resolve().parent
    files = (here / "podrunner.py", here / "rootfs.py", here / "kube.py", here.parent / "contract.py")
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


def start_component(name: str, timeout: float = 120.0) -> None:
    """Starts one component (if it isn't running) and waits until it is healthy."""
    if _pid(name) is None:
        if name == "kueue":
            _prepare_kueue()
        if name == "registry":
            _prepare_registry()
        if name == "minio":
            _prepare_minio_certs()
        argv, env = _argv(name)
        _start(name, argv, env)
        if name == "podrunner":
            (STATE / "podrunner.code").write_text(_podrunner_code())
    _wait(name, _health(name), timeout)


def _prepare_minio_certs() -> None:
    """MinIO's certs directory: only CAs/ (it serves plain HTTP), holding the API server's CA so that
    it can fetch the service-account issuer's discovery document and JWKS over HTTPS."""
    cas = STATE / "minio-certs" / "CAs"
    cas.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(STATE / "pki" / "ca.crt", cas / "kubeft-local-ca.crt")


def _allow_oidc_discovery() -> None:
    """Anonymous read of the issuer's /.well-known/openid-configuration and /openid/v1/jwks.

    The bootstrap ClusterRole system:service-account-issuer-discovery grants exactly those two
    paths; by default only service accounts hold it. An STS (MinIO here, AWS IAM on EKS) fetches
    them without credentials, as the Kubernetes documentation's service-account issuer discovery
    section describes.
    """
    from kubernetes import client

    from kubeft.kubeapi import create_or_replace

    rbac = client.RbacAuthorizationV1Api(_api_client(info()))
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": OIDC_DISCOVERY_BINDING},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:service-account-issuer-discovery",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}
        ],
    }
    create_or_replace(
        rbac.create_cluster_role_binding,
        rbac.read_cluster_role_binding,
        rbac.replace_cluster_role_binding,
        body,
    )
    _wait(
        "kube-apiserver",
        lambda: _http_ok(f"{SA_ISSUER}/.well-known/openid-configuration", _ca_tls()),
        timeout=30,
    )


def _ca_tls() -> ssl.SSLContext:
    """TLS trusting the stack's CA, without a client certificate (an anonymous client)."""
    return ssl.create_default_context(cafile=str(STATE / "pki" / "ca.crt"))


def _proc_strings(pid: int | None, what: str) -> list[str]:
    """A process's command line or environment (``what``: cmdline, environ) as strings."""
    if pid is None:
        return []
    try:
        raw = Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _web_identity_wired() -> bool:
    """The running API server is the service-account issuer and MinIO's STS trusts it (see
    `_argv`); a stack started by code from before that lacks both."""
    api_argv, _ = _argv("kube-apiserver")
    _, minio_env = _argv("minio")
    issuer_flags = [a for a in api_argv if a.startswith("--service-account-")]
    running_api = _proc_strings(_pid("kube-apiserver"), "cmdline")
    running_minio = _proc_strings(_pid("minio"), "environ")
    openid = [f"{k}={v}" for k, v in minio_env.items() if k.startswith("MINIO_IDENTITY_OPENID_")]
    return all(f in running_api for f in issuer_flags) and all(e in running_minio for e in openid)


def _restart_for_web_identity() -> None:
    """A running stack without the web-identity wiring gets its API server and MinIO restarted with
    it (their data stays; tokens of the old issuer stay valid, it is still accepted)."""
    if _web_identity_wired():
        return
    log.warning(
        "the running stack predates its service-account issuer wiring: restarting kube-apiserver and minio"
    )
    stop_component("kube-apiserver")
    start_component("kube-apiserver")
    _allow_oidc_discovery()
    stop_component("minio")
    start_component("minio")


def _restart_stale_podrunner() -> None:
    """A developer edited the pod runner: the running one would keep the old behaviour."""
    recorded = STATE / "podrunner.code"
    if recorded.exists() and recorded.read_text() == _podrunner_code():
        return
    log.warning("the pod runner's code changed since it started: restarting it (running pods restart)")
    stop_component("podrunner")
    start_component("podrunner")


def stop_component(name: str) -> None:
    """Stops one component and keeps its data (tests use this to take MinIO away for a while)."""
    _stop(name)


def component_running(name: str) -> bool:
    return _pid(name) is not None


def _healthy(name: str) -> bool:
    if _pid(name) is None:
        return False
    try:
        return _health(name)()
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


def is_running() -> bool:
    """True when every component's process is alive and answers its health check."""
    return all(_healthy(name) for name in COMPONENTS)


def _start_addons(stack: StackInfo) -> bool:
    """A healthy stack lacking only add-on components (started before they existed) gets them started."""
    core = [n for n in COMPONENTS if n not in ADDONS]
    missing = [n for n in ADDONS if _pid(n) is None]
    running = [n for n in ADDONS if n not in missing]
    if not missing or not all(_healthy(n) for n in core + running):
        return False
    ensure_binaries()
    for name in missing:
        log.info("local stack running without %s: starting it", name)
        start_component(name)
    if "kueue" in missing:
        _setup_queues(stack)
    _write_env(stack)
    return True


def _setup_queues(stack: StackInfo) -> None:
    """Kueue's flavors and ClusterQueue over the GPU classes, and the LocalQueue `default` in the
    namespace `default` (jobs there are queued, the operator's default queue)."""
    api = _api_client(stack)
    queues.ensure_cluster_layout(api)
    queues.ensure_local_queue(api, "default")


def up() -> StackInfo:
    """Brings the whole stack up and returns where it is; a no-op when it already runs."""
    if is_running():
        log.info("local stack already running (%s)", STATE)
        _restart_for_web_identity()
        _restart_stale_podrunner()
        _refresh_kwok_config()
        _refresh_prometheus_config()
        return info()
    if _start_addons(info()):
        _restart_for_web_identity()
        _restart_stale_podrunner()
        _refresh_prometheus_config()
        return info()
    if any(_pid(n) is not None for n in COMPONENTS):
        log.info("a partial stack is running; stopping it first")
        down()
    ensure_binaries()
    prometheus_binary()
    for sub in ("pids", "logs", "minio"):
        (STATE / sub).mkdir(parents=True, exist_ok=True)
    _make_pki()
    _write_kubeconfig()
    _write_kwok_config()
    _write_prometheus_config()
    t0 = time.monotonic()
    for name in COMPONENTS:
        start_component(name)
        if name == "kube-apiserver":
            _allow_oidc_discovery()  # before MinIO, which reads the discovery document at start
        log.info("%-24s healthy (%.1fs)", name, time.monotonic() - t0)
    stack = info()
    api = _api_client(stack)
    gpu_nodes.register(api)
    gpu_nodes.wait_ready(api, timeout=60)
    _wait_default_namespace_ready(api)
    _setup_queues(stack)
    _write_env(stack)
    log.info("local stack up in %.1fs; env: source %s", time.monotonic() - t0, stack.env_file)
    return stack


def down() -> None:
    """Stops every component and removes all state (etcd data, objects in MinIO, metrics)."""
    for name in reversed(COMPONENTS):
        _stop(name)
    if STATE.exists():
        shutil.rmtree(STATE)
    log.info("local stack stopped; state removed")


def _write_env(stack: StackInfo) -> None:
    lines = {
        "KUBECONFIG": str(stack.kubeconfig),
        "KUBEFT_MINIO_ENDPOINT": stack.minio_endpoint,
        "KUBEFT_MINIO_ACCESS_KEY": stack.minio_access_key,
        "KUBEFT_MINIO_SECRET_KEY": stack.minio_secret_key,
        "KUBEFT_PROMETHEUS_URL": stack.prometheus_url,
        "KUBEFT_PROMETHEUS_TARGETS": str(stack.prometheus_targets_dir),
        "KUBEFT_REGISTRY": stack.registry,
        "KUBEFT_REGISTRY_USER": stack.registry_user,
        "KUBEFT_REGISTRY_PASSWORD": stack.registry_password,
    }
    text = "".join(f"export {k}={v}\n" for k, v in lines.items())
    text += f'export PATH="{stack.bin_dir}:$PATH"\n'
    stack.env_file.write_text(text)
    stack.env_file.chmod(0o600)


def _api_client(stack: StackInfo) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(stack.kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def _wait_default_namespace_ready(api: Any, timeout: float = 60.0) -> None:
    """The controller manager creates the `default` ServiceAccount; pods can't be created before it."""
    from kubeft.dev.kube import wait_for_service_account

    wait_for_service_account(api, "default", "default", timeout)


def versions() -> dict[str, str]:
    """Each component's own report of its version."""
    out: dict[str, str] = {}
    probes: Iterable[tuple[str, list[str]]] = (
        ("etcd", [str(BIN / "etcd"), "--version"]),
        ("kube-apiserver", [str(BIN / "kube-apiserver"), "--version"]),
        ("kube-controller-manager", [str(BIN / "kube-controller-manager"), "--version"]),
        ("kube-scheduler", [str(BIN / "kube-scheduler"), "--version"]),
        ("kwok", [str(BIN / "kwok"), "--version"]),
        ("prometheus", [prometheus_binary(), "--version"]),
        ("registry", [str(BIN / "registry"), "--version"]),
    )
    # MinIO built with `go install` reports "DEVELOPMENT.GOGET"; the pinned module version is in the file name
    out["minio"] = (BIN / "minio").resolve().name
    # Kueue's manager has no --version flag; it logs its gitVersion (set from the pinned version) at start
    out["kueue"] = (BIN / "kueue").resolve().name
    for name, argv in probes:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            first = (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
            first = f"unknown ({exc})"
        out[name] = first
    return dict(sorted(out.items(), key=lambda kv: COMPONENTS.index(kv[0])))


def versions_line() -> str:
    return "; ".join(f"{k}: {v}" for k, v in versions().items())


def status() -> dict[str, str]:
    """Each component: running (pid) / healthy or not."""
    result: dict[str, str] = {}
    for name in COMPONENTS:
        pid = _pid(name)
        if pid is None:
            result[name] = "stopped"
            continue
        try:
            healthy = _health(name)()
        except (OSError, urllib.error.URLError, ssl.SSLError):
            healthy = False
        result[name] = f"{'healthy' if healthy else 'unhealthy'} (pid {pid})"
    return result
