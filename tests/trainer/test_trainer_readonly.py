"""The trainer writes nowhere but its pod's emptyDirs: a whole run (LoRA training with checkpoints,
the adapter, the merged model and a GGUF file) under a read-only root filesystem.

The trainer pod has ``readOnlyRootFilesystem: true``; the local pod runner cannot run an image, so
this runs the trainer as the pod runner does under that flag (kubeft/dev/rootfs.py, a private mount
namespace in which every mount is read-only) with the writable places the operator gives the pod:
its work directory, /tmp and the cache (HOME, TMPDIR, HF_HOME, ... exactly the operator's values, each
moved under this test's directory as the pod runner mirrors mounts), plus the local object store that
stands in for S3. Any write elsewhere (the working directory, the model's directory, site-packages,
$HOME of the user running the tests) fails with EROFS and fails the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubeft_operator import resources

from kubeft import contract
from kubeft.dev import podrunner, tinymodel

from .trainer_helpers import job_spec

pytestmark = pytest.mark.skipif(
    not podrunner.readonly_root_supported(), reason="unshare cannot make a read-only mount namespace here"
)


def _read_only(
    writable: list[Path], command: list[str], **kwargs: object
) -> subprocess.CompletedProcess[str]:
    args = [a for w in writable for a in ("--writable", str(w))]
    argv = [*podrunner._unshare_argv(), sys.executable, str(podrunner.ROOTFS), *args, "--", *command]
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def test_the_harness_refuses_writes_outside_the_writable_paths(tmp_path: Path) -> None:
    (tmp_path / "rw").mkdir()
    probe = "import sys; open(sys.argv[1], 'w').write('x')"
    assert (
        _read_only([tmp_path / "rw"], [sys.executable, "-c", probe, str(tmp_path / "rw" / "f")]).returncode
        == 0
    )
    refused = _read_only([tmp_path / "rw"], [sys.executable, "-c", probe, str(tmp_path / "f")])
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_a_whole_run_with_exports_writes_only_to_the_pods_volumes(tmp_path: Path) -> None:
    model = tinymodel.build_tiny_model(tmp_path / "model")
    data = tinymodel.write_jsonl(tmp_path / "train.jsonl", tinymodel.rows("messages") * 2)
    spec = job_spec(model, data)
    spec["export"] = {"formats": ["adapter", "merged-16bit", "gguf-q8_0"]}
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job = tmp_path / "job.yaml"
    manifest = {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "spec": spec,
                "metadata": {"name": "ro", "namespace": "test"}}  # fmt: skip
    job.write_text(yaml.safe_dump(manifest))
    volumes = {contract.TMP_DIR: tmp_path / "tmp", contract.CACHE_DIR: tmp_path / "cache"}
    work, store, log = tmp_path / "work", tmp_path / "store", tmp_path / "termination-log"
    for d in (*volumes.values(), work, store):
        d.mkdir()
    log.touch()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ":".join(sys.path[1:]),
           contract.ENV_TERMINATION_LOG: str(log)}  # fmt: skip
    for var in resources.writable_env():  # the pod's values, under this test's mirrors of its mounts
        value = str(var.value)
        for mount, local in volumes.items():
            if value == mount or value.startswith(mount + "/"):
                value = str(local) + value[len(mount) :]
        env[var.name] = value
    assert env["HOME"] == str(volumes[contract.TMP_DIR])
    command = [sys.executable, "-m", "kubeft_trainer", "--config", str(job), "--workdir", str(work),
               "--metrics-port", "0", "--no-status"]  # fmt: skip
    done = _read_only([work, *volumes.values(), store, log], command, env=env, cwd=str(model), timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    artifacts = store / "kubeft" / contract.artifacts_prefix(contract.job_prefix("test", "ro"))
    assert (artifacts / "adapter" / "adapter_config.json").exists()
    assert (artifacts / "merged-16bit" / "config.json").exists()
    assert list((artifacts / "gguf-q8_0").glob("*.gguf"))
    # torch put its compiled-kernel cache where the operator points it
    assert (volumes[contract.CACHE_DIR] / "torchinductor").is_dir()
