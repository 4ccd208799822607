"""Memory probe for bench runs: with KUBEFT_MEMPROBE=1 on PYTHONPATH's front, every torch optimizer
prints (per rank) the peak allocated before its step (forward + backward) and during it, the
reserved memory, and once, how its states are laid out (DTensor shards or whole tensors)."""

import os

if os.environ.get("KUBEFT_MEMPROBE") == "1":
    try:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    except Exception:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        G = 2**30
        rank = os.environ.get("RANK", "0")
        seen = {"n": 0}

        def _m() -> str:
            c = torch.cuda
            return (
                f"alloc {c.memory_allocated() / G:.2f} peak {c.max_memory_allocated() / G:.2f} "
                f"reserved {c.memory_reserved() / G:.2f} peak_reserved {c.max_memory_reserved() / G:.2f}"
            )

        def pre(opt, args, kwargs):  # type: ignore[no-untyped-def]
            if not torch.cuda.is_available():
                return
            print(f"[memprobe rank {rank}] before step {seen['n']} (fwd+bwd): {_m()}", flush=True)
            torch.cuda.reset_peak_memory_stats()

        def post(opt, args, kwargs):  # type: ignore[no-untyped-def]
            if not torch.cuda.is_available():
                return
            print(f"[memprobe rank {rank}] after step {seen['n']} (optimizer): {_m()}", flush=True)
            if seen["n"] == 0:
                kinds: dict[str, int] = {}
                state_bytes = 0
                big = []
                for group in opt.param_groups:
                    kinds[str(group.get("foreach")) + "/" + str(group.get("fused"))] = len(group["params"])
                    for p in group["params"]:
                        local = p.to_local() if hasattr(p, "to_local") else p
                        if p.numel() > 100_000_000:
                            big.append((tuple(p.shape), tuple(local.shape), type(p).__name__, str(p.dtype)))
                        for v in opt.state.get(p, {}).values():
                            if torch.is_tensor(v):
                                lv = v.to_local() if hasattr(v, "to_local") else v
                                state_bytes += lv.numel() * lv.element_size()
                print(
                    f"[memprobe rank {rank}] optimizer {type(opt).__name__} groups(foreach/fused: n) {kinds} "
                    f"state bytes (local) {state_bytes / G:.2f} GiB; big params {big}",
                    flush=True,
                )
            seen["n"] += 1
            torch.cuda.reset_peak_memory_stats()

        if os.environ.get("KUBEFT_MEMPROBE_NOFOREACH") == "1":
            _init = torch.optim.AdamW.__init__

            def _no_foreach(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                if not kwargs.get("fused"):
                    kwargs["foreach"] = False
                _init(self, *args, **kwargs)

            torch.optim.AdamW.__init__ = _no_foreach  # type: ignore[method-assign]

        register_optimizer_step_pre_hook(pre)
        register_optimizer_step_post_hook(post)
