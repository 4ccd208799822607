"""The trainers the bench compares, each run in its own process by ``run.py worker``.

* ``plain``: the QLoRA recipe of the common guides (HF Trainer + peft's
  prepare_model_for_kbit_training, dynamic padding), as /work/shared/reference/qlora_baseline.py.
* ``peer``: TRL's SFTTrainer as its docs suggest: bfd packing (padding-free) + Liger kernels,
  as trl_peer.py. The bar to beat.
* ``kubeft``: kubeft's trainer through its real code path (``kubeft_trainer.config.load_config``
  and ``kubeft_trainer.train.Recipe``: setup and train), with its profile (lean / fast / auto)
  chosen by the ``KUBEFT_TRAINER_PROFILE`` environment variable or the job's placement.

All share the QLoRA settings: NF4 double-quant, bf16 compute, LoRA r=16 α=16 on all linear
layers, adamw_8bit, lr 2e-4, gradient checkpointing (unless a kubeft profile turns it off).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import measure
import workload

LR = 2e-4  # the reference scripts' learning rate (run.py --lr changes it for loss runs)
WARMUP_STEPS = 2  # the reference scripts'; kubeft gets the same two steps as a ratio


def _lora(method: str) -> Any:
    """The shared LoRA adapter (None for full fine-tuning)."""
    from peft import LoraConfig

    if method == "full":
        return None
    return LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", bias="none", task_type="CAUSAL_LM"
    )


def _bnb() -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _load(a: Any) -> Any:
    """The model as the guides load it: NF4 (qlora) or bf16 on the GPU; float32 on CPU (smoke runs)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not _cuda():
        return AutoModelForCausalLM.from_pretrained(str(a.model_dir), attn_implementation="sdpa")
    return AutoModelForCausalLM.from_pretrained(
        str(a.model_dir),
        quantization_config=_bnb() if a.method == "qlora" else None,
        dtype=torch.bfloat16,
        attn_implementation="sdpa",
        device_map={"": 0},
    )


def _optimizer() -> str:
    """adamw_8bit on the GPU (the reference recipes'); torch's AdamW on CPU smoke runs."""
    return "adamw_8bit" if _cuda() else "adamw_torch"


def _common_args(a: Any) -> dict[str, Any]:
    """Training settings the plain recipe and the peer share (the reference scripts' values)."""
    gpu = _cuda()
    return {
        "bf16": gpu, "optim": _optimizer(), "use_cpu": not gpu,
        "per_device_train_batch_size": a.batch, "gradient_accumulation_steps": a.grad_accum,
        "max_steps": a.steps, "learning_rate": a.lr, "warmup_steps": WARMUP_STEPS, "seed": a.seed,
        "logging_steps": 1, "report_to": [], "save_strategy": "no", "disable_tqdm": True,
        "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "include_num_input_tokens_seen": "non_padding",
    }  # fmt: skip


def held_out_loss(model: Any, seqs: list[list[int]]) -> float:
    """Mean next-token loss over held-out samples (one at a time, no packing)."""
    import torch

    model.eval()
    total = count = 0.0
    device = next(p for p in model.parameters()).device
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_available()):
        for seq in seqs:
            ids = torch.tensor([seq], device=device)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            total += float(loss) * (len(seq) - 1)
            count += len(seq) - 1
    model.train()
    return total / max(count, 1.0)


