"""GPU check of the packed (varlen) attention: numerics against per-sample float32 sdpa, and timing
against sdpa over a packed row with a block-diagonal mask (what transformers' sdpa does for
padding-free batches).

    python bench/check_varlen.py
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
from pathlib import Path

import torch

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent / "trainer_image"),
    str(Path(__file__).resolve().parent),
]


def lengths(total: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    out: list[int] = []
    while sum(out) < total:
        out.append(int(min(2047, max(32, rng.lognormvariate(math.log(400), 0.8)))))
    out[-1] -= sum(out) - total
    return [n for n in out if n > 0]


def reference(q, k, v, cu, scale):  # type: ignore[no-untyped-def]
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    outs = []
    for a, b in itertools.pairwise(cu):
        qs, ks, vs = (x[a:b].transpose(0, 1).double() for x in (q, k, v))
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale
            ).transpose(0, 1)
        )
    return torch.cat(outs)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_one(h: int, hkv: int, d: int, seed: int) -> dict[str, float | int]:
    from torch.nn.attention.varlen import varlen_attn

    dev = "cuda"
    T = 4096
    lens = lengths(T, seed=seed)
    cu_list = [0, *torch.tensor(lens).cumsum(0).tolist()]
    cu = torch.tensor(cu_list, dtype=torch.int32, device=dev)
    scale = d**-0.5
    q = torch.randn(T, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(T, hkv, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(T, hkv, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    out = varlen_attn(q, k, v, cu, cu, max(lens), max(lens), scale=scale, window_size=(-1, 0))
    assert isinstance(out, torch.Tensor)
    g = torch.randn_like(out)
    out.backward(g)
    grads = [x.grad.clone() for x in (q, k, v)]  # type: ignore[union-attr]
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(qd, kd, vd, cu_list, scale)
    ref.backward(g.double())
    entry: dict[str, float | int] = {
        "samples": len(lens),
        "out_rel_err": rel(out.detach(), ref.detach()),
        "dq_rel_err": rel(grads[0], qd.grad),  # type: ignore[arg-type]
        "dk_rel_err": rel(grads[1], kd.grad),  # type: ignore[arg-type]
        "dv_rel_err": rel(grads[2], vd.grad),  # type: ignore[arg-type]
    }
    # timing: varlen vs sdpa on the packed row with a block-diagonal causal mask (fwd + bwd)
    seg = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, device=dev))
    mask = (seg[:, None] == seg[None, :]) & torch.ones(T, T, device=dev, dtype=torch.bool).tril()
    q4, k4, v4 = (x.detach().transpose(0, 1)[None].contiguous().requires_grad_() for x in (q, k, v))

    def run_varlen() -> None:
        o = varlen_attn(q, k, v, cu, cu, max(lens), max(lens), scale=scale, window_size=(-1, 0))
        o.backward(g)  # type: ignore[union-attr]

    def run_masked() -> None:
        kk = k4.repeat_interleave(h // hkv, dim=1)
        vv = v4.repeat_interleave(h // hkv, dim=1)
        o = torch.nn.functional.scaled_dot_product_attention(
            q4, kk, vv, attn_mask=mask[None, None], scale=scale
        )
        o.backward(g.transpose(0, 1)[None])

    for fn, key in ((run_varlen, "varlen_ms"), (run_masked, "sdpa_masked_ms")):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        entry[key] = round(start.elapsed_time(end) / 20, 3)
    return entry


def main() -> int:
    res: dict[str, object] = {"gpu": torch.cuda.get_device_name(0)}
    heads = {"llama-1b": (32, 8, 64), "llama-8b": (32, 8, 128), "qwen-7b": (28, 4, 128)}
    for name, (h, hkv, d) in heads.items():
        res[name] = check_one(h, hkv, d, len(name))
    print("CHECK-VARLEN " + json.dumps(res), flush=True)
    ok = all(
        isinstance(e, dict) and max(e[k] for k in e if k.endswith("rel_err")) < 2e-2
        for n, e in res.items()
        if n != "gpu"
    )
    print("varlen attention check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
