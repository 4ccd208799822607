"""Estimator calibration grid: peak GPU memory of kubeft's trainer (its real code path) per setting.

    python bench/grid.py --shape llama-1b --points qlora:512:4:1,qlora:4096:1:0 --out DIR

A point is ``method:seq_len:micro_batch:checkpointing`` (checkpointing 1 = on, 2 = on with the
layer inputs offloaded to host memory, 0 = off). Each point trains 2 optimizer steps (accumulation 1)
on packed rows filled to ``seq_len``, in this process one after the other, and records the peak
reserved by PyTorch's allocator and the peak device memory NVML reports over the process's
baseline (context included). ``estimator_grid.json`` gets one row per point with the estimator's
prediction, so tests can replay it (tests/operator/test_estimate_grid.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "trainer_image")]

import measure  # noqa: E402
import trainers  # noqa: E402
import workload  # noqa: E402


def setup_for(method: str, seq: int, mb: int, ckpt: int) -> Any:
    from kubeft import estimate as est

    return est.Setup(
        method=method,  # type: ignore[arg-type]
        micro_batch=mb,
        seq_len=seq,
        gradient_checkpointing=ckpt > 0,
        offload_activations=ckpt == 2,
        padding_free=True,
        fused_cross_entropy=True,
        optimizer="adamw_8bit",
        lora_r=16,
    )


def run_point(
    shape: str, model_dir: Path, method: str, seq: int, mb: int, ckpt: int, nvml: Any
) -> dict[str, Any]:
    import torch
    import yaml
    from kubeft_trainer.config import load_config
    from kubeft_trainer.status import StatusReporter
    from kubeft_trainer.train import Recipe

    from kubeft import estimate as est

    vocab = workload.SHAPES[shape]["vocab_size"]
    steps = 2
    seqs = workload.samples(steps * mb * seq // 300 + 16, seq, vocab, seed=mb * 7 + seq)
    work = Path("/tmp/kubeft-bench/grid") / f"{shape}-{method}-{seq}-{mb}-{ckpt}"
    a = argparse.Namespace(
        model_dir=model_dir, method=method, batch=mb, grad_accum=1, max_len=seq, steps=steps
    )
    data = workload.write_text_jsonl(seqs, work / "data.jsonl")
    spec = trainers.kubeft_spec(a, data)
    spec["hyperparameters"]["gradientCheckpointing"] = ckpt > 0
    (work / "job.yaml").write_text(yaml.safe_dump(spec))
    os.environ["KUBEFT_TRAINER_PROFILE"] = "configured"
    cfg = load_config(work / "job.yaml", [], env={"KUBEFT_WORKDIR": str(work / "run")})
    cfg.runtime.metrics_port = None
    gpu = torch.cuda.is_available()
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    nvml.peak = 0
    t0 = time.time()
    recipe = Recipe(cfg, status=StatusReporter())
    row: dict[str, Any] = {"shape": shape, "method": method, "seq_len": seq, "micro_batch": mb,
                           "gradient_checkpointing": ckpt > 0, "offload_activations": ckpt == 2}  # fmt: skip
    try:
        recipe.setup()
        if ckpt == 2:  # the configured profile does not offload; switch it on for this point
            recipe.trainer.args.activation_offloading = True
            from trl.models.activation_offloading import get_act_offloading_ctx_manager

            recipe.trainer.maybe_activation_offload_context = get_act_offloading_ctx_manager(
                model=recipe.trainer.model
            )
        recipe.train()
        if not gpu:
            raise RuntimeError("no GPU: nothing measured")
        torch.cuda.synchronize()
        row["measured_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
        row["measured_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        time.sleep(0.1)
        row["measured_nvml_bytes"] = nvml.peak_bytes
    except torch.OutOfMemoryError as exc:
        row["oom"] = True
        row["error"] = str(exc).splitlines()[0][:200]
    except RuntimeError as exc:
        row["error"] = str(exc).splitlines()[0][:200]
    finally:
        recipe.trainer = None
        recipe.uploader = None
        del recipe
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    shp = est.ModelShape.from_file(model_dir)
    e = est.estimate(shp, setup_for(method, seq, mb, ckpt))
    row["predicted_bytes"] = e.total
    row["predicted_breakdown"] = e.breakdown()
    row["seconds"] = round(time.time() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", required=True)
    p.add_argument("--points", required=True, help="method:seq:micro_batch:ckpt,...")
    p.add_argument("--models-root", default="/tmp/kubeft-bench/models")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    nvml = measure.NvmlSampler().start()  # baseline before CUDA is touched
    import torch

    if torch.cuda.is_available():
        torch.cuda.init()
    context = nvml.now_bytes()
    model_dir = workload.make_model_dir(a.shape, Path(a.models_root))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"grid-{a.shape}.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text())["points"] if path.exists() else []
    for spec in a.points.split(","):
        method, seq, mb, ckpt = spec.split(":")
        row = run_point(a.shape, model_dir, method, int(seq), int(mb), int(ckpt), nvml)
        row["cuda_context_bytes"] = context
        rows.append(row)
        meas = row.get("measured_nvml_bytes")
        print(
            f"GRID {a.shape} {spec}: predicted {row['predicted_bytes'] / 2**30:.2f} GiB, "
            f"measured nvml {meas / 2**30 if meas else float('nan'):.2f} GiB, "
            f"reserved {row.get('measured_reserved_bytes', 0) / 2**30:.2f} GiB {row.get('error', '')}",
            flush=True,
        )
        path.write_text(
            json.dumps(
                {
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "versions": measure.versions(),
                    "points": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
