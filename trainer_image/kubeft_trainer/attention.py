"""Padding-free attention for packed rows: varlen flash attention on CUDA, per-sample sdpa elsewhere.

Registered with transformers as the attention implementation ``kubeft_varlen``. TRL's
padding-free collator flattens a batch into one row and passes the sample boundaries
(``cu_seq_lens_q``/``cu_seq_lens_k``, ``max_length_q``/``max_length_k``, computed on the
CPU). With them each sample attends only to itself, at the cost of its own length squared:
no (T×T) block-diagonal mask is built and no attention is computed across samples, unlike
``sdpa`` on a packed row (which masks a dense T×T product, and whose cuDNN plan is rebuilt
for every new row length: CPU time that a CPU-bound QLoRA step cannot spare). Without
boundaries (unpacked batches, evaluation, generation) it is transformers' ``sdpa``.

On CPU (and in float32) a packed row runs causal sdpa per sample: the same function, so the
CPU tests check the packing isolation of the code path that runs on the GPU.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

ATTN_IMPLEMENTATION = "kubeft_varlen"

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - older torch
    _varlen_attn = None  # type: ignore[assignment]


def _sdpa(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)  # type: ignore[no-any-return]


def _segments_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: list[int], scaling: float | None
) -> torch.Tensor:
    """Causal sdpa per sample of a packed row; (1, H, T, D) inputs, (1, T, H, D) output."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling
        )
        for a, b in itertools.pairwise(cu)
        if b > a
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


def _boundaries(position_ids: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Sample boundaries of a packed row from its position ids (positions restart at 0), else None."""
    if position_ids is None or position_ids.shape[-1] != length:
        return None
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten()  # a device sync: only without cu_seq_lens
    if starts.numel() <= 1:
        return None
    return torch.cat([starts, starts.new_tensor([length])]).to(torch.int32)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: (B, H, T, D) in, (B, T, H, D) out."""
    cu_q = kwargs.get("cu_seq_lens_q")
    cu_k = kwargs.get("cu_seq_lens_k")
    if cu_q is None and attention_mask is None and query.shape[0] == 1 and query.shape[2] > 1:
        cu_q = cu_k = _boundaries(kwargs.get("position_ids"), query.shape[2])
    packed = (
        cu_q is not None
        and cu_k is not None
        and attention_mask is None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2]
        and dropout == 0.0
    )
    if not packed:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    assert cu_q is not None and cu_k is not None
    if _varlen_attn is not None and query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
        cu_q = cu_q.to(device=query.device, dtype=torch.int32, non_blocking=True)
        cu_k = cu_k.to(device=query.device, dtype=torch.int32, non_blocking=True)
        max_q = int(kwargs.get("max_length_q") or query.shape[2])
        max_k = int(kwargs.get("max_length_k") or key.shape[2])
        out = _varlen_attn(
            query[0].transpose(0, 1),
            key[0].transpose(0, 1),
            value[0].transpose(0, 1),
            cu_q,
            cu_k,
            max_q,
            max_k,
            scale=scaling,
            window_size=(-1, 0),
        )
        return out.unsqueeze(0), None  # type: ignore[union-attr]
    return _segments_sdpa(query, key, value, [int(x) for x in cu_q.tolist()], scaling), None


def packed_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """Mask builder: none for padding-free rows (the attention reads the boundaries), sdpa's otherwise."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def available() -> bool:
    """Whether the varlen kernel exists (torch >= 2.10); without it packed rows take the per-sample path."""
    return _varlen_attn is not None


def register() -> str:
    """Registers ``kubeft_varlen`` with transformers (idempotent) and returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, packed_mask)
    return ATTN_IMPLEMENTATION
