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
    # lean with PyTorch's expandable segments: less allocator slack (reserved over allocated)?
    "kubeft-lean-expseg": ("kubeft", {"KUBEFT_TRAINER_PROFILE": "lean",
                                      "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, [], {}),
}  # fmt: skip


def parse_label(label: str) -> tuple[str, int]:
    """``peer@1`` → (``peer``, seed 1); a label without ``@`` runs seed 0."""
    name, _, seed = label.partition("@")
    return name, int(seed) if seed else 0


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


LEARNT_NATS = 0.5  # a loss comparison means something once the peer's loss fell this much


def _loss_at(losses: list[list[float]], step: int, window: int) -> float | None:
    """Mean logged train loss over the `window` steps ending at `step`."""
    vals = [x for s, x in losses if step - window < s <= step]
    return sum(vals) / len(vals) if vals else None


def loss_table(results: list[dict[str, Any]], marks: int = 4) -> str:
    """Does speed change what is learned? Train loss along the run and held-out loss, per shape.

    Every trainer sees the same samples in the same optimizer steps, so losses compare step by
    step. The noise is the spread of the peer's held-out loss over its training seeds
    (``peer``, ``peer@1``, …); a trainer is within noise when its difference from the peer's
    seed-0 run is at most twice that spread.
    """
    lines: list[str] = []
    for shape in dict.fromkeys(r["shape"] for r in results):
        rows = [r for r in results if r["shape"] == shape and "error" not in r and r.get("losses")]
        peers = [r for r in rows if parse_label(r["label"])[0] == "peer"]
        if not rows:
            continue
        steps = max(int(s) for r in rows for s, _ in r["losses"])
        window = max(1, steps // 10)
        at = [max(1, round(steps * k / marks)) for k in range(1, marks + 1)]
        held = [r["held_out_loss"] for r in peers if r.get("held_out_loss") is not None]
        spread = max(held) - min(held) if len(held) > 1 else None
        base = next((r for r in peers if r["label"] == "peer"), None)
        lines += [
            f"### {shape}: loss (train loss: mean of the {window} steps ending at the step)",
            "",
            "| trainer | "
            + " | ".join(f"step {s}" for s in at)
            + " | held-out loss | Δ vs peer | within noise |",
            "|---|" + "---|" * (len(at) + 3),
        ]
        for r in rows:
            cells = [_fmt(_loss_at(r["losses"], s, window), 3) for s in at]
            delta = (
                r["held_out_loss"] - base["held_out_loss"]
                if base and r is not base and r.get("held_out_loss") is not None
                else None
            )
            verdict = "—"
            if delta is not None and spread is not None:
                verdict = "yes" if abs(delta) <= 2 * spread else "NO"
            lines.append(
                f"| {r['label']} | " + " | ".join(cells) + f" | {_fmt(r.get('held_out_loss'), 4)} "
                f"| {'—' if delta is None else f'{delta:+.4f}'} | {verdict} |"
            )
        noise = "one peer seed: no noise estimate" if spread is None else f"{spread:.4f} nats"
        lines += ["", f"Peer seed spread of the held-out loss: {noise}."]
        if base:
            first = _loss_at(base["losses"], 1, 1)
            last = _loss_at(base["losses"], steps, window)
            if first is not None and last is not None:
                learnt = "learnt" if first - last >= LEARNT_NATS else "NOT learnt: the comparison says little"
                lines.append(f"The peer's train loss: {first:.3f} → {last:.3f} nats, task {learnt}.")
        lines.append("")
    return "\n".join(lines)


def orchestrate(a: argparse.Namespace) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Path(a.models_root)
    shapes = [s for s in a.shapes.split(",") if s]
    labels = [v for v in a.trainers.split(",") if v]
    unknown = [v for v in labels if parse_label(v)[0] not in VARIANTS]
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
            variant, seed = parse_label(label)
            trainer, env, sets, _flags = VARIANTS[variant]
            stem = f"{shape}-{label.replace('@', '-seed')}"  # file names without '@'
            res_file = out / f"{stem}.json"
            log_file = out / f"{stem}.log"
            cmd = [
                py, me, "worker", "--trainer", trainer, "--label", label, "--shape", shape,
                "--model-dir", str(models / shape), "--steps", str(a.steps), "--warmup", str(a.warmup),
                "--method", a.method, "--seed", str(seed), "--lr", str(a.lr),
                "--task-vocab", str(a.task_vocab),
                "--max-len", str(a.max_len), "--batch", str(a.batch), "--grad-accum", str(a.grad_accum),
                "--num-samples", str(num_samples(a.steps, a.batch, a.grad_accum, a.max_len)),
                "--eval-samples", str(a.eval_samples), "--result", str(res_file),
                "--workdir", f"/tmp/kubeft-bench/work/{shape}-{label.replace('@', '-seed')}",
            ]  # fmt: skip
            for s in sets:
                cmd += ["--set", s]
            if label in (a.profile or "").split(","):
                cmd += ["--profile", str(out / f"{stem}.profile.txt")]
            print(f"== {shape} {label}", flush=True)
            t0 = time.time()
            with log_file.open("w") as log:
                # the variant's environment is the process's from its start (PyTorch reads its
                # allocator settings when CUDA starts)
                proc = subprocess.run(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=a.worker_timeout,
                    env={**os.environ, **env},
                )
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
            (out / "results.md").write_text(report(meta, results))
    print(report(meta, results), flush=True)
    return 0


def report(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    return header(meta) + table(results) + "\n" + loss_table(results)


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
    w.add_argument("--seed", type=int, default=0, help="training seed (LoRA init, data order)")
    w.add_argument("--method", default="qlora", choices=["qlora", "lora", "full"])
    w.add_argument("--shape", required=True)
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
    for q in (p, w):
        q.add_argument("--lr", type=float, default=2e-4, help="learning rate (2e-4: the reference scripts')")
        q.add_argument(
            "--task-vocab", type=int, default=2048, help="tokens of the synthetic task (fewer: learnt sooner)"
        )
    for q in (p,):
        q.add_argument("--shapes", default="llama-1b,llama-8b")
        q.add_argument(
            "--trainers",
            default="plain,peer,kubeft-lean,kubeft-fast,kubeft",
            help="labels, each optionally with a training seed: peer,peer@1,kubeft-lean",
        )
        q.add_argument("--method", default="qlora", choices=["qlora", "lora", "full"])
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
    import measure

    measure.pin_one_gpu()  # every trainer on the same single GPU; its workers inherit it
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
