"""Training runs of a tiny random Llama on CPU: formats, learning, packing, checkpoints, resume, export."""

from __future__ import annotations

import itertools
import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubeft_trainer.__main__ import main
from kubeft_trainer.config import JobRef, RuntimeOptions, TrainerConfig, parse_spec
from kubeft_trainer.errors import InvalidInputError
from kubeft_trainer.status import StatusReporter
from kubeft_trainer.train import Recipe

from kubeft import contract

from .conftest import Backend
from .runs import losses, spawn, wait_for, write_job
from .trainer_helpers import QA, RecordingReporter, job_spec, write_jsonl

pytestmark = pytest.mark.slow
NS, JOB = "test", "tiny"


def ckpt_prefix(step: int) -> str:
    return contract.checkpoint_prefix(contract.job_prefix(NS, JOB), step)


def complete_steps(backend: Backend) -> list[int]:
    keys = backend.keys(f"{contract.job_prefix(NS, JOB)}/checkpoints/")
    return sorted(int(k.split("/step-")[1].split("/")[0]) for k in keys if k.endswith("/manifest.json"))


def recipe(
    spec: dict[str, Any],
    workdir: Path,
    status: StatusReporter | None = None,
    port: int | None = None,
    uid: str = "",
) -> Recipe:
    cfg = TrainerConfig(
        job=JobRef(JOB, NS, uid),
        spec=parse_spec(spec),
        runtime=RuntimeOptions(workdir=workdir, metrics_port=port, report_status=False),
    )
    return Recipe(cfg, status=status)


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages", "text"])
def test_each_dataset_format_trains_end_to_end_through_the_cli(
    fmt: str, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path, trainer_env: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file(fmt, repeat=2), maxSteps=4)
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job = write_job(tmp_path / "job.yaml", spec, JOB, NS)
    rc = main(["--config", str(job), "--workdir", str(tmp_path / "work"), "--no-status", "--no-metrics"])
    assert rc == 0
    base = tmp_path / "store" / "kubeft" / contract.job_prefix(NS, JOB)  # <ns>/<name>/local: no UID here
    assert (base / "checkpoints" / "step-4" / "manifest.json").is_file()
    adapter = base / "artifacts" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not trainer_env.exists()  # no termination message on success


