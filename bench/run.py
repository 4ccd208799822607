"""kubeft's training benchmark: the plain recipe, the TRL peer and kubeft's trainer, same model, same data.

    python bench/run.py --shapes llama-1b,llama-8b --steps 12 --out bench/results/h100

For each model shape it creates a random-initialised model on the GPU (saved with
save_pretrained; every trainer loads it with from_pretrained), then runs each trainer in its
own process (clean CUDA context, clean peak counters, NVML baseline) on the same synthetic
samples, and writes ``results.json`` and ``results.md`` (ratios against the TRL peer).

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "trainer_image")]

# label: (trainer, environment, spec overrides, flags)
VARIANTS: dict[str, tuple[str, dict[str, str], list[str], dict[str, Any]]] = {
    "plain": ("plain", {}, [], {}),
    "peer": ("peer", {}, [], {}),
    "kubeft": ("kubeft", {}, [], {}),  # the trainer's own choice (auto) from the placement
    "kubeft-lean": ("kubeft", {"KUBEFT_TRAINER_PROFILE": "lean"}, [], {}),
    "kubeft-fast": ("kubeft", {"KUBEFT_TRAINER_PROFILE": "fast"}, [], {}),
    "kubeft-configured": ("kubeft", {"KUBEFT_TRAINER_PROFILE": "configured"}, [], {}),
}  # fmt: skip


def num_samples(steps: int, batch: int, grad_accum: int, max_len: int) -> int:
    # packed rows are ~full; the mean sample is ~550 tokens: enough samples for every step, with margin
    return math.ceil(steps * batch * grad_accum * max_len / 450) + 32


def make_models(shapes: list[str], root: Path) -> None:
    import workload

    for shape in shapes:
        t0 = time.time()
        d = workload.make_model_dir(shape, root)
        print(f"model {shape}: {d} ({time.time() - t0:.0f}s)", flush=True)


def run_worker(a: argparse.Namespace) -> int:
    import logging

    import trainers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    res = trainers.worker(a)
    Path(a.result).write_text(json.dumps(res, indent=1))
    return 0


def _gib(n: float | None) -> str:
    """Bytes as GiB; "—" where there is nothing to measure (a CPU smoke run has no GPU memory)."""
    return _fmt(None if n is None else n / 2**30)


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table per shape; ratios against the `peer` row of the same shape."""
    lines = []
    shapes = list(dict.fromkeys(r["shape"] for r in results))
    for shape in shapes:
        rows = [r for r in results if r["shape"] == shape]
        peer = next((r for r in rows if r["label"] == "peer" and "error" not in r), None)
        lines += [
            f"### {shape}",
            "",
            "| trainer | real tokens/s | × peer tok/s | peak alloc GiB | peak reserved GiB | NVML peak GiB "
            "| × peer reserved | MFU | train loss (last 3) | held-out loss | micro-batch × GA, ckpt |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['label']} | failed: {r['error'][:120]} |" + " |" * 9)
                continue
            ratio = r["tokens_per_s"] / peer["tokens_per_s"] if peer and peer["tokens_per_s"] else None
            mem_ratio = (
                r["peak_reserved_bytes"] / peer["peak_reserved_bytes"]
                if peer and peer.get("peak_reserved_bytes")
                else None
            )
            ka = r.get("kubeft_args") or {}
            setup = (
                f"{ka['per_device_train_batch_size']}×{ka['gradient_accumulation_steps']}, "
                f"{'on' if ka['gradient_checkpointing'] else 'off'}"
                if ka
                else "2×4, on"
            )
            lines.append(
                f"| {r['label']} | {_fmt(r['tokens_per_s'], 0)} | {_fmt(ratio)} "
                f"| {_gib(r.get('peak_allocated_bytes'))} | {_gib(r.get('peak_reserved_bytes'))} "
                f"| {_gib(r.get('nvml_peak_bytes'))} | {_fmt(mem_ratio)} | {_fmt(r['mfu'], 3)} "
                f"| {_fmt(r['final_loss'], 3)} | {_fmt(r['held_out_loss'], 3)} | {setup} |"
            )
        lines.append("")
    return "\n".join(lines)


