"""GGUF exports: the formats, the architectures llama.cpp's converter knows, and their sizes.

Shared by the spec (the formats), the operator (refuses a GGUF of an architecture the converter
does not know, before any pod runs), the trainer (plans memory and disk from the sizes) and the
docs (the sizes of the 8B shape). Nothing here imports llama.cpp: the trainer does the converting
(kubeft_trainer.gguf) with llama.cpp's own ``convert_hf_to_gguf.py`` and quantizer, from the
``llama-cpp-python`` package (pinned in requirements.lock; the script comes from the same
llama.cpp source as the quantizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kubeft import estimate as est


@dataclass(frozen=True)
class GgufFormat:
    """One GGUF export: its ``export.formats`` name, llama.cpp's type name and ``llama_ftype``."""

    name: str  # gguf-q4_k_m
    type_name: str  # Q4_K_M: what llama.cpp and Ollama call it
    ftype: int  # llama.h LLAMA_FTYPE_MOSTLY_*
    file_suffix: str  # model-<suffix>.gguf

    @property
    def filename(self) -> str:
        return f"model-{self.file_suffix}.gguf"


F16: Final = GgufFormat("gguf-f16", "F16", 1, "f16")
Q8_0: Final = GgufFormat("gguf-q8_0", "Q8_0", 7, "q8_0")
Q4_K_M: Final = GgufFormat("gguf-q4_k_m", "Q4_K_M", 15, "q4_k_m")
FORMATS: Final[dict[str, GgufFormat]] = {f.name: f for f in (F16, Q8_0, Q4_K_M)}


def is_gguf(fmt: str) -> bool:
    return fmt in FORMATS


# The text-model architectures (config.json "architectures"[0]) that llama.cpp's
# convert_hf_to_gguf.py registers, in the llama.cpp of llama-cpp-python 0.3.16 (requirements.lock).
# tests/trainer/test_gguf.py checks this list against the installed converter, so it cannot drift.
SUPPORTED_ARCHITECTURES: Final = frozenset(
    {
        "ArceeForCausalLM",
        "ArcticForCausalLM",
        "BaiChuanForCausalLM",
        "BaichuanForCausalLM",
        "BailingMoeForCausalLM",
        "BambaForCausalLM",
        "BertForMaskedLM",
        "BertForSequenceClassification",
        "BertModel",
        "BitnetForCausalLM",
        "BloomForCausalLM",
        "BloomModel",
        "CamembertModel",
        "ChameleonForCausalLM",
        "ChameleonForConditionalGeneration",
        "ChatGLMForConditionalGeneration",
        "ChatGLMModel",
        "CodeShellForCausalLM",
        "Cohere2ForCausalLM",
        "CohereForCausalLM",
        "DbrxForCausalLM",
        "DeciLMForCausalLM",
        "DeepseekForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
        "DistilBertForMaskedLM",
        "DistilBertForSequenceClassification",
        "DistilBertModel",
        "Dots1ForCausalLM",
        "DreamModel",
        "Ernie4_5_ForCausalLM",
        "Ernie4_5_MoeForCausalLM",
        "Exaone4ForCausalLM",
        "ExaoneForCausalLM",
        "FalconForCausalLM",
        "FalconH1ForCausalLM",
        "FalconMambaForCausalLM",
        "GPT2LMHeadModel",
        "GPTBigCodeForCausalLM",
        "GPTNeoXForCausalLM",
        "GPTRefactForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma3ForConditionalGeneration",
        "Gemma3nForConditionalGeneration",
        "GemmaForCausalLM",
        "Glm4ForCausalLM",
        "Glm4MoeForCausalLM",
        "Glm4vForConditionalGeneration",
        "GlmForCausalLM",
        "GptOssForCausalLM",
        "GraniteForCausalLM",
        "GraniteMoeForCausalLM",
        "GraniteMoeHybridForCausalLM",
        "GraniteMoeSharedForCausalLM",
        "GrokForCausalLM",
        "HunYuanDenseV1ForCausalLM",
        "HunYuanMoEV1ForCausalLM",
        "InternLM2ForCausalLM",
        "InternLM3ForCausalLM",
        "JAISLMHeadModel",
        "JambaForCausalLM",
        "JinaBertForMaskedLM",
        "JinaBertModel",
        "KimiVLForConditionalGeneration",
        "LFM2ForCausalLM",
        "LLaDAModelLM",
        "LLaMAForCausalLM",
        "Lfm2ForCausalLM",
        "Llama4ForConditionalGeneration",
        "LlamaForCausalLM",
        "LlamaModel",
        "LlavaForConditionalGeneration",
        "LlavaStableLMEpochForCausalLM",
        "MPTForCausalLM",
        "MT5ForConditionalGeneration",
        "Mamba2ForCausalLM",
        "MambaForCausalLM",
        "MambaLMHeadModel",
        "MiniCPM3ForCausalLM",
        "MiniCPMForCausalLM",
        "Mistral3ForConditionalGeneration",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "NemotronForCausalLM",
        "NeoBERT",
        "NeoBERTForSequenceClassification",
        "NeoBERTLMHead",
        "NomicBertModel",
        "OLMoForCausalLM",
        "Olmo2ForCausalLM",
        "OlmoForCausalLM",
        "OlmoeForCausalLM",
        "OpenELMForCausalLM",
        "OrionForCausalLM",
        "PLMForCausalLM",
        "PLaMo2ForCausalLM",
        "Phi3ForCausalLM",
        "PhiForCausalLM",
        "PhiMoEForCausalLM",
        "Plamo2ForCausalLM",
        "PlamoForCausalLM",
        "QWenLMHeadModel",
        "Qwen2AudioForConditionalGeneration",
        "Qwen2ForCausalLM",
        "Qwen2Model",
        "Qwen2MoeForCausalLM",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLModel",
        "Qwen2_5OmniModel",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "RWForCausalLM",
        "RWKV6Qwen2ForCausalLM",
        "RWKV7ForCausalLM",
        "RobertaForSequenceClassification",
        "RobertaModel",
        "Rwkv6ForCausalLM",
        "Rwkv7ForCausalLM",
        "RwkvHybridForCausalLM",
        "SmallThinkerForCausalLM",
        "SmolLM3ForCausalLM",
        "StableLMEpochForCausalLM",
        "StableLmForCausalLM",
        "Starcoder2ForCausalLM",
        "T5EncoderModel",
        "T5ForConditionalGeneration",
        "T5WithLMHeadModel",
        "UMT5ForConditionalGeneration",
        "UltravoxModel",
        "VLlama3ForCausalLM",
        "VoxtralForConditionalGeneration",
        "WavTokenizerDec",
        "XLMRobertaForSequenceClassification",
        "XLMRobertaModel",
        "XverseForCausalLM",
    }
)


