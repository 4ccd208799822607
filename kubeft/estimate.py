"""Peak GPU memory of a fine-tuning job, term by term.

Pure and dependency-free: the operator uses it to choose a GPU, the trainer to
decide how to spend spare memory, and ``kubeft estimate`` prints it. The model is
described by the fields of its Hugging Face ``config.json``; the job by its method
and hyperparameters (:class:`Setup`). Every fitted number lives in
:class:`Constants`, so calibrating against measurements (see docs/estimator.md)
means replacing one dataclass instance.

Terms (bytes, all at the peak of one optimizer step):

- ``weights``: frozen or trained base weights (NF4 + bf16 embeddings for QLoRA, bf16 otherwise);
- ``adapters``: LoRA A/B matrices (fp32, as peft keeps them);
- ``gradients``: one gradient per trainable parameter;
- ``optimizer``: optimizer state per trainable parameter;
- ``activations``: saved activations (per token per layer, with or without gradient checkpointing);
- ``logits``: the logits and cross-entropy buffers of the LM head (zero with a fused/chunked loss);
- ``overhead``: CUDA context, dequantisation workspace, NCCL's buffers (several GPUs) and allocator slack.

Several GPUs (``Setup.world_size`` > 1) change the terms per GPU, by ``Setup.strategy``:

- ``ddp``: every GPU holds the whole single-GPU peak, plus DDP's gradient buckets (a second copy
  of the trainable parameters' gradients, which the all-reduce works on) in ``gradients`` and
  NCCL's communicator buffers in ``overhead``;
- ``fsdp`` (FSDP2, one unit per decoder layer plus the root: embeddings, lm_head, final norm):
  parameters, adapters, gradients and optimizer states divided by the world size, plus the units
  all-gathered at a time in ``weights`` (the root, gathered from its forward to the end of the
  backward, and the layer computing plus the one prefetched) and, for full fine-tuning, their
  unsharded gradients before the reduce-scatter in ``gradients``. QLoRA's 4-bit weights are
  stored in the compute dtype for FSDP (``bnb_4bit_quant_storage``: same bytes, sharded); their
  quantisation constants stay whole on every GPU. Activations and logits are per GPU either way.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:  # the spec model imports this module; the estimator itself needs no pydantic
    from kubeft.spec import FineTuneJobSpec

Method = Literal["qlora", "lora", "full"]
Strategy = Literal["ddp", "fsdp"]  # data parallel: a replica per GPU, or shards across them
METHODS: Final[tuple[Method, ...]] = ("full", "lora", "qlora")  # most accurate first

GIB: Final = 1024**3
# The operator places a job on a GPU whose memory holds estimate × (1 + margin) (KUBEFT_MEMORY_MARGIN)
PLACEMENT_MARGIN: Final = 0.10

# Linear modules of a Llama-style decoder block, as peft names them.
ATTENTION_MODULES: Final = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES: Final = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR: Final = "all-linear"

Optimizer = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
]
OPTIMIZERS: Final[tuple[str, ...]] = typing.get_args(Optimizer)
# bitsandbytes 8-bit optimizers: transformers' Trainer keeps the states of nn.Embedding weights in 32 bits
OPTIMIZERS_8BIT: Final = frozenset({"adamw_8bit", "paged_adamw_8bit"})
# bitsandbytes optimizers cannot step FSDP's sharded parameters (bitsandbytes#89): DDP only
OPTIMIZERS_NO_FSDP: Final = frozenset({"adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"})


class EstimateError(ValueError):
    """The model config or the setup cannot be estimated (missing field, unknown option)."""


@dataclass(frozen=True)
class Constants:
    """Every fitted number of the estimator, in one place (bytes unless said otherwise)."""

    # Base weights
    nf4_bytes_per_param: float = 0.516  # 4 bits + double-quantised absmax constants
    nf4_bytes_per_param_no_double_quant: float = 0.5625
    bf16_bytes_per_param: float = 2.0
    qlora_embedding_bytes_per_param: float = 2.0  # embeddings and lm_head stay bf16 (4 if upcast to fp32)
    # LoRA adapters: peft keeps A/B in fp32
    adapter_bytes_per_param: float = 4.0
    adapter_grad_bytes_per_param: float = 4.0
    # Full fine-tuning trains bf16 weights; gradients in the same dtype
    full_grad_bytes_per_param: float = 2.0
    # Optimizer state per trainable fp32 parameter. 32-bit states follow the
    # parameter's dtype (torch creates them with zeros_like), so full fine-tuning of
    # bf16 weights halves them; bitsandbytes 8-bit states are 1 byte per moment.
    optimizer_bytes_per_param: Mapping[str, float] = field(
        default_factory=lambda: {
            "adamw_torch": 8.0,
            "adamw_torch_fused": 8.0,
            "adamw_8bit": 2.0,
            "paged_adamw_8bit": 2.0,
            "paged_adamw_32bit": 8.0,
            "adafactor": 0.1,  # factored second moment, no first moment
            "sgd": 0.0,
        }
    )
    optimizer_32bit: frozenset[str] = frozenset(
        {"adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "adafactor"}
    )
    # With an 8-bit optimizer, transformers' Trainer registers every nn.Embedding weight for 32-bit
    # states (two fp32 moments): full fine-tuning pays them on the input embeddings.
    embedding_optimizer_bytes_per_param: float = 8.0
    # Activations per token per layer (bf16, varlen/flash attention, Liger's fused RMSNorm/SwiGLU):
    #   a = attn_hidden·h + kv·h_kv + mlp·F (+ norm_fp32·h) (+ dropout·(6h + F) when lora_dropout > 0)
    # Fitted to kubeft's trainer on H100 and H200 (bench/results/estimator_grid.json: Llama and Qwen2
    # shapes). mlp·F is SwiGLU's gate, up and down inputs (≈ 3 bf16 F-vectors); the shapes' kv/h
    # ratios (0.14–0.25) are too close to tell h from h_kv, so the fit puts the h-sized part on kv.
    act_hidden_coeff: float = 0.2526
    act_kv_coeff: float = 11.95
    act_mlp_coeff: float = 7.389
    act_norm_fp32_coeff: float = 0.0  # fp32 RMSNorm copies (12 without a fused RMSNorm kernel)
    act_dropout_coeff: float = 3.0
    # bf16 base layers (LoRA, full) keep more per token than bitsandbytes' 4-bit matmul, which saves
    # only what its backward needs: bf16·h more per token per layer (fitted; the same on Llama and
    # Qwen2 shapes whose MLP widths differ, so it scales with the hidden size)
    act_bf16_base_hidden_coeff: float = 7.781
    # With gradient checkpointing each layer keeps its bf16 input (2h) plus what the recompute
    # keeps alive around it: ckpt·h per token per layer (fitted)
    act_checkpoint_coeff: float = 2.599
    # ... and with bf16 base layers (LoRA, full) ckpt_bf16·h more per token per layer (fitted)
    act_checkpoint_bf16_base_coeff: float = 0.8487
    # With the layer inputs offloaded to host memory, the GPU still holds one layer's activations
    # being recomputed plus the transfers in flight (TRL's offloading stash): this many layers' worth
    offload_gpu_layers: float = 1.874
    # Padded (not padding-free) batches build a 4D attention mask: b·L·L elements
    attention_mask_bytes: float = 2.0
    # Logits and loss buffers per token per vocabulary entry
    logits_bytes: float = 16.0  # bf16 logits + fp32 upcast + log-softmax + its gradient
    logits_bytes_fused: float = 0.0  # fused linear cross-entropy (Liger) / chunked CE
    # a chunked LM head still holds one fp32 tile of logits (TRL: 4096 tokens × 32768 entries) (fitted)
    fused_logits_chunk_bytes: int = 128 * 1024 * 1024
    # with gradient checkpointing the peak comes in the backward's recompute, when the loss's
    # chunk is gone: this share of it counts then (fitted)
    fused_chunk_checkpointed_share: float = 0.7942
    # QLoRA dequantises one linear at a time to bf16 (forward and backward)
    dequant_workspace_copies: float = 2.0
    # Fixed and proportional overheads
    cuda_context_bytes: int = 748 * 1024 * 1024  # invisible to torch.cuda.max_memory_*, seen by NVML
    # Caching-allocator slack (reserved over allocated): tensors that come and go in every step
    # (activations, logits, gradients, dequantisation) fragment the cache; weights and optimizer
    # states are allocated once, in few large blocks
    allocator_fraction: float = 0.1942
    allocator_static_fraction: float = 0.01999
    # Several GPUs. NCCL's communicator buffers and streams beside the CUDA context (NVML sees them,
    # torch.cuda.max_memory_* does not); to be calibrated on the 2-GPU bench
    nccl_buffer_bytes: int = 512 * 1024 * 1024
    # DDP's reducer copies each gradient into a bucket for the all-reduce: one more copy of them
    ddp_bucket_copies: float = 1.0
    # FSDP2 decoder-layer units all-gathered at a time: the one computing and the one prefetched
    fsdp_prefetch_units: float = 2.0
    # packed NF4 values per parameter (4 bits): what FSDP shards of a QLoRA linear weight; the rest
    # of nf4_bytes_per_param (quantisation constants) stays whole on every GPU
    nf4_packed_bytes_per_param: float = 0.5


DEFAULT_CONSTANTS: Final = Constants()


@dataclass(frozen=True)
class ModelShape:
    """The architecture facts the estimate needs, read from a Hugging Face config.json."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    model_type: str = "llama"
    # config.json "architectures" (the text model's when nested): what llama.cpp's GGUF converter keys on
    architectures: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Reads a config.json dict (Llama, Qwen2, Mistral, Gemma, Phi-3 and alike).

        Multimodal configs that nest the language model under ``text_config`` are
        read from there. Raises :class:`EstimateError` naming the missing field.
        """
        text = config.get("text_config")
        cfg: Mapping[str, Any] = text if isinstance(text, Mapping) else config
        if cfg.get("num_local_experts") or cfg.get("num_experts"):
            raise EstimateError("mixture-of-experts models are not supported by the estimator yet")

        def need(*names: str) -> int:
            for name in names:
                value = cfg.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
            raise EstimateError(f"model config has no positive integer {' or '.join(names)!s}")

        hidden = need("hidden_size", "n_embd", "d_model")
        heads = need("num_attention_heads", "n_head")
        kv = cfg.get("num_key_value_heads")
        kv_heads = kv if isinstance(kv, int) and kv > 0 else heads
        head_dim = cfg.get("head_dim")
        tie = cfg.get("tie_word_embeddings", config.get("tie_word_embeddings"))
        archs = cfg.get("architectures") or config.get("architectures") or ()
        return cls(
            hidden_size=hidden,
            num_layers=need("num_hidden_layers", "n_layer"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim if isinstance(head_dim, int) and head_dim > 0 else hidden // heads,
            intermediate_size=need("intermediate_size", "n_inner"),
            vocab_size=need("vocab_size"),
            # transformers' PretrainedConfig default is True when the field is absent
            tie_word_embeddings=bool(True if tie is None else tie),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
            model_type=str(cfg.get("model_type", "unknown")),
            architectures=tuple(str(a) for a in archs) if isinstance(archs, (list, tuple)) else (),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelShape:
        """Reads ``config.json`` (or a model directory that contains one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EstimateError(f"cannot read model config {p}: {exc}") from exc
        if not isinstance(data, dict):
            raise EstimateError(f"model config {p} is not a JSON object")
        return cls.from_config(data)

    # --- parameter counts ---------------------------------------------------------
    @property
    def kv_dim(self) -> int:
        """Width of the key (and value) projection: kv heads × head dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        """Width of the query projection: heads × head dim (not always the hidden size, e.g. Gemma)."""
        return self.num_heads * self.head_dim

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear module of one decoder block."""
        h, f = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, f),
            "up_proj": (h, f),
            "down_proj": (f, h),
        }

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of the block's linear modules (what NF4 quantises)."""
        return sum(i * o for i, o in self.linear_dims().values())

    @property
    def small_params_per_layer(self) -> int:
        """Norm weights and attention biases of one block (kept in bf16)."""
        bias = self.q_dim + 2 * self.kv_dim if self.attention_bias else 0
        return 2 * self.hidden_size + bias

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus an untied lm_head."""
        emb = self.vocab_size * self.hidden_size
        return emb if self.tie_word_embeddings else 2 * emb

    @property
    def total_params(self) -> int:
        """All parameters of the model."""
        per_layer = self.linear_params_per_layer + self.small_params_per_layer
        return self.num_layers * per_layer + self.embedding_params + self.hidden_size

    def lora_params(self, r: int, targets: tuple[str, ...] = (ALL_LINEAR,)) -> int:
        """LoRA parameters: r × layers × Σ(d_in + d_out) over the targeted modules."""
        dims = self.linear_dims()
        names = resolve_targets(targets)
        return r * self.num_layers * sum(i + o for name, (i, o) in dims.items() if name in names)


def resolve_targets(targets: tuple[str, ...] | list[str]) -> set[str]:
    """Module names a ``targetModules`` list selects (``all-linear``, ``attention``, ``mlp`` or names)."""
    names: set[str] = set()
    for t in targets:
        if t == ALL_LINEAR:
            names.update(ATTENTION_MODULES + MLP_MODULES)
        elif t == "attention":
            names.update(ATTENTION_MODULES)
        elif t == "mlp":
            names.update(MLP_MODULES)
        else:
            names.add(t.rsplit(".", 1)[-1])
    return names


@dataclass(frozen=True)
class Setup:
    """What the job does to the model: method and the hyperparameters that change memory."""

    method: Method = "qlora"
    micro_batch: int = 2
    seq_len: int = 2048
    gradient_checkpointing: bool = True
    padding_free: bool = True  # packing / flattened batches: no 4D attention mask
    fused_cross_entropy: bool = False
    optimizer: str = "adamw_8bit"
    lora_r: int = 16
    lora_targets: tuple[str, ...] = (ALL_LINEAR,)
    lora_dropout: float = 0.0
    double_quant: bool = True
    # checkpointed layer inputs kept in pinned host memory (the trainer's lean profile on CUDA)
    offload_activations: bool = False
    # data parallel training: ranks (GPUs in all), and whether each holds a replica (ddp) or a
    # shard (fsdp) of the parameters, gradients and optimizer states; the estimate is per GPU
    world_size: int = 1
    strategy: Strategy = "ddp"

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch at the worst case (every sequence at the maximum length)."""
        return self.micro_batch * self.seq_len

    @classmethod
    def from_spec(cls, spec: FineTuneJobSpec, method: Method, strategy: Strategy | None = None) -> Setup:
        """The inputs for a FineTuneJob spec trained with ``method`` (resolved: never ``auto``) and
        ``strategy`` (resolved; None: the spec's, where ``auto`` reads as ddp).

        The one place a spec becomes a Setup: the operator places with it, the trainer plans its
        profile with it, ``kubeft estimate`` prints it, so their numbers agree. kubeft's trainer
        always computes the LM head's loss in chunks (TRL), hence ``fused_cross_entropy``.
        """
        hp = spec.hyperparameters
        wanted = spec.distributed.strategy
        return cls(
            method=method,
            micro_batch=hp.batch_size,
            seq_len=hp.max_seq_length,
            gradient_checkpointing=hp.gradient_checkpointing,
            padding_free=hp.packing,
            fused_cross_entropy=True,
            optimizer=hp.optimizer,
            lora_r=hp.lora.r,
            lora_targets=tuple(hp.lora.target_modules),
            lora_dropout=hp.lora.dropout,
            world_size=spec.world_size,
            strategy=strategy or ("ddp" if wanted == "auto" else wanted),
        )


