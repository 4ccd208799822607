"""Packing must not leak attention across samples: the loss of a packed, padding-free batch equals the
sum of its samples' losses computed alone, through the trainer's own model, collator and attention
(``kubeft_varlen``; on CPU it runs causal sdpa per sample, on CUDA varlen flash attention,
checked against the same reference by bench/check_varlen.py)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from kubeft_trainer import attention, profile
from kubeft_trainer.config import JobRef, JobSpec, RuntimeOptions, TrainerConfig, parse_spec
from kubeft_trainer.status import StatusReporter
from kubeft_trainer.train import Recipe

from kubeft import estimate as est

from .trainer_helpers import job_spec


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over the labelled positions (labels already aligned to inputs)."""
    return torch.nn.functional.cross_entropy(
        logits[:-1].double(), labels[1:], ignore_index=-100, reduction="sum"
    )


def test_packed_loss_is_the_sum_of_the_samples_losses(
    dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file("messages", repeat=2), maxSteps=1, batchSize=4)
    cfg = TrainerConfig(
        job=JobRef("tiny", "test"),
        spec=parse_spec(spec),
        runtime=RuntimeOptions(workdir=tmp_path / "work", metrics_port=None, report_status=False),
    )
    run = Recipe(cfg, status=StatusReporter())
    run.setup()
    try:
        model = run.trainer.model.eval()
        assert model.config._attn_implementation == attention.ATTN_IMPLEMENTATION
        batch = next(iter(run.trainer.get_train_dataloader()))
        cu = batch["cu_seq_lens_q"].tolist()
        assert batch["input_ids"].shape[0] == 1 and len(cu) > 2  # several samples in one row, no padding
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        with torch.no_grad():
            packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
            # per-token losses of the packed row; the first token of each sample is never a target
            packed_loss = _summed_loss(packed, labels)
            alone_loss = torch.zeros((), dtype=torch.float64)
            for a, b in itertools.pairwise(cu):
                logits = model(input_ids=ids[None, a:b]).logits[0]
                alone_loss += _summed_loss(logits, labels[a:b])
            # the same row without the boundaries, positions only: the attention finds them itself
            by_positions = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        torch.testing.assert_close(packed_loss, alone_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(by_positions, packed, rtol=1e-5, atol=1e-5)
        # and a row where samples could see each other would differ
        with torch.no_grad():
            leaky = model(input_ids=batch["input_ids"]).logits[0]
        assert not torch.allclose(_summed_loss(leaky, labels), alone_loss, rtol=1e-5, atol=1e-5)
    finally:
        run.cleanup(False)


def default_spec() -> JobSpec:
    """The spec model's defaults: batch 2 × accumulation 4, 2,048 tokens, QLoRA r=16."""
    return parse_spec({"model": {"source": "models/m"}, "dataset": {"source": "data.jsonl"}})


@pytest.mark.parametrize(
    ("shape", "memory_gib", "requested", "expected"),
    [
        ("llama-3.1-8b", 80, "auto", ("fast", 4, 2, False, False)),
        ("llama-3.1-8b", 24, "auto", ("lean", 4, 2, True, True)),  # deep model: offload, double micro-batch
        ("llama-3.2-1b", 80, "lean", ("lean", 2, 4, True, False)),  # shallow: offloading would not pay
        ("llama-3.2-1b", 80, "auto", ("fast", 8, 1, False, False)),
        ("llama-3.1-8b", 24, "fast", ("lean", 4, 2, True, True)),  # fast does not fit: lean, with the reason
    ],
)
def test_profile_choice_keeps_the_rows_per_step(
    shape: str, memory_gib: int, requested: str, expected: tuple[str, int, int, bool, bool]
) -> None:
    spec = default_spec()  # batch 2 × accumulation 4, 2,048 tokens, QLoRA r=16
    p = profile.choose(spec, "qlora", est.known_shape(shape), True, memory_gib * 2**30, {}, requested)
    assert (p.name, p.micro_batch, p.grad_accum, p.gradient_checkpointing, p.offload_activations) == expected
    assert p.micro_batch * p.grad_accum == 8  # the optimizer step is unchanged
    assert p.reason and p.estimated_bytes
    if p.name == "fast":
        assert p.estimated_bytes <= 0.9 * memory_gib * 2**30


def test_cpu_runs_keep_the_configured_settings() -> None:
    p = profile.choose(
        default_spec(), "qlora", est.known_shape("llama-3.1-8b"), False, 64 * 2**30, {}, "fast"
    )
    assert (p.name, p.micro_batch, p.grad_accum, p.gradient_checkpointing) == ("configured", 2, 4, True)


def test_placement_memory_takes_precedence_over_the_device() -> None:
    placed = {"gpuMemoryBytes": 24 * 2**30}
    p = profile.choose(
        default_spec(), "qlora", est.known_shape("llama-3.1-8b"), True, 80 * 2**30, placed, "auto"
    )
    assert p.name == "lean" and "24 GiB GPU (placement)" in p.reason


@pytest.mark.parametrize(("host_gib", "offloads"), [(64, True), (3, False), (None, True)])
def test_lean_offloads_only_when_the_host_has_room(host_gib: int | None, offloads: bool) -> None:
    # 8B on a 24 GiB GPU: lean, and offloading micro-batch 4's layer inputs pins 2.0 GiB of host memory
    host = None if host_gib is None else host_gib * 2**30
    spec = default_spec()
    p = profile.choose(spec, "qlora", est.known_shape("llama-3.1-8b"), True, 24 * 2**30, {}, "auto", host)
    assert p.name == "lean" and p.gradient_checkpointing
    assert p.offload_activations is offloads
    assert (p.micro_batch, p.grad_accum) == ((4, 2) if offloads else (2, 4))
    if offloads:
        assert "(2.0 GiB pinned)" in p.reason
    else:
        assert "checkpoints stay on the GPU" in p.reason and "pin 2.0 GiB" in p.reason
        assert "3.0 GiB free" in p.reason


def _fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


MEMINFO = "MemTotal:       65536000 kB\nMemAvailable:   8388608 kB\n"  # 8 GiB available


def test_host_memory_is_the_cgroup_room_or_the_machines(tmp_path: Path) -> None:
    v2 = _fake_root(
        tmp_path / "v2",
        {"sys/fs/cgroup/memory.max": "4294967296\n", "sys/fs/cgroup/memory.current": "1073741824\n",
         "proc/meminfo": MEMINFO},
    )  # fmt: skip
    assert profile.available_host_memory(v2) == 3 * 2**30  # limit 4 GiB, 1 GiB used
    unlimited = _fake_root(tmp_path / "max", {"sys/fs/cgroup/memory.max": "max\n", "proc/meminfo": MEMINFO})
    assert profile.available_host_memory(unlimited) == 8 * 2**30
    v1 = _fake_root(
        tmp_path / "v1",
        {"sys/fs/cgroup/memory/memory.limit_in_bytes": str(16 * 2**30),
         "sys/fs/cgroup/memory/memory.usage_in_bytes": str(2 * 2**30), "proc/meminfo": MEMINFO},
    )  # fmt: skip
    assert profile.available_host_memory(v1) == 8 * 2**30  # the machine has less than the cgroup allows
    assert profile.available_host_memory(tmp_path / "nothing") is None
