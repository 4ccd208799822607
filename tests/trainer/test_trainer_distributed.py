"""The trainer under torchrun on CPU (gloo): 2 processes on one node, 2 nodes of one process each.

Losses must match a single-process run with the same global batch (batch × accumulation × world
size) within LOSS_TOLERANCE: the same samples make each optimizer step and gloo's all-reduce
only reorders float32 sums. Only rank 0 writes the status and uploads; one dead rank ends the
gang (a non-zero exit, no hang) and a restart resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubeft_trainer import distributed as dist
from kubeft_trainer.config import JobRef, RuntimeOptions, TrainerConfig, parse_spec
from kubeft_trainer.status import KubeStatusReporter, StatusReporter
from kubeft_trainer.train import Recipe

from kubeft import contract
from kubeft.dev.podrunner import free_port

from .runs import losses, spawn, wait_for, write_job
from .trainer_helpers import job_spec

pytestmark = pytest.mark.slow
NS, JOB = "test", "tiny"
LOSS_TOLERANCE = 1e-3  # absolute, per step
GANG_TIMEOUT = 240


def spec_for(model: Path, data: Path, store: Path, batch: int, **hp: Any) -> dict[str, Any]:
    spec = job_spec(model, data, batchSize=batch, **hp)
    spec["storage"] = {"endpoint": store.as_uri(), "bucket": "kubeft"}
    return spec


def step_losses(store: Path, step: int) -> dict[int, float]:
    state = store / "kubeft" / contract.checkpoint_prefix(contract.job_prefix(NS, JOB), step)
    return losses(json.loads((state / "trainer_state.json").read_text()))


def run_to_end(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=GANG_TIMEOUT) == 0, log.read_text()[-3000:]


@pytest.fixture()
def baseline(tmp_path: Path, tiny_model_dir: Path, dataset_file: Any, trainer_env: Path) -> dict[str, Any]:
    """One process, batch 4: the losses a world of 2 with batch 2 must reproduce."""
    data = dataset_file("alpaca", repeat=4)
    store = tmp_path / "store-1"
    job = write_job(tmp_path / "one.yaml", spec_for(tiny_model_dir, data, store, 4), JOB, NS)
    proc = spawn(job, tmp_path / "one", log=tmp_path / "one.log")
    run_to_end([proc], [tmp_path / "one.log"])
    return {"data": data, "losses": step_losses(store, 4)}


def test_two_processes_on_one_node_match_one_process(
    baseline: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store-2"
    spec = spec_for(tiny_model_dir, baseline["data"], store, 2)
    spec["resources"] = {"gpus": 2}
    job = write_job(tmp_path / "two.yaml", spec, JOB, NS)
    log = tmp_path / "two.log"
    proc = spawn(job, tmp_path / "two", env={"KUBEFT_NPROC_PER_NODE": "2"}, log=log)
    run_to_end([proc], [log])
    got = step_losses(store, 4)
    assert got.keys() == baseline["losses"].keys()
    for step, loss in baseline["losses"].items():
        assert abs(got[step] - loss) <= LOSS_TOLERANCE, (step, got, baseline["losses"])
    text = log.read_text()
    assert "global batch 4 rows per optimizer step: batch 2 × accumulation 1 × 2 GPU(s)" in text
    # rank 0 alone uploads and exports
    assert "[rank 0] kubeft_trainer.checkpoint: checkpoint step-4 uploaded" in text
    assert "[rank 1] kubeft_trainer.checkpoint" not in text and "[rank 1] kubeft_trainer.export" not in text
    adapter = store / "kubeft" / contract.job_prefix(NS, JOB) / "artifacts" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()


def test_two_nodes_of_one_process_match_one_process(
    baseline: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store-nodes"  # the bucket both pods reach
    spec = spec_for(tiny_model_dir, baseline["data"], store, 2)
    spec["resources"] = {"gpus": 1, "nodes": 2}
    job = write_job(tmp_path / "nodes.yaml", spec, JOB, NS)
    endpoint = f"127.0.0.1:{free_port()}"
    procs, logs = [], []
    for index in (0, 1):  # two pods of an Indexed Job: their own work directories
        env = {
            "KUBEFT_NNODES": "2",
            "KUBEFT_NPROC_PER_NODE": "1",
            "JOB_COMPLETION_INDEX": str(index),
            "KUBEFT_RDZV_ENDPOINT": endpoint,
            "KUBEFT_RDZV_ID": "uid-nodes",
            "KUBEFT_TERMINATION_LOG": str(tmp_path / f"term-{index}"),
        }
        logs.append(tmp_path / f"node-{index}.log")
        procs.append(spawn(job, tmp_path / f"node-{index}", env=env, log=logs[-1]))
    run_to_end(procs, logs)
    got = step_losses(store, 4)
    for step, loss in baseline["losses"].items():
        assert abs(got[step] - loss) <= LOSS_TOLERANCE, (step, got, baseline["losses"])
    assert "checkpoint step-4 uploaded" in logs[0].read_text()
    assert "checkpoint step-4 uploaded" not in logs[1].read_text()


def test_only_rank_0_reports_status(
    tmp_path: Path, tiny_model_dir: Path, dataset_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    spec = parse_spec(spec_for(tiny_model_dir, dataset_file("alpaca"), tmp_path / "s", 2))
    kinds = {}
    for rank in (0, 1):
        for key, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2}.items():
            monkeypatch.setenv(key, str(value))
        cfg = TrainerConfig(JobRef(JOB, NS), spec, runtime=RuntimeOptions(workdir=tmp_path / f"w{rank}"))
        recipe = Recipe(cfg)
        kinds[rank] = type(recipe.status)
        recipe.status.close()
    assert kinds[0] is KubeStatusReporter
    assert kinds[1] is StatusReporter  # keeps updates locally, patches nothing


def _workers(launcher: int) -> list[int]:
    from kubeft.procs import children

    return children().get(launcher, [])


def test_a_dead_rank_ends_the_gang_and_a_restart_resumes(
    tiny_model_dir: Path, dataset_file: Any, tmp_path: Path, trainer_env: Path
) -> None:
    store = tmp_path / "store"
    spec = spec_for(tiny_model_dir, dataset_file("alpaca", repeat=4), store, 2, maxSteps=8)
    spec["resources"] = {"gpus": 2}
    job = write_job(tmp_path / "job.yaml", spec, JOB, NS)
    env = {"KUBEFT_NPROC_PER_NODE": "2", "KUBEFT_DEBUG_STEP_DELAY_SECONDS": "1.0"}
    first = tmp_path / "first.log"
    proc = spawn(job, tmp_path / "work", env=env, log=first)
    manifest = (
        store / "kubeft" / contract.checkpoint_prefix(contract.job_prefix(NS, JOB), 2) / "manifest.json"
    )
    wait_for(manifest.is_file, GANG_TIMEOUT, "checkpoint step-2", proc)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # one rank dies mid-run
    assert proc.wait(timeout=GANG_TIMEOUT) not in (0, contract.EXIT_TERMINATED)
    time.sleep(0.5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
    # the Job starts the gang again: it resumes from the newest complete checkpoint
    second = tmp_path / "second.log"
    again = spawn(job, tmp_path / "work", env={"KUBEFT_NPROC_PER_NODE": "2"}, log=second)
    assert again.wait(timeout=GANG_TIMEOUT) == 0, second.read_text()[-3000:]
    text = second.read_text()
    assert re.search(r"resuming from \S+ \(step [246]\)", text), text[-3000:]
    assert sorted(step_losses(store, 8)) == list(range(1, 9))


def _state(pid: int) -> str:
    try:
        return "zombie" if " Z " in Path(f"/proc/{pid}/stat").read_text() else "alive"
    except OSError:
        return "gone"


def test_fsdp_full_fine_tuning_steps_adamw_one_shard_at_a_time() -> None:
    import torch

    kw = {"lr": 1e-5, "betas": (0.9, 0.999)}
    assert dist.sharded_optimizer_kwargs(torch.optim.AdamW, kw, "fsdp", "full") == {**kw, "foreach": False}
    # unchanged: the fused kernel, DDP, LoRA, other optimizers
    fused = {**kw, "fused": True}
    assert dist.sharded_optimizer_kwargs(torch.optim.AdamW, fused, "fsdp", "full") == fused
    assert dist.sharded_optimizer_kwargs(torch.optim.AdamW, kw, "ddp", "full") == kw
    assert dist.sharded_optimizer_kwargs(torch.optim.AdamW, kw, "fsdp", "lora") == kw
    assert dist.sharded_optimizer_kwargs(torch.optim.SGD, kw, "fsdp", "full") == kw


def test_expandable_segments_leave_the_pods_allocator_settings_alone() -> None:
    assert not dist.prefer_expandable_segments({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"})
    assert not dist.prefer_expandable_segments({"PYTORCH_ALLOC_CONF": "expandable_segments:False"})
