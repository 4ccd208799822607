"""Estimator calibration grid: peak GPU memory of kubeft's trainer (its real code path) per setting.

    python bench/grid.py run --shape llama-1b --points qlora:512:4:1,qlora:4096:1:0 --out DIR
    python bench/grid.py collect DIR [MORE ...] --into bench/results/estimator_grid.json

A point is ``method:seq_len:micro_batch:checkpointing`` (checkpointing 1 = on, 2 = on with the
layer inputs offloaded to host memory, 0 = off). Each point runs in a process of its own (clean
CUDA context, clean peak counters, an NVML baseline taken before CUDA starts) and trains 2
optimizer steps (accumulation 1) on rows of exactly ``seq_len`` tokens (checked). It records the peak
reserved and allocated by PyTorch's allocator and the peak device memory NVML reports over the
process's baseline (CUDA context included: what the node must hold), next to the estimator's
prediction. ``run`` appends the rows to ``DIR/grid-<shape>.json`` as they finish (a point that
runs out of memory is recorded as such, and the next one starts in a fresh process).

``collect`` merges grid files (and an earlier ``estimator_grid.json``) into the committed grid
that tests/operator/test_estimate_grid.py replays and bench/fit.py fits: the measured points, one
per setting and GPU model (the later measurement wins), and the ones that measured nothing under
``not_measured`` with their errors.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "trainer_image")]

import fit  # noqa: E402
import measure  # noqa: E402
import trainers  # noqa: E402
import workload  # noqa: E402

STEPS = 2
MIN_FILL = 0.98  # micro-batches hold at least this share of micro_batch × seq_len tokens (full rows)
MEASURED = (
    "peak device memory used (NVML, CUDA context included) over the process's baseline, while "
    "kubeft's trainer trained the bench's packed synthetic samples (rows filled to seq_len), "
    "one process per point"
)


def parse_point(spec: str) -> tuple[str, int, int, int]:
    """``qlora:2048:4:1`` → (method, seq_len, micro_batch, checkpointing 0/1/2)."""
    try:
        method, seq, mb, ckpt = spec.split(":")
        out = (method, int(seq), int(mb), int(ckpt))
    except ValueError:
        raise SystemExit(f"bad point {spec!r}: expected method:seq_len:micro_batch:ckpt") from None
    if method not in ("qlora", "lora", "full") or out[3] not in (0, 1, 2) or out[1] < 1 or out[2] < 1:
        raise SystemExit(f"bad point {spec!r}: method qlora|lora|full, ckpt 0|1|2, positive sizes")
    return out


def row_for(shape: str, method: str, seq: int, mb: int, ckpt: int) -> dict[str, Any]:
    """The point's settings as a grid row (the fields fit.point_setup reads)."""
    return {
        "shape": workload.ESTIMATOR_NAMES.get(shape, shape),
        "method": method,
        "seq_len": seq,
        "micro_batch": mb,
        "gradient_checkpointing": ckpt > 0,
        "offload_activations": ckpt == 2,
        "optimizer": "adamw_8bit",
        "lora_r": 16,
        "fused_cross_entropy": True,  # TRL's chunked LM head loss, which kubeft's trainer always uses
    }


