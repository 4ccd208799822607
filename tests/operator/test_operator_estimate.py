"""The VRAM estimator against breakdowns computed by hand from the published config.json shapes.

Parameter counts are checked against the models' published sizes (1.24B, 7.62B, 7.25B, 2.61B);
every byte figure below is worked out in the comment beside it.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import pytest

from kubeft import estimate as est
from kubeft import estimate_cli

LLAMA_1B = est.known_shape("llama-3.2-1b")
# one Llama-3.2-1B layer's activations per token (QLoRA): 0.2526·h + 11.95·h_kv + 7.389·F
A_LLAMA_1B = 0.2526 * 2_048 + 11.95 * 512 + 7.389 * 8_192
QWEN_7B = est.known_shape("qwen2.5-7b")
MISTRAL_7B = est.known_shape("mistral-7b-v0.3")
GEMMA_2B = est.known_shape("gemma-2-2b")


def test_parameter_counts_match_the_published_model_sizes() -> None:
    # Llama-3.2-1B: 16 × 60,817,408 linear + 16 × 4,096 norms + 2,048 final norm + 262,668,288 tied embeddings
    assert LLAMA_1B.total_params == 1_235_814_400
    # Qwen2.5-7B: 28 × 233,046,016 linear + 28 × (7,168 norms + 4,608 qkv bias) + 3,584 + 2 × 544,997,376
    assert QWEN_7B.total_params == 7_615_616_512
    # Mistral-7B-v0.3: 32 × 218,103,808 + 32 × 8,192 + 4,096 + 2 × 134,217,728
    assert MISTRAL_7B.total_params == 7_248_023_552
    # Gemma-2-2b (head_dim 256 ≠ hidden/heads): 26 × 77,856,768 + 26 × 4,608 + 2,304 + 589,824,000 tied
    assert GEMMA_2B.total_params == 2_614_222_080


def test_llama_1b_qlora_breakdown() -> None:
    e = est.estimate(LLAMA_1B, est.Setup(method="qlora", micro_batch=2, seq_len=2048))
    # NF4 linears 973,078,528 × 0.516 + bf16 embeddings 262,668,288 × 2 + bf16 norms 67,584 × 2
    assert e.weights == 1_027_580_265
    # r=16 on all 7 linears: 16 layers × 16 × (4,096 + 2,560 + 2,560 + 4,096 + 3 × 10,240) = 11,272,192 params
    assert e.trainable_params == 11_272_192
    assert e.adapters == 11_272_192 * 4  # fp32 A/B
    assert e.gradients == 11_272_192 * 4
    assert e.optimizer == 11_272_192 * 2  # adamw_8bit: two 1-byte moments
    # 4,096 tokens × (16 layers × 2.599 × 2,048 checkpointed
    #   + one layer's a = 0.2526·2,048 + 11.95·512 + 7.389·8,192 = 67,166.41 bytes)
    # (constants fitted on H100 and H200, bench/results/estimator_grid.json)
    assert e.activations == math.ceil(4_096 * (16 * 2.599 * 2_048 + A_LLAMA_1B))
    # 4,096 tokens × 128,256 vocab × 16 bytes (bf16 logits, fp32 upcast, log-softmax, gradient)
    assert e.logits == 8_405_385_216
    workspace = 2 * 16_777_216 * 2  # the biggest NF4 linear (8,192 × 2,048) dequantised, twice
    dynamic = 11_272_192 * 4 + e.activations + 8_405_385_216 + workspace  # made and freed every step
    static = 1_027_580_264.4 + 11_272_192 * 6  # weights, adapters, optimizer states
    overhead = 748 * 2**20 + workspace + 0.1942 * dynamic + 0.01999 * static
    assert e.overhead == pytest.approx(overhead, abs=2)
    assert e.total == sum(e.breakdown().values())


def test_qwen2_7b_lora_weights_are_bf16_of_every_parameter() -> None:
    e = est.estimate(QWEN_7B, est.Setup(method="lora", lora_r=8))
    assert e.weights == 2 * 7_615_616_512
    # r=8: 28 × 8 × (7,168 + 4,096 + 4,096 + 7,168 + 3 × 22,528)
    assert e.trainable_params == 28 * 8 * (7_168 + 4_096 + 4_096 + 7_168 + 3 * 22_528)


def test_mistral_full_finetune_keeps_bf16_weights_grads_and_optimizer_states() -> None:
    e = est.estimate(MISTRAL_7B, est.Setup(method="full", optimizer="adamw_torch"))
    n = 7_248_023_552
    assert (e.weights, e.gradients, e.optimizer, e.adapters) == (2 * n, 2 * n, 4 * n, 0)
    assert e.trainable_params == n


def test_full_finetune_with_an_8bit_optimizer_keeps_32bit_states_for_the_embedding() -> None:
    # transformers' Trainer registers nn.Embedding weights for 32-bit states with bitsandbytes' 8-bit
    # optimizers: 8 bytes instead of 2 for the 32,768 × 4,096 input embedding
    e = est.estimate(MISTRAL_7B, est.Setup(method="full", optimizer="adamw_8bit"))
    assert e.optimizer == 2 * 7_248_023_552 + 6 * 32_768 * 4_096


def test_full_finetune_peaks_at_the_larger_of_activations_and_gradients() -> None:
    # Llama-3.2-1B (tied embeddings) with checkpointing: the 2.3 GiB of gradients outweigh the kept
    # activations, so the peak is the end of the backward: every gradient plus the tied embedding's
    # second one (128,256 × 2,048 × 2 bytes), and no activation term
    short = est.estimate(LLAMA_1B, est.Setup(method="full", micro_batch=1, seq_len=512))
    longer = est.estimate(LLAMA_1B, est.Setup(method="full", micro_batch=1, seq_len=4096))
    assert short.gradients == longer.gradients == 2 * 1_235_814_400 + 2 * 128_256 * 2_048
    assert short.activations == longer.activations == 0
    # without checkpointing the start of the backward is higher: all activations (bf16 base layers
    # keep 7.781·h more per token per layer than QLoRA's) with the head's gradient beside them
    e = est.estimate(
        LLAMA_1B, est.Setup(method="full", micro_batch=4, seq_len=2048, gradient_checkpointing=False)
    )
    acts = 8_192 * 16 * (A_LLAMA_1B + 7.781 * 2_048)
    assert e.activations == math.ceil(acts + 2 * 128_256 * 2_048 - e.gradients)
    assert e.gradients + e.activations == pytest.approx(acts + 2 * 128_256 * 2_048, abs=2)


def test_gemma_lora_on_attention_only_counts_the_wider_query_projection() -> None:
    e = est.estimate(GEMMA_2B, est.Setup(method="lora", lora_r=8, lora_targets=("attention",)))
    # q: 2,304 → 2,048 (8 heads × 256), k/v: 2,304 → 1,024, o: 2,048 → 2,304
    assert e.trainable_params == 26 * 8 * (4_352 + 3_328 + 3_328 + 4_352)


def test_memory_knobs_move_the_terms_they_should() -> None:
    base = est.Setup(method="qlora", micro_batch=2, seq_len=2048)
    ref = est.estimate(LLAMA_1B, base)
    no_ckpt = est.estimate(
        LLAMA_1B, est.lean(base).__class__(**{**base.__dict__, "gradient_checkpointing": False})
    )
    assert no_ckpt.activations == math.ceil(4_096 * 16 * A_LLAMA_1B)  # every layer keeps its activations
    padded = est.estimate(LLAMA_1B, replace(base, padding_free=False))
    assert padded.activations - ref.activations == 2 * 2048 * 2048 * 2  # the 4D attention mask
    fused = est.estimate(LLAMA_1B, replace(base, fused_cross_entropy=True))
    # one fp32 tile of the chunked LM head, 0.7942 of it at the checkpointed peak (the recompute)
    assert fused.logits == math.ceil(0.7942 * 128 * 2**20)
    offloaded = est.estimate(LLAMA_1B, replace(base, offload_activations=True))
    # layer inputs in host memory: one layer's activations on the GPU, plus the transfers in flight
    assert offloaded.activations == math.ceil(4_096 * A_LLAMA_1B * 1.874)
    lora = est.estimate(LLAMA_1B, replace(base, method="lora"))
    # bf16 base layers keep 7.781·h more per token per layer, and 0.8487·h more per checkpointed layer
    per_token = 16 * (2.599 + 0.8487) * 2_048 + A_LLAMA_1B + 7.781 * 2_048
    assert lora.activations == math.ceil(4_096 * per_token)
    dropout = est.estimate(LLAMA_1B, replace(base, lora_dropout=0.05))
    assert dropout.activations - ref.activations == pytest.approx(4_096 * 3 * (6 * 2048 + 8192), abs=1)
    bigger = est.estimate(LLAMA_1B, replace(base, lora_r=64, optimizer="adamw_torch"))
    assert bigger.optimizer == 4 * 11_272_192 * 8


def test_profiles_lean_is_smallest_and_fast_trades_memory_for_speed() -> None:
    p = est.estimate_profiles(est.known_shape("llama-3.1-8b"), est.Setup(method="qlora"))
    assert p["lean"].total < p["configured"].total
    assert p["lean"].total < p["fast"].total
    assert p["fast"].logits == 128 * 2**20  # the chunked LM head's fp32 tile
    assert p["lean"].logits < p["fast"].logits  # gone at the checkpointed peak, in part


def test_constants_are_one_replaceable_dataclass() -> None:
    fitted = est.Constants(cuda_context_bytes=0, allocator_fraction=0.0, allocator_static_fraction=0.0)
    e = est.estimate(LLAMA_1B, est.Setup(), constants=fitted)
    assert e.overhead == 2 * 16_777_216 * 2  # only the QLoRA dequantisation workspace is left


def test_config_json_with_nested_text_config_and_missing_fields() -> None:
    nested = {"model_type": "gemma3", "text_config": est.KNOWN_SHAPES["gemma-2-2b"]}
    assert est.ModelShape.from_config(nested).total_params == 2_614_222_080
    with pytest.raises(est.EstimateError, match="intermediate_size"):
        est.ModelShape.from_config({"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "vocab_size": 10})  # fmt: skip
    with pytest.raises(est.EstimateError, match="mixture-of-experts"):
        est.ModelShape.from_config({**est.KNOWN_SHAPES["mistral-7b-v0.3"], "num_local_experts": 8})


def _cli(*argv: str) -> tuple[int, str]:
    from kubeft.cli import build_parser

    args = build_parser().parse_args(["estimate", *argv])
    out = io.StringIO()
    return estimate_cli.run(args, out), out.getvalue()


def test_cli_prints_json_breakdown_for_a_known_shape() -> None:
    code, out = _cli("llama-3.2-1b", "--method", "qlora", "-o", "json")
    doc = json.loads(out)
    assert code == 0
    # the trainer's chunked LM head: one fp32 tile, 0.7942 of it at the checkpointed peak
    assert doc["breakdown"]["logits"] == math.ceil(0.7942 * 128 * 2**20)
    assert doc["estimatedBytes"] == sum(doc["breakdown"].values())
    assert "NVIDIA-L4" in doc["fitsGpus"]


def test_cli_reads_a_config_json_file_and_prints_a_table(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "config.json"
    path.write_text(json.dumps(est.KNOWN_SHAPES["qwen2.5-7b"]))
    code, out = _cli(str(path.parent), "--method", "lora", "--profile", "lean")
    assert code == 0
    assert "weights" in out and "total" in out and "7.62B params" in out


def test_cli_rejects_unknown_model_with_exit_code_2() -> None:
    code, out = _cli("no-such-model")
    assert code == 2
    assert out == ""


def test_offloaded_layer_inputs_take_host_memory_only_when_offloaded() -> None:
    shape = est.known_shape("llama-3.1-8b")
    setup = est.Setup(micro_batch=4, seq_len=2048, gradient_checkpointing=True, offload_activations=True)
    # every layer's bf16 input: 4 × 2048 tokens × 32 layers × 4096 × 2 bytes
    assert est.offload_host_bytes(shape, setup) == 4 * 2048 * 32 * 4096 * 2
    assert est.offload_host_bytes(shape, replace(setup, offload_activations=False)) == 0
    assert est.offload_host_bytes(shape, replace(setup, gradient_checkpointing=False)) == 0


def test_several_gpus_ddp_replicates_and_fsdp_shards_per_gpu() -> None:
    shape = est.known_shape("llama-3.1-8b")
    full = est.Setup(
        method="full", micro_batch=2, seq_len=2048, optimizer="adamw_torch", fused_cross_entropy=True
    )
    one = est.estimate(shape, full)
    ddp = est.estimate(shape, replace(full, world_size=2, strategy="ddp"))
    fsdp = [est.estimate(shape, replace(full, world_size=w, strategy="fsdp")) for w in (2, 4, 8)]
    # DDP: the whole replica on every GPU, plus the gradient buckets and NCCL's buffers
    assert ddp.weights == one.weights and ddp.optimizer == one.optimizer
    assert ddp.gradients == 2 * one.gradients and ddp.overhead > one.overhead
    # FSDP: optimizer states divided by the world; the per-GPU peak falls with more GPUs
    assert fsdp[0].optimizer == math.ceil(one.optimizer / 2)
    assert one.total > fsdp[0].total > fsdp[1].total > fsdp[2].total
    # measured on 2 H200s (bench/results/dist-h200x2-2026-11-30): 66.5 GiB on one, 39.0 per GPU on two
    assert 39.0 * 0.97 <= fsdp[0].total / est.GIB <= 39.0 * 1.08


def test_fsdp_keeps_qlora_quantisation_constants_whole_on_every_gpu() -> None:
    shape = est.known_shape("llama-3.1-8b")
    q = est.Setup(method="qlora", micro_batch=1, seq_len=512)
    w2 = est.estimate(shape, replace(q, world_size=2, strategy="fsdp"))
    w8 = est.estimate(shape, replace(q, world_size=8, strategy="fsdp"))
    constants = shape.num_layers * shape.linear_params_per_layer * (0.516 - 0.5)
    assert w8.weights < w2.weights and w8.weights > constants
    assert (
        est.estimate(shape, replace(q, world_size=1, strategy="fsdp")).total == est.estimate(shape, q).total
    )
    with pytest.raises(est.EstimateError, match="strategy"):
        est.estimate(shape, replace(q, world_size=2, strategy="zero3"))  # type: ignore[arg-type]
