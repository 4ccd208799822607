"""Storage without static keys, the parts that need no cluster: the trainer pod a web-identity job
gets, the spec and profile rules, and the credentials chain against a small STS endpoint.

The whole flow against the local stack's API server (the issuer) and MinIO (the STS) is in
tests/e2e/test_web_identity.py.
"""

from __future__ import annotations

import datetime as dt
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubeft_operator import placement as pl
from kubeft_operator import resources
from kubeft_operator.api import FineTuneJob
from kubeft_operator.reconcile import Inputs, Observed, decide
from kubeft_operator.settings import Settings
from kubeft_trainer import storage
from kubeft_trainer.errors import WebIdentityRefusedError

from kubeft import contract, webidentity
from kubeft import estimate as est
from kubeft import profile as profiles
from kubeft.spec import SpecError, parse_spec

ROLE = "arn:aws:iam::123456789012:role/kubeft-team-a"
SETTINGS = Settings(default_storage_endpoint="http://minio:9000", web_identity_audience="minio-sts")
NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


def web_job(**storage: Any) -> FineTuneJob:
    return FineTuneJob.from_body(
        {
            "metadata": {"name": "j", "namespace": "team-a", "uid": "uid-1", "generation": 1},
            "spec": {
                "model": {"source": "s3://models/llama/"},
                "dataset": {"source": "s3://data/train.jsonl"},
                "storage": storage or {"roleArn": ROLE},
            },
        }
    )


def trainer_pod(job: FineTuneJob, settings: Settings = SETTINGS) -> Any:
    """The trainer pod template the operator would create for ``job`` (an L4 is free)."""
    classes = pl.gpu_classes(pl.gpu_nodes([_l4_node()], []))
    d = decide(job, Observed(), Inputs(classes=classes, shape=est.known_shape("llama-3.2-1b")), settings, NOW)
    assert d.create is not None, d
    return resources.get_trainer_job(job, d.create).spec.template