def measure_point(shape: str, model_dir: Path, spec: str) -> dict[str, Any]:
    """Trains one point in this process and returns its row (called in a fresh process)."""
    nvml = measure.NvmlSampler().start()  # baseline before CUDA is touched
    import torch
    import yaml
    from kubeft_trainer.config import load_config
    from kubeft_trainer.status import StatusReporter
    from kubeft_trainer.train import Recipe

    method, seq, mb, ckpt = parse_point(spec)
    gpu = torch.cuda.is_available()
    row = row_for(shape, method, seq, mb, ckpt)
    row["bench_shape"] = shape
    row["cuda_context_bytes"] = measure.cuda_context_bytes(nvml)
    if gpu:
        row["gpu"] = torch.cuda.get_device_name(0)
    workload.keep_word_level_tokenizer()
    workload.check_tokenizer(model_dir)
    vocab = workload.SHAPES[shape]["vocab_size"]
    seqs = workload.samples(STEPS * mb + 4, seq, vocab, seed=mb * 7 + seq, full_rows=True)
    work = Path("/tmp/kubeft-bench/grid") / f"{shape}-{method}-{seq}-{mb}-{ckpt}"
    a = argparse.Namespace(
        model_dir=model_dir, method=method, batch=mb, grad_accum=1, max_len=seq, steps=STEPS, seed=0,
        lr=trainers.LR,
    )  # fmt: skip
    data = workload.write_text_jsonl(seqs, work / "data.jsonl")
    spec_doc = trainers.kubeft_spec(a, data)
    spec_doc["hyperparameters"]["gradientCheckpointing"] = ckpt > 0
    (work / "job.yaml").write_text(yaml.safe_dump(spec_doc))
    os.environ["KUBEFT_TRAINER_PROFILE"] = "configured"
    cfg = load_config(work / "job.yaml", [], env={"KUBEFT_WORKDIR": str(work / "run")})
    cfg.runtime.metrics_port = None
    cfg.runtime.report_status = False
    t0 = time.time()
    recipe = Recipe(cfg, status=StatusReporter())
    try:
        recipe.setup()
        if ckpt == 2:  # the configured profile does not offload; switch it on for this point
            recipe.trainer.args.activation_offloading = True
            from trl.models.activation_offloading import get_act_offloading_ctx_manager

            recipe.trainer.maybe_activation_offload_context = get_act_offloading_ctx_manager(
                model=recipe.trainer.model
            )
        recipe.train()
        # every micro-batch must be (nearly) full: a tokenizer that loses words once made the
        # Qwen points train one-token samples and measure no activations
        row["tokens_per_micro_batch"] = int(recipe.trainer.state.num_input_tokens_seen) // STEPS
        fill = row["tokens_per_micro_batch"] / (mb * seq)
        if fill < MIN_FILL:
            raise RuntimeError(f"micro-batches were {fill:.0%} full (expected at least {MIN_FILL:.0%})")
        if not gpu:
            raise RuntimeError("no GPU: nothing measured")
        torch.cuda.synchronize()
        row["measured_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
        row["measured_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        time.sleep(0.1)  # one more NVML sample
        row["measured_nvml_bytes"] = nvml.stop()
    except torch.OutOfMemoryError as exc:
        row["oom"] = True
        row["error"] = str(exc).splitlines()[0][:200]
    except RuntimeError as exc:
        row["error"] = str(exc).splitlines()[0][:200]
    finally:
        recipe.trainer = None
        gc.collect()
    row["seconds"] = round(time.time() - t0, 1)
    return row


def predict(row: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    from kubeft import estimate as est

    e = est.estimate(est.ModelShape.from_file(model_dir), fit.point_setup(row))
    return {"predicted_bytes": e.total, "predicted_breakdown": e.breakdown()}


def run(a: argparse.Namespace) -> int:
    """Every point of one shape, each in its own process; rows appended to DIR/grid-<shape>.json."""
    measure.pin_one_gpu()  # the point processes inherit it; NVML reads the same device
    model_dir = workload.make_model_dir(a.shape, Path(a.models_root))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"grid-{a.shape}.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text())["points"] if path.exists() else []
    specs = [s for s in a.points.split(",") if s]
    for spec in specs:
        parse_point(spec)  # refuse a bad list before any GPU time is spent
    for spec in specs:
        result = out / f"point-{a.shape}-{spec.replace(':', '-')}.json"
        log = out / f"point-{a.shape}-{spec.replace(':', '-')}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "point", "--shape", a.shape,
               "--model-dir", str(model_dir), "--point", spec, "--result", str(result)]  # fmt: skip
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=a.point_timeout)
        if proc.returncode == 0 and result.exists():
            row = json.loads(result.read_text())
        else:
            method, seq, mb, ckpt = parse_point(spec)
            output = log.read_text()
            lines = output.strip().splitlines() or ["(no output)"]
            row = row_for(a.shape, method, seq, mb, ckpt) | {"bench_shape": a.shape}
            row["error"] = f"exit {proc.returncode}: {lines[-1][:200]}"
            row["oom"] = "OutOfMemoryError" in output
        row.update(predict(row, model_dir))
        rows.append(row)
        meas = row.get("measured_nvml_bytes")
        err = f"{(row['predicted_bytes'] - meas) / meas:+.1%}" if meas else "—"
        print(
            f"GRID {a.shape} {spec}: predicted {row['predicted_bytes'] / 2**30:.2f} GiB, "
            f"measured nvml {meas / 2**30 if meas else float('nan'):.2f} GiB ({err}), "
            f"reserved {row.get('measured_reserved_bytes', 0) / 2**30:.2f} GiB, {row.get('seconds', '?')}s "
            f"{row.get('error', '')}",
            flush=True,
        )
        # the GPU any point of this run measured on (a failed point does not know it)
        gpu = next((r["gpu"] for r in rows if r.get("gpu")), "cpu")
        doc = {"gpu": gpu, "versions": measure.versions(), "points": rows}
        path.write_text(json.dumps(doc, indent=1))
    return 0


def collect(a: argparse.Namespace) -> int:
    """Merges grid files into the committed grid (see the module docstring).

    Points of several GPU models live side by side: each row names its GPU, and one setting is
    kept once per GPU (the later measurement wins).
    """
    files: list[Path] = []
    for src in a.sources:
        p = Path(src)
        files += sorted(p.glob("grid-*.json")) if p.is_dir() else [p]
    if not files:
        print(f"no grid files in {' '.join(a.sources)}", file=sys.stderr)
        return 2
    by_id: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    versions: dict[str, dict[str, Any]] = {}
    into = Path(a.into)
    old = json.loads(into.read_text()) if into.exists() else {}
    for f in files:
        doc = json.loads(f.read_text())
        doc_gpu = doc.get("gpu") if doc.get("gpu") not in (None, "cpu") else None
        for row in doc.get("points", []):
            row = {k: v for k, v in row.items() if k not in ("predicted_bytes", "predicted_breakdown")}
            row.setdefault("source", str(f))
            if not row.get("gpu") and doc_gpu:
                row["gpu"] = doc_gpu
            if row.get("gpu") and doc.get("versions"):
                versions[str(row["gpu"])] = doc["versions"]
            key = fit.point_id(row)
            if fit.skip_reason(row) is None:
                by_id[key] = row  # a later measurement of the same setting on the same GPU wins
                failed.pop(key, None)
            elif key not in by_id:
                failed[key] = {k: row.get(k) for k in ("gpu", "shape", "method", "seq_len", "micro_batch",
                                                        "gradient_checkpointing", "offload_activations",
                                                        "error", "oom", "source")}  # fmt: skip
    doc = {
        "gpus": sorted({str(r["gpu"]) for r in by_id.values() if r.get("gpu")}),
        "measured": MEASURED,
        "note": a.note or old.get("note", ""),
        "versions": versions,  # per GPU: the packages each GPU's points were measured with
        "points": sorted(by_id.values(), key=fit.point_id),
        "not_measured": sorted(failed.values(), key=fit.point_id),
    }
    into.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{into}: {len(by_id)} measured points on {', '.join(doc['gpus']) or 'no GPU'}, "
          f"{len(failed)} not measured (from {len(files)} files)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure points of one shape (each in its own process)")
    r.add_argument("--shape", required=True, choices=list(workload.SHAPES))
    r.add_argument("--points", required=True, help="method:seq:micro_batch:ckpt,...")
    r.add_argument("--models-root", default="/tmp/kubeft-bench/models")
    r.add_argument("--out", required=True)
    r.add_argument("--point-timeout", type=int, default=600)
    pt = sub.add_parser("point", help="(internal) measure one point in this process")
    pt.add_argument("--shape", required=True)
    pt.add_argument("--model-dir", type=Path, required=True)
    pt.add_argument("--point", required=True)
    pt.add_argument("--result", type=Path, required=True)
    c = sub.add_parser("collect", help="merge grid files into the committed grid")
    c.add_argument("sources", nargs="+", help="grid-*.json files, folders of them, or an estimator_grid.json")
    c.add_argument("--into", default=str(HERE / "results" / "estimator_grid.json"))
    c.add_argument("--note", default="")
    a = p.parse_args(argv)
    if a.cmd == "run":
        return run(a)
    if a.cmd == "point":
        logging.basicConfig(level=logging.WARNING)
        row = measure_point(a.shape, a.model_dir, a.point)
        a.result.write_text(json.dumps(row, indent=1))
        return 0
    return collect(a)


if __name__ == "__main__":
    sys.exit(main())