# Profiles the trainer can run in (issue: lean by default, fast when the GPU has room).
def lean(setup: Setup) -> Setup:
    """Least memory: gradient checkpointing, fused linear cross-entropy, padding-free batches."""
    return replace(setup, gradient_checkpointing=True, fused_cross_entropy=True, padding_free=True)


def fast(setup: Setup) -> Setup:
    """Fastest: no gradient checkpointing, fused cross-entropy, padding-free batches."""
    return replace(setup, gradient_checkpointing=False, fused_cross_entropy=True, padding_free=True)


@dataclass(frozen=True)
class Estimate:
    """Peak GPU memory in bytes, with the terms that make it up."""

    method: Method
    weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    trainable_params: int
    total_params: int

    @property
    def total(self) -> int:
        """Peak bytes: the sum of the terms."""
        return (
            self.weights
            + self.adapters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.overhead
        )

    def breakdown(self) -> dict[str, int]:
        """Terms by name (the shape of ``status.vram.breakdown``)."""
        d = asdict(self)
        return {k: d[k] for k in BREAKDOWN_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{estimatedBytes, method, breakdown, trainableParams, totalParams}``."""
        return {
            "estimatedBytes": self.total,
            "method": self.method,
            "breakdown": self.breakdown(),
            "trainableParams": self.trainable_params,
            "totalParams": self.total_params,
        }


BREAKDOWN_KEYS: Final = ("weights", "adapters", "gradients", "optimizer", "activations", "logits", "overhead")


def activation_bytes_per_token_per_layer(shape: ModelShape, setup: Setup, c: Constants) -> float:
    """Saved activations of one decoder block for one token (the notes' ``a``)."""
    h, f = shape.hidden_size, shape.intermediate_size
    a = c.act_hidden_coeff * h + c.act_kv_coeff * shape.kv_dim + c.act_mlp_coeff * f
    a += c.act_norm_fp32_coeff * h
    if setup.method != "qlora":
        a += c.act_bf16_base_hidden_coeff * h
    if setup.method != "full" and setup.lora_dropout > 0:
        a += c.act_dropout_coeff * (6 * h + f)
    return a


def estimate(shape: ModelShape, setup: Setup, constants: Constants = DEFAULT_CONSTANTS) -> Estimate:
    """Peak GPU memory of one training step of ``setup`` on a model of ``shape``."""
    c = constants
    if setup.optimizer not in c.optimizer_bytes_per_param:
        raise EstimateError(f"unknown optimizer {setup.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if setup.micro_batch < 1 or setup.seq_len < 1:
        raise EstimateError("micro-batch and sequence length must be at least 1")
    n_layers = shape.num_layers
    linear = n_layers * shape.linear_params_per_layer
    small = n_layers * shape.small_params_per_layer + shape.hidden_size  # + final norm
    total = shape.total_params
    opt = c.optimizer_bytes_per_param[setup.optimizer]

    if setup.method == "qlora":
        nf4 = c.nf4_bytes_per_param if setup.double_quant else c.nf4_bytes_per_param_no_double_quant
        weights = linear * nf4 + shape.embedding_params * c.qlora_embedding_bytes_per_param
        weights += small * c.bf16_bytes_per_param
    else:
        weights = total * c.bf16_bytes_per_param

    if setup.method == "full":
        trainable = total
        adapters = 0.0
        gradients = total * c.full_grad_bytes_per_param
        # 32-bit optimizer states take the bf16 parameters' dtype
        scale = c.bf16_bytes_per_param / 4.0 if setup.optimizer in c.optimizer_32bit else 1.0
        optimizer = total * opt * scale
        if setup.optimizer in OPTIMIZERS_8BIT:
            embeddings = shape.vocab_size * shape.hidden_size  # the input embedding (an nn.Embedding)
            optimizer += embeddings * (c.embedding_optimizer_bytes_per_param - opt)
    else:
        if setup.lora_r < 1:
            raise EstimateError("LoRA rank must be at least 1")
        trainable = shape.lora_params(setup.lora_r, setup.lora_targets)
        if trainable == 0:
            raise EstimateError(f"LoRA targets {list(setup.lora_targets)} match no linear module")
        adapters = trainable * c.adapter_bytes_per_param
        gradients = trainable * c.adapter_grad_bytes_per_param
        optimizer = trainable * opt

    distributed = setup.world_size > 1
    if setup.world_size < 1:
        raise EstimateError("world size must be at least 1")
    if setup.strategy not in ("ddp", "fsdp"):
        raise EstimateError(f"unknown strategy {setup.strategy!r}; known: ddp, fsdp")
    fsdp = distributed and setup.strategy == "fsdp"
    if distributed and setup.strategy == "ddp":
        # the reducer's buckets: a copy of every trainable gradient
        gradients *= 1.0 + c.ddp_bucket_copies
    elif fsdp:
        weights, adapters, gradients, optimizer = _fsdp_shards(
            shape, setup, c, weights, adapters, gradients, optimizer
        )

    tokens = setup.tokens
    a = activation_bytes_per_token_per_layer(shape, setup, c)
    if setup.gradient_checkpointing and setup.offload_activations:
        # layer inputs live in host memory; one layer at a time is recomputed on the GPU, with the
        # next transfers in flight
        activations = tokens * a * c.offload_gpu_layers
    elif setup.gradient_checkpointing:
        # every layer's input is kept; one layer at a time is recomputed with its full activations
        kept = c.act_checkpoint_coeff + (c.act_checkpoint_bf16_base_coeff if setup.method != "qlora" else 0.0)
        activations = tokens * (n_layers * kept * shape.hidden_size + a)
    else:
        activations = tokens * n_layers * a
    if not setup.padding_free:
        activations += setup.micro_batch * setup.seq_len * setup.seq_len * c.attention_mask_bytes

    per_token_vocab = c.logits_bytes_fused if setup.fused_cross_entropy else c.logits_bytes
    logits = tokens * shape.vocab_size * per_token_vocab
    if setup.fused_cross_entropy:
        share = c.fused_chunk_checkpointed_share if setup.gradient_checkpointing else 1.0
        logits += c.fused_logits_chunk_bytes * share

    workspace = 0.0
    if setup.method == "qlora":
        biggest = max(i * o for i, o in shape.linear_dims().values())
        workspace = biggest * c.bf16_bytes_per_param * c.dequant_workspace_copies
    if setup.method == "full":
        # The backward frees each layer's activations as it makes that layer's gradients, so the two
        # peak at opposite ends of it: all activations with the LM head's gradient (the first one
        # made) at its start, all gradients at its end, with a tied embedding's second gradient (its
        # lookup's, added to the head's) briefly beside them. ``activations`` is what the first
        # exceeds the second by.
        head = shape.vocab_size * shape.hidden_size * c.full_grad_bytes_per_param
        # FSDP: the sharded gradients are small and the root's (the head's) is whole from the start of
        # the backward, beside every activation: no trade between the two
        if not fsdp:
            gradients += head if shape.tie_word_embeddings else 0.0
            activations = max(0.0, activations + head - gradients)
    dynamic = gradients + activations + logits + workspace
    static = weights + adapters + optimizer
    overhead = (
        c.cuda_context_bytes
        + (c.nccl_buffer_bytes if distributed else 0)
        + workspace
        + c.allocator_fraction * dynamic
        + c.allocator_static_fraction * static
    )

    return Estimate(
        method=setup.method,
        weights=math.ceil(weights),
        adapters=math.ceil(adapters),
        gradients=math.ceil(gradients),
        optimizer=math.ceil(optimizer),
        activations=math.ceil(activations),
        logits=math.ceil(logits),
        overhead=math.ceil(overhead),
        trainable_params=trainable,
        total_params=total,
    )


def _fsdp_shards(
    shape: ModelShape,
    setup: Setup,
    c: Constants,
    weights: float,
    adapters: float,
    gradients: float,
    optimizer: float,
) -> tuple[float, float, float, float]:
    """Per-GPU weights, adapters, gradients and optimizer states under FSDP (see the module doc)."""
    w = setup.world_size
    layer_small = shape.small_params_per_layer
    linear = shape.linear_params_per_layer
    # the tail unit (final norm, lm_head; with tied weights the one embedding matrix) stays gathered
    # from its forward to the end of the backward; an untied input embedding is a unit of its own,
    # resharded after its forward (accelerate's FSDP2 wrapping)
    root = shape.vocab_size * shape.hidden_size + shape.hidden_size
    if setup.method == "qlora":
        nf4 = c.nf4_bytes_per_param if setup.double_quant else c.nf4_bytes_per_param_no_double_quant
        n_linear = shape.num_layers * linear
        constants = n_linear * max(0.0, nf4 - c.nf4_packed_bytes_per_param)  # replicated
        weights = (weights - constants) / w + constants
        layer_unit = linear * c.nf4_packed_bytes_per_param + layer_small * c.bf16_bytes_per_param
        root_unit = root * c.qlora_embedding_bytes_per_param
    else:
        weights = weights / w
        layer_unit = (linear + layer_small) * c.bf16_bytes_per_param
        root_unit = root * c.bf16_bytes_per_param
    if setup.method != "full":
        adapter_layer = adapters / shape.num_layers  # a layer's adapters are gathered with it
        layer_unit += adapter_layer
    weights += root_unit + c.fsdp_prefetch_units * layer_unit
    adapters /= w
    gradients /= w
    optimizer /= w
    if setup.method == "full":
        # the tail's and one layer's gradients whole, before they are reduce-scattered
        gradients += root * c.full_grad_bytes_per_param
        gradients += (linear + layer_small) * c.full_grad_bytes_per_param
    return weights, adapters, gradients, optimizer


def checkpoint_bytes(estimate: Estimate) -> int:
    """What one checkpoint of the job holds: the trained weights and their optimizer states.

    LoRA methods save their adapters (fp32) and the adapters' optimizer states; full fine-tuning
    the whole bf16 model and its states. Sizes the pod's grace period for a final checkpoint.
    """
    trained = estimate.weights if estimate.method == "full" else estimate.adapters
    return trained + estimate.optimizer


def offload_host_bytes(shape: ModelShape, setup: Setup, constants: Constants = DEFAULT_CONSTANTS) -> int:
    """Pinned host memory the offloaded layer inputs take (0 unless checkpointing offloads them).

    Every layer's bf16 input of one micro-batch waits in host memory for the backward pass.
    """
    if not (setup.gradient_checkpointing and setup.offload_activations):
        return 0
    return math.ceil(setup.tokens * shape.num_layers * shape.hidden_size * constants.bf16_bytes_per_param)


def estimate_profiles(
    shape: ModelShape, setup: Setup, constants: Constants = DEFAULT_CONSTANTS
) -> dict[str, Estimate]:
    """The estimate as configured plus the trainer's ``lean`` and ``fast`` profiles."""
    return {
        "configured": estimate(shape, setup, constants),
        "lean": estimate(shape, lean(setup), constants),
        "fast": estimate(shape, fast(setup), constants),
    }


# --- known model shapes (config.json fields), for the CLI and for tests ---------------
KNOWN_SHAPES: Final[dict[str, dict[str, Any]]] = {
    "llama-3.2-1b": {
        "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    "llama-3.2-3b": {
        "model_type": "llama", "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 8192, "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    "llama-3.1-8b": {
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 14336, "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "llama-3.1-70b": {
        "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 28672, "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b": {
        "model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "mistral-7b-v0.3": {
        "model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 14336, "vocab_size": 32768,
        "tie_word_embeddings": False,
    },
    "gemma-2-2b": {
        "model_type": "gemma2", "hidden_size": 2304, "num_hidden_layers": 26, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216, "vocab_size": 256000,
        "tie_word_embeddings": True,
    },
}  # fmt: skip


def known_shape(name: str) -> ModelShape:
    """A :class:`ModelShape` from :data:`KNOWN_SHAPES`; raises :class:`EstimateError` if unknown."""
    try:
        return ModelShape.from_config(KNOWN_SHAPES[name.lower()])
    except KeyError:
        raise EstimateError(f"unknown model shape {name!r}; known: {', '.join(KNOWN_SHAPES)}") from None