def _l4_node() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "gpu-l4-1",
            "labels": {contract.LABEL_GPU_PRODUCT: "NVIDIA-L4", contract.LABEL_GPU_MEMORY: "23034"},
        },
        "spec": {},
        "status": {
            "allocatable": {contract.RESOURCE_GPU: "1"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_a_job_with_a_role_and_no_secret_gets_a_projected_token_and_the_web_identity_env() -> None:
    pod = trainer_pod(web_job())
    c = pod.spec.containers[0]
    env = {e.name: e for e in c.env}
    # no static keys, no Secret referenced anywhere in the pod
    assert contract.ENV_S3_ACCESS_KEY not in env and contract.ENV_S3_SECRET_KEY not in env
    assert all(e.value_from is None or e.value_from.secret_key_ref is None for e in c.env)
    assert not any(v.secret for v in pod.spec.volumes)
    assert env[webidentity.ENV_ROLE_ARN].value == ROLE
    token_path = env[webidentity.ENV_TOKEN_FILE].value
    assert token_path == f"{webidentity.TOKEN_DIR}/{webidentity.TOKEN_FILE}"
    assert env[webidentity.ENV_SESSION_NAME].value == "kubeft-trainer-team-a-j"
    assert webidentity.ENV_STS_ENDPOINT not in env  # the storage endpoint serves STS (MinIO)
    (volume,) = [v for v in pod.spec.volumes if v.name == webidentity.TOKEN_VOLUME]
    (source,) = volume.projected.sources
    sat = source.service_account_token
    assert (sat.audience, sat.expiration_seconds, sat.path) == ("minio-sts", 3600, webidentity.TOKEN_FILE)
    (mount,) = [m for m in c.volume_mounts if m.name == webidentity.TOKEN_VOLUME]
    assert mount.mount_path == webidentity.TOKEN_DIR and mount.read_only
    # the token is the trainer's own ServiceAccount's
    assert pod.spec.service_account_name == "j-trainer"
    # an STS somewhere else (AWS): the operator setting reaches the trainer
    aws = Settings(web_identity_sts_endpoint="https://sts.eu-west-1.amazonaws.com")
    env = {e.name: e.value for e in trainer_pod(web_job(), aws).spec.containers[0].env}
    assert env[webidentity.ENV_STS_ENDPOINT] == "https://sts.eu-west-1.amazonaws.com"


def test_a_job_with_a_secret_keeps_its_static_keys_and_gets_no_token() -> None:
    pod = trainer_pod(web_job(credentialsSecret="creds"))
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env[contract.ENV_S3_ACCESS_KEY].value_from.secret_key_ref.name == "creds"
    assert webidentity.ENV_ROLE_ARN not in env
    assert not any(v.name == webidentity.TOKEN_VOLUME for v in pod.spec.volumes)


def test_the_spec_takes_one_kind_of_credentials_and_a_role_arn_only() -> None:
    base = {"model": {"source": "s3://m/"}, "dataset": {"source": "s3://d/x"}}
    assert parse_spec({**base, "storage": {"roleArn": "arn:minio:iam:::role/abc_-"}}).storage.role_arn
    with pytest.raises(SpecError, match="credentialsSecret and roleArn: name one"):
        parse_spec({**base, "storage": {"roleArn": ROLE, "credentialsSecret": "creds"}})
    with pytest.raises(SpecError, match="roleArn"):
        parse_spec({**base, "storage": {"roleArn": "team-a-role"}})


def test_a_profile_role_fills_a_job_without_credentials_and_never_joins_a_secret() -> None:
    p = profiles.Profile.from_body(
        {"metadata": {"name": "p"}, "spec": {"defaults": {"storage": {"bucket": "team", "roleArn": ROLE}}}}
    )
    assert p.apply_defaults({"storage": {}})["storage"] == {"bucket": "team", "roleArn": ROLE}
    own = p.apply_defaults({"storage": {"credentialsSecret": "mine"}})["storage"]
    assert own == {"bucket": "team", "credentialsSecret": "mine"}
    keys = profiles.Profile.from_body(
        {"metadata": {"name": "p"}, "spec": {"defaults": {"storage": {"credentialsSecret": "shared"}}}}
    )
    assert keys.apply_defaults({"storage": {"roleArn": ROLE}})["storage"] == {"roleArn": ROLE}


# --- the credentials chain against an STS endpoint ---------------------------------------------
class _Sts:
    """AssumeRoleWithWebIdentity as AWS and MinIO answer it: the tokens it saw, keys that expire."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.lifetime = dt.timedelta(hours=1)
        self.refuse: tuple[int, str, str] | None = None
        sts = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                assert form["Action"] == ["AssumeRoleWithWebIdentity"]
                sts.tokens.append(form["WebIdentityToken"][0])
                if sts.refuse:
                    status, code, message = sts.refuse
                    body = (
                        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
                        f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                        "</ErrorResponse>"
                    )
                else:
                    status = 200
                    expires = (dt.datetime.now(dt.UTC) + sts.lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
                    n = len(sts.tokens)
                    body = (
                        '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                        "<AssumeRoleWithWebIdentityResult><Credentials>"
                        f"<AccessKeyId>AK{n}</AccessKeyId><SecretAccessKey>SK{n}</SecretAccessKey>"
                        f"<SessionToken>ST{n}</SessionToken><Expiration>{expires}</Expiration>"
                        "</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
                    )
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def sts() -> Iterator[_Sts]:
    s = _Sts()
    yield s
    s.server.shutdown()


def test_the_trainer_uses_static_keys_when_it_has_them_else_its_token(sts: _Sts, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("jwt-1\n")
    chain = {webidentity.ENV_ROLE_ARN: ROLE, webidentity.ENV_TOKEN_FILE: str(token)}
    keys = {contract.ENV_S3_ACCESS_KEY: "a", contract.ENV_S3_SECRET_KEY: "s"}
    static = storage.minio_client(sts.url, {**keys, **chain})
    assert static._provider.retrieve().access_key == "a"
    client = storage.minio_client(
        sts.url, {**chain, contract.ENV_JOB_NAMESPACE: "ns", contract.ENV_JOB_NAME: "j"}
    )
    provider = client._provider
    assert isinstance(provider, webidentity.WebIdentityProvider)
    assert provider.session_name == "kubeft-trainer-ns-j" and provider.endpoint == sts.url
    creds = provider.retrieve()
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("AK1", "SK1", "ST1")
    assert sts.tokens == ["jwt-1"]
    # kept while fresh; renewed before expiry, with the token file read again (the kubelet rotates it)
    assert provider.retrieve().access_key == "AK1" and provider.exchanges == 1
    sts.lifetime = dt.timedelta(seconds=webidentity.RENEW_BEFORE_SECONDS - 1)
    token.write_text("jwt-2")
    provider._credentials = None
    assert provider.retrieve().access_key == "AK2"
    assert provider.retrieve().access_key == "AK3"  # already inside the renewal window: renewed again
    assert sts.tokens == ["jwt-1", "jwt-2", "jwt-2"]
    # $AWS_ENDPOINT_URL_STS wins over the storage endpoint
    assert webidentity.sts_endpoint("http://minio:9000", {webidentity.ENV_STS_ENDPOINT: "https://sts/"}) == (
        "https://sts"
    )


def test_an_sts_refusal_is_one_clear_permanent_error_for_the_trainer(sts: _Sts, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("jwt")
    sts.refuse = (400, "InvalidParameterValue", "STS JWT Token has `azp` claim invalid")
    client = storage.minio_client(
        sts.url, {webidentity.ENV_ROLE_ARN: ROLE, webidentity.ENV_TOKEN_FILE: str(token)}
    )
    calls = []

    def list_buckets() -> Any:
        calls.append(1)
        return client.list_buckets()

    with pytest.raises(WebIdentityRefusedError) as info:
        storage.retry(list_buckets, "list buckets", storage.RetryPolicy(initial_seconds=0.01))
    assert len(calls) == 1  # not retried: the same token and role get the same answer
    text = str(info.value)
    assert (
        f"for role {ROLE}" in text and "InvalidParameterValue: STS JWT Token has `azp` claim invalid" in text
    )
    assert info.value.reason == "WebIdentityRefused" and info.value.exit_code == contract.EXIT_INVALID_INPUT
    # an unreachable STS is not a refusal: retried like any network error
    sts.server.shutdown()
    sts.server.server_close()
    with pytest.raises(webidentity.WebIdentityError) as err:
        webidentity.assume_role(sts.url, "t", ROLE, "s", timeout=0.5)
    assert not err.value.permanent and "cannot reach it" in str(err.value)
