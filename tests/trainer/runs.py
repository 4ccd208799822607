"""Running the trainer from tests: in-process through main(), or as a subprocess that can be killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def write_job(path: Path, spec: dict[str, Any], name: str = "tiny", namespace: str = "test") -> Path:
    """A FineTuneJob manifest for `kubeft-trainer --config`."""
    manifest = {
        "apiVersion": "kubeft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(manifest))
    return path


def spawn(
    job: Path, workdir: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Starts `python -m kubeft_trainer` on a job file; output goes to `log` (default workdir.log)."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("KUBEFT_JOB_CONFIG", None)
    out = (log or workdir.with_suffix(".log")).open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubeft_trainer",
            "--config",
            str(job),
            "--workdir",
            str(workdir),
            "--metrics-port",
            "0",
        ]
        + ([] if "KUBECONFIG" in (env or {}) else ["--no-status"]),
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=str(REPO),
    )


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Polls `check` until true; fails with `what` on timeout or when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode} before: {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def losses(trainer_state: dict[str, Any]) -> dict[int, float]:
    """step → training loss from a trainer_state.json log history."""
    return {int(h["step"]): float(h["loss"]) for h in trainer_state["log_history"] if "loss" in h}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