def architecture_problem(architectures: object) -> str | None:
    """Why the converter would refuse a model with these config.json ``architectures``; None: it would not."""
    if not isinstance(architectures, (list, tuple)) or not architectures:
        return None  # unknown: the trainer's converter check (before training) decides
    arch = str(architectures[0])
    if arch in SUPPORTED_ARCHITECTURES:
        return None
    return (
        f"llama.cpp's convert_hf_to_gguf.py (llama-cpp-python 0.3.16) does not support the architecture "
        f"{arch}: drop the gguf-* export formats (adapter and merged-16bit work for every model)"
    )


# --- sizes ---------------------------------------------------------------------------------------

# Bytes per block and elements per block of the ggml types these exports use (ggml.c type traits).
TYPE_SIZES: Final[dict[str, tuple[int, int]]] = {
    "F32": (4, 1),
    "F16": (2, 1),
    "Q8_0": (34, 32),
    "Q5_0": (22, 32),
    "Q5_1": (24, 32),
    "Q4_K": (144, 256),
    "Q5_K": (176, 256),
    "Q6_K": (210, 256),
}
_FALLBACK: Final = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # rows not a multiple of 256


def tensor_bytes(type_name: str, elements: int) -> int:
    size, block = TYPE_SIZES[type_name]
    return elements // block * size


def _use_more_bits(i: int, n: int) -> bool:  # llama-quant.cpp: the layers Q4_K_M gives Q6_K
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensors(shape: est.ModelShape) -> list[tuple[str, int, int]]:
    """(GGUF tensor name, columns, rows) of a dense Llama-like model; 1-D tensors have rows 1."""
    h, hd = shape.hidden_size, shape.head_dim
    q, kv, inter = shape.num_heads * hd, shape.num_kv_heads * hd, shape.intermediate_size
    out = [("token_embd.weight", h, shape.vocab_size), ("output_norm.weight", h, 1)]
    if not shape.tie_word_embeddings:
        out.append(("output.weight", h, shape.vocab_size))
    for i in range(shape.num_layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", h, 1), (b + "ffn_norm.weight", h, 1),
            (b + "attn_q.weight", h, q), (b + "attn_k.weight", h, kv), (b + "attn_v.weight", h, kv),
            (b + "attn_output.weight", q, h), (b + "ffn_gate.weight", h, inter),
            (b + "ffn_up.weight", h, inter), (b + "ffn_down.weight", inter, h),
        ]  # fmt: skip
        if shape.attention_bias:
            out += [(b + "attn_q.bias", q, 1), (b + "attn_k.bias", kv, 1), (b + "attn_v.bias", kv, 1)]
    return out


def tensor_type(fmt: GgufFormat, name: str, cols: int, rows: int, n_layers: int, tied: bool) -> str:
    """The ggml type llama.cpp gives a tensor in ``fmt`` (llama-quant.cpp's rules for dense models)."""
    if rows == 1:
        return "F32"  # norms and biases stay 32-bit in every format
    if fmt is F16:
        return "F16"
    if fmt is Q8_0:
        return "Q8_0" if cols % 32 == 0 else "F16"
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    kind = "Q4_K"
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K" if cols % 256 == 0 else "Q8_0"
    more_bits = name.endswith(("attn_v.weight", "ffn_down.weight")) and _use_more_bits(layer, n_layers)
    if more_bits:
        kind = "Q6_K"
    if cols % 256:
        kind = _FALLBACK[kind]
        if cols % 32:
            kind = "F16"
    return kind


def estimated_bytes(shape: est.ModelShape, fmt: str) -> int:
    """The tensor data of the GGUF file (the header and vocabulary add a few MB at most).

    Computed from the parameter counts and the ggml type sizes with llama.cpp's choice of type per
    tensor; docs/trainer.md lists the 8B shape's numbers from here.
    """
    f, tied = FORMATS[fmt], shape.tie_word_embeddings
    return sum(
        tensor_bytes(tensor_type(f, name, cols, rows, shape.num_layers, tied), cols * rows)
        for name, cols, rows in tensors(shape)
    )
