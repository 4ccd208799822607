"""Scaling on a 2-GPU machine: kubeft's trainer on 1 GPU and under torchrun on 2, side by side.

    python bench/dist.py --out DIR [--shape llama-8b] [--points ddp-qlora,fsdp-full] [--steps 8]

Points, each measured on 1 GPU and on 2 GPUs in the same run, with the same global batch (so that
both see the same samples in the same optimizer steps):

* ``ddp-qlora``: QLoRA (NF4, r=16 all-linear, adamw_8bit), DDP: tokens/s (target ≥ 1.85× on 2);
* ``fsdp-full``: full fine-tuning (adamw_torch, pure bf16), FSDP: per-GPU peak (target ≤ 0.6× on 2).

Each run is the real trainer (``python -m kubeft_trainer``; on 2 GPUs with KUBEFT_NPROC_PER_NODE=2,
so it starts torchrun itself, as in a pod) on a random-initialised model of a real shape
(bench/workload.py) and the bench's learnable samples, profile ``configured`` (the spec's
micro-batch and checkpointing, no automatic choice that could differ between the two). Measured:
real tokens/s (median over the steps after the first two, from rank 0's log), the NVML peak of
each GPU over the run (used memory above its idle baseline, CUDA context and NCCL included),
the loss of the last steps, and the estimator's prediction
(kubeft.estimate with the run's world size and strategy). A run is stopped once its last step is
logged: its final checkpoint and export (tens of GB for a full 8B model) are not measured. Writes
DIR/dist.json and DIR/dist.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "trainer_image"), str(HERE)]

import workload  # noqa: E402

from kubeft import estimate as est  # noqa: E402
from kubeft.procs import kill_tree  # noqa: E402

GIB = 2**30
STEP = re.compile(r"step (\d+)/\d+ loss ([0-9.]+) .*tokens/s (\d+)")

POINTS: dict[str, dict[str, Any]] = {
    # per-GPU micro-batch; accumulation on 1 GPU (halved on 2: the same global batch)
    "ddp-qlora": {"method": "qlora", "strategy": "ddp", "optimizer": "adamw_8bit", "micro": 4, "accum": 4,
                  "seq": 2048, "ckpt": True, "lr": 2e-4},
    "fsdp-full": {"method": "full", "strategy": "fsdp", "optimizer": "adamw_torch", "micro": 2, "accum": 2,
                  "seq": 2048, "ckpt": True, "lr": 1e-5},
}  # fmt: skip


class Nvml:
    """Samples every GPU's used memory; peak above the baseline at start, per GPU."""

    def __init__(self, interval: float = 0.05) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self.base = [self._used(h) for h in self.handles]
        self.peak = list(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.interval = interval

    def _used(self, h: Any) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(h).used)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, h in enumerate(self.handles):
                self.peak[i] = max(self.peak[i], self._used(h))
            time.sleep(0.05)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return [p - b for p, b in zip(self.peak, self.base, strict=True)]


def spec_for(
    point: dict[str, Any], model_dir: Path, data: Path, gpus: int, steps: int, store: Path
) -> dict[str, Any]:
    accum = point["accum"] // gpus
    hp: dict[str, Any] = {
        "batchSize": point["micro"],
        "gradientAccumulation": accum,
        "maxSeqLength": point["seq"],
        "maxSteps": steps,
        "learningRate": point["lr"],
        "lrScheduler": "constant",
        "warmupRatio": 0.0,
        "optimizer": point["optimizer"],
        "gradientCheckpointing": point["ckpt"],
        "packing": True,
        "seed": 0,
    }
    if point["method"] != "full":
        hp["lora"] = {"r": 16, "alpha": 16, "dropout": 0.0, "targetModules": "all-linear"}
    spec: dict[str, Any] = {
        "model": {"source": str(model_dir)},
        "method": point["method"],
        "dataset": {"source": str(data), "format": "text", "trainOn": "all"},
        "hyperparameters": hp,
        "resources": {"gpus": gpus},
        "storage": {"endpoint": store.as_uri(), "bucket": "kubeft"},
        "checkpoints": {"everySteps": 100000, "keep": 1},
        "export": {"formats": ["merged-16bit" if point["method"] == "full" else "adapter"]},
    }
    if gpus > 1:
        spec["distributed"] = {"strategy": point["strategy"]}
    return spec


def predict(shape: str, point: dict[str, Any], gpus: int) -> int:
    s = est.Setup(
        method=point["method"],
        micro_batch=point["micro"],
        seq_len=point["seq"],
        gradient_checkpointing=point["ckpt"],
        fused_cross_entropy=True,
        optimizer=point["optimizer"],
    )
    s = replace(s, world_size=gpus, strategy=point["strategy"] if gpus > 1 else "ddp")
    return est.estimate(est.ModelShape.from_config(workload.SHAPES[shape]), s).total