def orchestrate(a: argparse.Namespace) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Path(a.models_root)
    shapes = [s for s in a.shapes.split(",") if s]
    labels = [v for v in a.trainers.split(",") if v]
    unknown = [v for v in labels if v not in VARIANTS]
    if unknown:
        print(f"unknown trainers {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    py = sys.executable
    me = str(Path(__file__).resolve())
    subprocess.run([py, me, "make-models", "--shapes", a.shapes, "--models-root", str(models)], check=True)
    results: list[dict[str, Any]] = []
    results_file = out / "results.json"
    meta: dict[str, Any] = {"command": a.command_line, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for shape in shapes:
        for label in labels:
            trainer, env, sets, _flags = VARIANTS[label]
            res_file = out / f"{shape}-{label}.json"
            log_file = out / f"{shape}-{label}.log"
            cmd = [
                py, me, "worker", "--trainer", trainer, "--label", label, "--shape", shape,
                "--model-dir", str(models / shape), "--steps", str(a.steps), "--warmup", str(a.warmup),
                "--max-len", str(a.max_len), "--batch", str(a.batch), "--grad-accum", str(a.grad_accum),
                "--num-samples", str(num_samples(a.steps, a.batch, a.grad_accum, a.max_len)),
                "--eval-samples", str(a.eval_samples), "--result", str(res_file),
                "--workdir", f"/tmp/kubeft-bench/work/{shape}-{label}",
            ]  # fmt: skip
            for s in sets:
                cmd += ["--set", s]
            for k, v in env.items():
                cmd += ["--env", f"{k}={v}"]
            if label in (a.profile or "").split(","):
                cmd += ["--profile", str(out / f"{shape}-{label}.profile.txt")]
            print(f"== {shape} {label}", flush=True)
            t0 = time.time()
            with log_file.open("w") as log:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=a.worker_timeout)
            if proc.returncode == 0 and res_file.exists():
                res = json.loads(res_file.read_text())
            else:
                tail = log_file.read_text()[-1500:]
                res = {
                    "label": label,
                    "shape": shape,
                    "trainer": trainer,
                    "error": tail.strip().splitlines()[-1],
                }
                print(tail, flush=True)
            res["wall_seconds"] = round(time.time() - t0, 1)
            results.append(res)
            keys = ("label", "tokens_per_s", "peak_reserved_bytes", "mfu", "final_loss", "held_out_loss",
                    "wall_seconds", "error")  # fmt: skip
            print(json.dumps({k: res.get(k) for k in keys}), flush=True)
            ok = [r for r in results if "error" not in r]
            meta["gpu"] = ok[0].get("gpu") if ok else None
            meta["versions"] = _versions_from_logs(out)
            results_file.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
            (out / "results.md").write_text(header(meta) + table(results))
    print(header(meta) + table(results), flush=True)
    return 0


def _versions_from_logs(out: Path) -> dict[str, str]:
    for log in sorted(out.glob("*.log")):
        for line in log.read_text().splitlines():
            if line.startswith("BENCH-VERSIONS "):
                return dict(json.loads(line[len("BENCH-VERSIONS ") :]))
    return {}


def header(meta: dict[str, Any]) -> str:
    vers = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    command = f"Command: `{meta.get('command')}` (started {meta.get('started')})"
    return f"GPU: {meta.get('gpu')}; {vers}\n\n{command}\n\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    m = sub.add_parser("make-models")
    m.add_argument("--shapes", required=True)
    m.add_argument("--models-root", default="/tmp/kubeft-bench/models")
    w = sub.add_parser("worker")
    w.add_argument("--trainer", required=True, choices=["plain", "peer", "kubeft"])
    w.add_argument("--label", required=True)
    w.add_argument("--shape", required=True)
    w.add_argument("--method", default="qlora")
    w.add_argument("--model-dir", type=Path, required=True)
    w.add_argument("--steps", type=int, default=12)
    w.add_argument("--warmup", type=int, default=3)
    w.add_argument("--max-len", type=int, default=2048)
    w.add_argument("--batch", type=int, default=2)
    w.add_argument("--grad-accum", type=int, default=4)
    w.add_argument("--num-samples", type=int, default=600)
    w.add_argument("--eval-samples", type=int, default=16)
    w.add_argument("--result", required=True)
    w.add_argument("--workdir", default="/tmp/kubeft-bench/work")
    w.add_argument("--set", action="append", help="kubeft spec override, e.g. hyperparameters.batchSize=4")
    w.add_argument("--env", action="append", help="NAME=VALUE set before the trainer starts")
    w.add_argument(
        "--placement-memory", type=int, default=0, help="placement.gpuMemoryBytes (default: the GPU's)"
    )
    w.add_argument("--profile", default="")
    for q in (p,):
        q.add_argument("--shapes", default="llama-1b,llama-8b")
        q.add_argument("--trainers", default="plain,peer,kubeft-lean,kubeft-fast,kubeft")
        q.add_argument("--steps", type=int, default=12, help="optimizer steps per trainer")
        q.add_argument("--warmup", type=int, default=3, help="steps before timing starts")
        q.add_argument("--max-len", type=int, default=2048)
        q.add_argument("--batch", type=int, default=2)
        q.add_argument("--grad-accum", type=int, default=4)
        q.add_argument("--eval-samples", type=int, default=16)
        q.add_argument("--out", default=os.environ.get("OUT", "bench/results/latest"))
        q.add_argument("--models-root", default="/tmp/kubeft-bench/models")
        q.add_argument("--profile", default="", help="comma-separated labels to profile (one step)")
        q.add_argument("--worker-timeout", type=int, default=1200)
    a = p.parse_args(argv)
    a.command_line = "python bench/run.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    if a.cmd == "make-models":
        make_models([s for s in a.shapes.split(",") if s], Path(a.models_root))
        return 0
    if a.cmd == "worker":
        from measure import versions

        print("BENCH-VERSIONS " + json.dumps(versions()), flush=True)
        return run_worker(a)
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