@pytest.mark.parametrize(("method", "lr", "target"), [("full", 3e-3, 0.4), ("lora", 1e-2, 0.92)])
def test_loss_goes_down_on_a_memorisable_dataset(
    method: str, lr: float, target: float, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = job_spec(
        tiny_model_dir, dataset_file("messages", repeat=4), maxSteps=30, learningRate=lr, batchSize=8
    )
    spec["method"] = method
    if method == "full":  # LoRA settings with method full are refused, as the CRD does
        del spec["hyperparameters"]["lora"]
    spec["export"] = {"formats": ["merged-16bit" if method == "full" else "adapter"]}
    spec["checkpoints"] = {"everySteps": 30, "keep": 1}
    recipe(spec, tmp_path / "work").run()
    state_file = tmp_path / "work/storage/kubeft" / ckpt_prefix(30) / "trainer_state.json"
    curve = losses(json.loads(state_file.read_text()))
    first = sum(curve[s] for s in (1, 2, 3)) / 3
    last = sum(curve[s] for s in (28, 29, 30)) / 3
    # a random 64-wide model memorises quickly with all weights; LoRA alone moves slower
    assert last < target * first, curve


def test_packing_keeps_samples_apart(dataset_file: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    spec = job_spec(tiny_model_dir, dataset_file("messages"), maxSteps=1, batchSize=4)
    run = recipe(spec, tmp_path / "work")
    run.setup()
    try:
        batch = next(iter(run.trainer.get_train_dataloader()))
        pos = batch["position_ids"][0]
        starts = (pos == 0).nonzero().flatten().tolist()
        assert batch["input_ids"].shape[0] == 1 and len(starts) > 1  # several samples in one padding-free row
        assert "attention_mask" not in batch
        # no token is trained to predict the first token of the next sample
        assert all(batch["labels"][0, s] == -100 for s in starts)
        # a sample's logits inside the packed row equal its logits alone: no attention across samples
        model = run.trainer.model.eval()
        bounds = [*starts, pos.numel()]
        with torch.no_grad():
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
            for a, b in itertools.pairwise(bounds):
                alone = model(input_ids=batch["input_ids"][:, a:b]).logits[0]
                torch.testing.assert_close(packed[a:b], alone, atol=1e-4, rtol=1e-4)
    finally:
        run.cleanup(False)


def test_checkpoints_are_complete_and_pruned_to_keep(
    backend: Backend, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path, trainer_env: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file("alpaca", repeat=4), maxSteps=7)
    spec["storage"] = backend.spec
    spec["checkpoints"] = {"everySteps": 2, "keep": 2}
    reporter = RecordingReporter()
    recipe(spec, tmp_path / "work", status=reporter).run()
    # steps 2, 4, 6 and the final 7 were saved; the newest two remain
    assert complete_steps(backend) == [6, 7]
    manifest = backend.json(f"{ckpt_prefix(7)}/manifest.json")
    listed = {f["path"] for f in manifest["files"]}
    assert {
        "adapter_model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    } <= listed
    stored = {k.rsplit("/", 1)[1] for k in backend.keys(ckpt_prefix(7) + "/")}
    assert stored == listed | {"manifest.json"}
    phases = [u["phase"] for u in reporter.updates if "phase" in u]
    assert phases == ["Training", "Exporting"]  # the operator sets every other phase
    assert reporter.state["checkpoints"]["step"] == 7
    assert reporter.state["checkpoints"]["latest"].endswith(f"{ckpt_prefix(7)}/")
    assert reporter.state["progress"]["step"] == reporter.state["progress"]["totalSteps"] == 7
    assert reporter.state["artifacts"]["adapter"].endswith(
        contract.artifacts_prefix(contract.job_prefix(NS, JOB)) + "/adapter/"
    )


def test_sigkill_then_restart_resumes_from_the_last_checkpoint_with_the_same_data_order(
    backend: Backend, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = dataset_file("sharegpt", repeat=6)
    steps = 10
    # reference: the same job, never interrupted
    ref_spec = job_spec(tiny_model_dir, data, maxSteps=steps)
    ref_spec["storage"] = {"endpoint": (tmp_path / "ref-store").as_uri(), "bucket": "kubeft"}
    ref_spec["checkpoints"] = {"everySteps": steps, "keep": 1}
    recipe(ref_spec, tmp_path / "ref").run()
    ref_state = json.loads(
        (tmp_path / "ref-store/kubeft" / ckpt_prefix(steps) / "trainer_state.json").read_text()
    )
    reference = losses(ref_state)

    spec = job_spec(tiny_model_dir, data, maxSteps=steps)
    spec["storage"] = backend.spec
    spec["checkpoints"] = {"everySteps": 3, "keep": 2}
    job = write_job(tmp_path / "job.yaml", spec, JOB, NS)
    proc = spawn(job, tmp_path / "run1", {**backend.env, "KUBEFT_DEBUG_STEP_DELAY_SECONDS": "0.4"})
    try:
        wait_for(lambda: 3 in complete_steps(backend), 120, "checkpoint step-3 in storage", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(complete_steps(backend))
    assert 3 <= killed_at < steps

    # a new pod: fresh work directory, only the object store survives
    proc = spawn(job, tmp_path / "run2", backend.env)
    assert proc.wait(timeout=300) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    log = (tmp_path / "run2.log").read_text()
    assert f"(step {killed_at})" in log and "resuming from" in log
    final = backend.json(f"{ckpt_prefix(steps)}/manifest.json")
    assert final["step"] == steps
    state = json.loads(backend.store.get_bytes(f"{ckpt_prefix(steps)}/trainer_state.json") or b"{}")
    resumed = losses(state)
    assert sorted(resumed) == list(range(1, steps + 1))
    # steps after the restart see the same batches, optimizer and RNG as the uninterrupted run
    for step in range(killed_at + 1, steps + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-4), (step, resumed, reference)


def test_sigterm_saves_a_final_checkpoint_and_exits_143(
    dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file("messages", repeat=4), maxSteps=50)
    store = tmp_path / "store"
    spec["storage"] = {"endpoint": store.as_uri(), "bucket": "kubeft"}
    spec["checkpoints"] = {"everySteps": 1000, "keep": 2}
    job = write_job(tmp_path / "job.yaml", spec, JOB, NS)
    term = tmp_path / "termination-log"
    proc = spawn(
        job, tmp_path / "run", {"KUBEFT_DEBUG_STEP_DELAY_SECONDS": "0.3", "KUBEFT_TERMINATION_LOG": str(term)}
    )
    log = tmp_path / "run.log"
    try:
        wait_for(lambda: log.exists() and "step 2/50" in log.read_text(), 120, "two training steps", proc)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    saved = sorted(
        (store / "kubeft" / contract.job_prefix(NS, JOB) / "checkpoints").glob("step-*/manifest.json")
    )
    assert len(saved) == 1
    step = json.loads(saved[0].read_text())["step"]
    assert 2 <= step < 50
    message = json.loads(term.read_text())
    assert message["reason"] == "Terminated" and f"at step {step}" in message["message"]


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_merged_export_loads_and_matches_base_plus_adapter(
    method: str, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    import torch
    from kubeft_trainer.model import detect_hardware, load_model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = job_spec(tiny_model_dir, dataset_file("alpaca", repeat=2), maxSteps=6, learningRate=2e-2)
    spec["method"] = method
    spec["export"] = {"formats": ["adapter", "merged-16bit"]}
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    recipe(spec, tmp_path / "work").run()
    artifacts = tmp_path / "store" / "kubeft" / contract.artifacts_prefix(contract.job_prefix(NS, JOB))

    merged = AutoModelForCausalLM.from_pretrained(str(artifacts / "merged-16bit"), dtype=torch.float32).eval()
    assert "quantization_config" not in json.loads((artifacts / "merged-16bit" / "config.json").read_text())
    base = load_model(tiny_model_dir, method, detect_hardware())
    with_adapter = PeftModel.from_pretrained(base, str(artifacts / "adapter")).eval()
    plain = load_model(tiny_model_dir, method, detect_hardware()).eval()

    ids = tiny_tokenizer(QA[0][0] + " " + QA[0][1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = with_adapter(input_ids=ids).logits.float()
        got = merged(input_ids=ids).logits.float()
        untrained = plain(input_ids=ids).logits.float()
    scale = expected.abs().max().item()
    # the adapter changed the model, and the merged weights (bf16) reproduce base+adapter
    assert (untrained - expected).abs().max().item() > 20 * (got - expected).abs().max().item()
    assert (got - expected).abs().max().item() < 0.02 * scale


def test_merge_goes_where_the_16bit_model_fits() -> None:
    from kubeft_trainer.export import plan_merge

    gib = 2**30
    assert plan_merge(16 * gib, 40 * gib, 64 * gib).device == "cuda"
    # a 14B model trained in 4 bits on a 24 GB GPU: its 16-bit copy (28 GiB) is built in host memory
    on_host = plan_merge(28 * gib, 20 * gib, 96 * gib)
    assert on_host.device == "cpu" and "the GPU has 20.0 GiB free" in on_host.reason
    assert plan_merge(28 * gib, None, None).device == "cpu"  # no GPU, host memory unknown: try it
    nowhere = plan_merge(28 * gib, 20 * gib, 16 * gib)
    assert nowhere.device is None
    assert nowhere.reason.startswith("merged-16bit not exported: the 16-bit model takes 28.0 GiB")
    assert "the adapter is exported" in nowhere.reason


def test_a_merge_with_no_room_anywhere_still_succeeds_with_the_adapter(
    dataset_file: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeft_trainer import profile

    monkeypatch.setattr(profile, "available_host_memory", lambda *a: 1024)  # a host with no room
    spec = job_spec(tiny_model_dir, dataset_file("alpaca"), maxSteps=2)
    spec["export"] = {"formats": ["adapter", "merged-16bit"]}
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    status = RecordingReporter()
    run = recipe(spec, tmp_path / "work", status=status)
    run.run()
    artifacts = tmp_path / "store" / "kubeft" / contract.artifacts_prefix(contract.job_prefix(NS, JOB))
    assert (artifacts / "adapter" / "adapter_model.safetensors").is_file()
    assert not (artifacts / "merged-16bit").exists()
    assert set(run.artifacts) == {"adapter"}
    said = [u["progress"]["message"] for u in status.updates if "message" in (u.get("progress") or {})]
    assert any(m.startswith("merged-16bit not exported: the 16-bit model takes") for m in said), said


def test_metrics_endpoint_serves_training_series_with_job_labels(
    dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file("messages", repeat=2), maxSteps=3)
    spec["dataset"]["eval"] = {"split": 0.25}
    run = recipe(spec, tmp_path / "work", port=0)
    run.setup()
    try:
        run.train()
        run.evaluate()
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{run.metrics_port}/metrics", timeout=10).read().decode()
        )
    finally:
        run.cleanup(True)
    labels = f'{{job="{JOB}",namespace="{NS}",rank="0"}}'  # one process: rank 0
    for name in (
        "kubeft_trainer_train_loss",
        "kubeft_trainer_learning_rate",
        "kubeft_trainer_grad_norm",
        "kubeft_trainer_tokens_per_second",
        "kubeft_trainer_tokens_total",
        "kubeft_trainer_step",
        "kubeft_trainer_epoch",
        "kubeft_trainer_process_resident_memory_bytes",
        "kubeft_trainer_eval_loss",
        "kubeft_trainer_eval_perplexity",
        "kubeft_trainer_checkpoint_upload_bytes_total",
        "kubeft_trainer_checkpoint_upload_duration_seconds_count",
    ):
        assert f"{name}{labels}" in body, name
    value = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in body.splitlines()
        if line.startswith("kubeft_")
    }
    assert value[f"kubeft_trainer_step{labels}"] == 3
    assert value[f"kubeft_trainer_train_loss{labels}"] > 0
    assert value[f"kubeft_trainer_tokens_total{labels}"] > 0


def test_a_dataset_without_usable_rows_exits_2_with_a_termination_message(
    tiny_model_dir: Path, tmp_path: Path, trainer_env: Path
) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"messages": [{"role": "user", "content": "q"}]}])
    spec = job_spec(tiny_model_dir, data)
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job = write_job(tmp_path / "job.yaml", spec)
    rc = main(["--config", str(job), "--workdir", str(tmp_path / "work"), "--no-status", "--no-metrics"])
    assert rc == contract.EXIT_INVALID_INPUT
    message = json.loads(trainer_env.read_text())
    assert message["reason"] == "InvalidInput"
    assert "no usable rows" in message["message"] and "lines 1, 2" in message["message"]


@pytest.mark.stack
def test_initialisation_says_what_it_is_doing_with_download_progress(
    minio_backend: Backend, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    files = sorted(p for p in tiny_model_dir.iterdir() if p.is_file())
    for path in files:
        minio_backend.store.upload_file(path, f"models/tiny/{path.name}")
    bucket = minio_backend.spec["bucket"]
    source = f"s3://{bucket}/models/tiny/"
    data = dataset_file("alpaca")
    spec = job_spec(Path("unused"), data, maxSteps=2)
    spec["model"] = {"source": source}
    spec["storage"] = minio_backend.spec
    status = RecordingReporter()
    run = recipe(spec, tmp_path / "work", status=status)
    try:
        run.setup()
    finally:
        run.cleanup(False)
    said = [u["progress"]["message"] for u in status.updates if "message" in (u.get("progress") or {})]
    downloads = [m for m in said if m.startswith(f"downloading the model {source}: ")]
    assert downloads[0].endswith(f"(0/{len(files)} files)")
    assert downloads[-1].endswith(f"({len(files)}/{len(files)} files)")
    assert [m for m in said if m not in downloads] == [
        f"fetching the model {source}",
        f"preparing the dataset {data}",
        "looking for a checkpoint to resume from",
        "loading the model",  # no quantisation on CPU
        "building the trainer (LoRA adapters, packing, optimizer)",
        "",  # a clean dataset leaves no message once initialised
    ]


def test_a_job_created_again_under_its_name_starts_fresh_unless_resume_from_names_the_old_run(
    backend: Backend, dataset_file: Any, tiny_model_dir: Path, tmp_path: Path, trainer_env: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file("alpaca", repeat=4), maxSteps=4)
    spec["storage"] = backend.spec
    spec["checkpoints"] = {"everySteps": 2, "keep": 2}
    recipe(spec, tmp_path / "first", uid="uid-1").run()
    old = contract.job_prefix(NS, JOB, "uid-1")
    assert backend.keys(contract.checkpoint_prefix(old, 4) + "/")  # under <ns>/<name>/<uid>
    longer = {**spec, "hyperparameters": {**spec["hyperparameters"], "maxSteps": 6}}

    # deleted and created again (a new UID): nothing of the first run is loaded
    again = recipe(longer, tmp_path / "again", uid="uid-2")
    again.setup()
    assert again.resume_dir is None
    again.cleanup(False)

    # spec.resumeFrom names the first run: its newest checkpoint, step 4, and the status says whence
    bucket = backend.spec["bucket"]
    status = RecordingReporter()
    resumed = recipe(
        {**longer, "resumeFrom": f"s3://{bucket}/{old}/"}, tmp_path / "resumed", status, uid="uid-3"
    )
    resumed.run()
    assert resumed.resume_dir is not None and resumed.resume_dir.name == "checkpoint-4"
    assert status.state["checkpoints"]["step"] == 6  # continued to the new maxSteps, in its own prefix
    assert status.state["checkpoints"]["latest"].endswith(
        contract.checkpoint_prefix(contract.job_prefix(NS, JOB, "uid-3"), 6) + "/"
    )
    assert any(u.get("checkpoints", {}).get("resumedFrom") == f"s3://{bucket}/{old}/" for u in status.updates)
    assert backend.keys(contract.checkpoint_prefix(old, 4) + "/")  # the old run is left as it was

    # a checkpoint of another base model (or method) is refused, by name, before any training
    other = {
        **longer,
        "method": "qlora",
        "resumeFrom": f"s3://{bucket}/{contract.checkpoint_prefix(old, 2)}/",
    }
    refused = recipe(other, tmp_path / "refused", uid="uid-4")
    with pytest.raises(
        InvalidInputError,
        match=r"spec\.resumeFrom: .*step-2/ was trained with method 'lora'; this job has method 'qlora'",
    ):
        refused.setup()
    refused.cleanup(False)