def run_plain(a: Any, seqs: list[list[int]], callbacks: list[Any]) -> tuple[Any, Any]:
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    if a.method != "qlora":
        raise ValueError("the plain recipe is the QLoRA guides' recipe: run it with --method qlora")
    model = _load(a)
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    model = get_peft_model(model, _lora("qlora"))

    class Samples(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(seqs)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return {"input_ids": seqs[i]}

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), workload.PAD, dtype=torch.long)
        att = torch.zeros(len(batch), n, dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b["input_ids"])] = torch.tensor(b["input_ids"])
            att[i, : len(b["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": att, "labels": ids.masked_fill(att == 0, -100)}

    args = TrainingArguments(
        output_dir="/tmp/bench-plain",
        **_common_args(a),
        lr_scheduler_type="linear",
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=Samples(), data_collator=collate, callbacks=callbacks
    )
    trainer.train()
    return trainer, trainer.model


def run_peer(a: Any, seqs: list[list[int]], callbacks: list[Any]) -> tuple[Any, Any]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = _load(a)
    cfg = SFTConfig(
        output_dir="/tmp/bench-peer",
        **_common_args(a),
        max_length=a.max_len,
        packing=True,
        use_liger_kernel=_cuda(),
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_dict({"input_ids": seqs}),
        processing_class=AutoTokenizer.from_pretrained(str(a.model_dir)),
        peft_config=_lora(a.method),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer, trainer.model


def kubeft_spec(a: Any, data: Path) -> dict[str, Any]:
    """The FineTuneJob spec kubeft's trainer runs (LoRA settings only for the LoRA methods, as the CRD)."""
    spec = {
        "model": {"source": str(a.model_dir)},
        "method": a.method,
        "dataset": {"source": str(data), "format": "text", "trainOn": "all"},
        "hyperparameters": {
            "epochs": 1,
            "learningRate": a.lr,
            "batchSize": a.batch,
            "gradientAccumulation": a.grad_accum,
            "maxSeqLength": a.max_len,
            "packing": True,
            "lora": {"r": 16, "alpha": 16, "dropout": 0.0, "targetModules": "all-linear"},
            "optimizer": _optimizer(),
            "seed": a.seed,
            # transformers reads a warmup below 1 as a ratio and rounds its steps up: 2 steps, as the peer
            "warmupRatio": (WARMUP_STEPS - 0.5) / a.steps if a.steps > WARMUP_STEPS else 0.0,
            "lrScheduler": "linear",
            "maxSteps": a.steps,
            "gradientCheckpointing": True,
        },
        "checkpoints": {"everySteps": 1_000_000, "keep": 1},
    }
    if a.method == "full":
        del spec["hyperparameters"]["lora"]
    return spec


def run_kubeft(a: Any, seqs: list[list[int]], callbacks: list[Any]) -> tuple[Any, Any]:
    import torch
    import yaml
    from kubeft_trainer.config import load_config
    from kubeft_trainer.status import StatusReporter
    from kubeft_trainer.train import Recipe

    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)  # a checkpoint left by an earlier run would be resumed
    data = workload.write_text_jsonl(seqs, work / "data.jsonl")
    spec_file = work / "job.yaml"
    spec_file.write_text(yaml.safe_dump(kubeft_spec(a, data)))
    env = {"KUBEFT_WORKDIR": str(work / "run")}
    cfg = load_config(spec_file, list(a.set or []), env=env)
    cfg.runtime.metrics_port = None
    cfg.runtime.report_status = False
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        mem = int(a.placement_memory) if a.placement_memory else int(props.total_memory)
        cfg.placement = {"gpuProduct": props.name, "gpuMemoryBytes": mem, "gpuCount": 1}
    status = StatusReporter()
    recipe = Recipe(cfg, status=status)
    recipe.setup()
    for cb in callbacks:
        recipe.trainer.add_callback(cb)
    recipe.train()
    a.extra["kubeft_summary"] = dict(recipe.summary)
    a.extra["kubeft_status"] = json.loads(json.dumps(getattr(status, "state", {}), default=str))
    a.extra["kubeft_args"] = {
        "per_device_train_batch_size": recipe.trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": recipe.trainer.args.gradient_accumulation_steps,
        "gradient_checkpointing": recipe.trainer.args.gradient_checkpointing,
        "attn_implementation": getattr(
            getattr(recipe.trainer.model, "config", None), "_attn_implementation", None
        ),
    }
    return recipe.trainer, recipe.trainer.model


RUNNERS = {"plain": run_plain, "peer": run_peer, "kubeft": run_kubeft}


def worker(a: Any) -> dict[str, Any]:
    """Runs one trainer; returns its measurements."""
    mem = measure.Memory()  # NVML baseline before CUDA is touched
    context_bytes = measure.cuda_context_bytes(mem.nvml)
    workload.keep_word_level_tokenizer()
    mem.reset()
    a.extra = {}
    shape = workload.SHAPES[a.shape]
    vocab, task = shape["vocab_size"], a.task_vocab
    seqs = workload.samples(a.num_samples, a.max_len, vocab, seed=0, subvocab=task)
    held = workload.samples(a.eval_samples, a.max_len, vocab, seed=99, subvocab=task)
    timer = measure.make_timer_callback(a.warmup)
    callbacks = [timer]
    if a.profile:  # the step just before timing starts; first, so that its report is not timed
        callbacks.insert(0, measure.make_profile_callback(max(0, a.warmup - 1), 1, Path(a.profile)))
    if a.env:
        os.environ.update(dict(kv.split("=", 1) for kv in a.env))
    trainer, model = RUNNERS[a.trainer](a, seqs, callbacks)
    res: dict[str, Any] = {"trainer": a.trainer, "label": a.label, "shape": a.shape, "method": a.method}
    res.update(timer.result())
    res.update(mem.result())
    res["cuda_context_bytes"] = context_bytes
    res["losses"] = timer.losses
    res["final_loss"] = round(sum(x for _, x in timer.losses[-3:]) / max(1, len(timer.losses[-3:])), 4)
    res["samples_per_step"] = None
    res["held_out_loss"] = round(held_out_loss(model, held), 4) if a.eval_samples else None
    flops_tok = measure.model_flops_per_token(shape, a.method)
    # attention FLOPs per real token of this sample distribution
    lengths = [len(s) for s in seqs]
    attn_tok = measure.attention_flops(shape, lengths) / max(1, sum(lengths))
    peak = measure.peak_flops(res.get("gpu", ""))
    res["model_flops_per_token"] = flops_tok + attn_tok
    res["mfu"] = round(res["tokens_per_s"] * (flops_tok + attn_tok) / peak, 4) if peak else None
    res["peak_flops"] = peak
    res.update(a.extra)
    del trainer, model
    return res