def run_one(
    name: str, point: dict[str, Any], gpus: int, a: argparse.Namespace, model_dir: Path, data: Path
) -> dict[str, Any]:
    import yaml

    tag = f"{name}-{gpus}gpu"
    work = Path(a.out) / tag
    work.mkdir(parents=True, exist_ok=True)
    job = work / "job.yaml"
    spec = spec_for(point, model_dir, data, gpus, a.steps, work / "store")
    manifest = {"apiVersion": "kubeft.io/v1alpha1", "kind": "FineTuneJob", "spec": spec}
    manifest["metadata"] = {"name": tag, "namespace": "bench"}
    job.write_text(yaml.safe_dump(manifest))
    env = {
        **os.environ,
        "KUBEFT_TRAINER_PROFILE": "configured",
        "KUBEFT_TERMINATION_LOG": str(work / "termination"),
    }
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus)) if a.cuda else ""
    if gpus > 1:
        env["KUBEFT_NPROC_PER_NODE"] = str(gpus)
    paths = [str(REPO), str(REPO / "trainer_image"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    cmd = [sys.executable, "-m", "kubeft_trainer", "--config", str(job), "--workdir", str(work / "run"),
           "--no-status", "--metrics-port", "0"]  # fmt: skip
    nvml = Nvml() if a.cuda else None
    t0 = time.monotonic()
    path = work / "trainer.log"
    last = f"step {a.steps}/{a.steps} loss"
    with path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        # the measurement ends with the last step: the final checkpoint and export of a full 8B model
        # (tens of GB written) are not what is measured, so the run is stopped there
        while proc.poll() is None and time.monotonic() - t0 < a.timeout:
            if last in path.read_text():
                time.sleep(1.0)
                kill_tree(proc.pid)
                break
            time.sleep(0.5)
        else:
            kill_tree(proc.pid)
        rc = proc.wait()
    wall = time.monotonic() - t0
    peaks = nvml.stop() if nvml is not None else []
    text = path.read_text()
    done = last in text
    steps: dict[int, tuple[float, float]] = {}
    for line in text.splitlines():
        m = STEP.search(line)
        if m and ("[rank " not in line or "[rank 0]" in line):  # rank 0's log (every rank logs the same loss)
            steps[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    summary: dict[str, Any] = {}
    for line in text.splitlines():
        m = re.search(r"global batch (\d+) rows", line)
        if m:
            summary["globalBatch"] = int(m.group(1))
    timed = [tps for s, (_, tps) in sorted(steps.items()) if s > 2]
    losses = [loss for _, (loss, _) in sorted(steps.items())]
    return {
        "point": name,
        "gpus": gpus,
        "rc": 0 if done else rc,
        "wall_seconds": round(wall, 1),
        "tokens_per_second": statistics.median(timed) if timed else None,
        "losses": losses,
        "final_loss": statistics.mean(losses[-3:]) if len(losses) >= 3 else None,
        "nvml_peak_bytes_per_gpu": peaks[:gpus],
        "estimate_bytes": predict(a.shape, point, gpus),
        "global_batch": summary.get("globalBatch"),
        "summary": summary,
    }


def table(results: list[dict[str, Any]], shape: str) -> str:
    def g(n: Any) -> str:
        return f"{n / GIB:.1f}" if isinstance(n, (int, float)) else "—"

    lines = [
        "| point | GPUs | global batch | tokens/s | × 1 GPU | NVML peak per GPU (GiB) "
        "| estimate (GiB) | peak / 1 GPU | loss (last 3) | rc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["point"], r["gpus"]): r for r in results}
    for r in results:
        one = by.get((r["point"], 1))
        speed = peak = "—"
        if one and r["gpus"] > 1:
            if r["tokens_per_second"] and one["tokens_per_second"]:
                speed = f"{r['tokens_per_second'] / one['tokens_per_second']:.2f}×"
            if max(r["nvml_peak_bytes_per_gpu"] or [0]) and max(one["nvml_peak_bytes_per_gpu"] or [0]):
                peak = f"{max(r['nvml_peak_bytes_per_gpu']) / max(one['nvml_peak_bytes_per_gpu']):.2f}×"
        per_gpu = " / ".join(g(p) for p in r["nvml_peak_bytes_per_gpu"]) or "—"
        loss = f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "—"
        tps = f"{r['tokens_per_second']:.0f}" if r["tokens_per_second"] else "—"
        lines.append(
            f"| {r['point']} ({shape}) | {r['gpus']} | {r['global_batch'] or '—'} | {tps} | {speed} "
            f"| {per_gpu} | {g(r['estimate_bytes'])} | {peak} | {loss} | {r['rc']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shape", default="llama-8b", choices=list(workload.SHAPES))
    p.add_argument("--points", default="ddp-qlora,fsdp-full")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--models-root", default="/tmp/kubeft-bench/models")
    p.add_argument("--gpus", default="1,2", help="world sizes to run each point on (comma-separated)")
    a = p.parse_args(argv)
    import torch
    from measure import versions

    a.cuda = torch.cuda.is_available()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    workload.keep_word_level_tokenizer()
    model_dir = workload.make_model_dir(a.shape, Path(a.models_root))
    vocab = int(workload.SHAPES[a.shape]["vocab_size"])
    most = max(POINTS[n]["micro"] * POINTS[n]["accum"] for n in a.points.split(","))
    seqs = workload.samples(most * a.steps * 8, 2048, vocab, subvocab=256)
    data = workload.write_text_jsonl(seqs, out / "data" / "train.jsonl")
    meta = {
        "command": "python bench/dist.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "gpu": torch.cuda.get_device_name(0) if a.cuda else "cpu",
        "gpus": torch.cuda.device_count() if a.cuda else 0,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
        "steps": a.steps,
        "points": {n: POINTS[n] for n in a.points.split(",")},
    }
    results = []
    for name in a.points.split(","):
        for gpus in [int(g) for g in a.gpus.split(",")]:
            r = run_one(name, POINTS[name], gpus, a, model_dir, data)
            print(json.dumps({k: v for k, v in r.items() if k not in ("summary", "losses")}), flush=True)
            results.append(r)
            (out / "dist.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = [
        f"# kubeft scaling: 1 vs 2 GPUs ({meta['gpu']}, {meta['date']})",
        "",
        f"`{meta['command']}` — {a.steps} optimizer steps per run, same global batch on 1 and 2 GPUs.",
        "",
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        table(results, a.shape),
        "",
    ]
    (out / "dist.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
