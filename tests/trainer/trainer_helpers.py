"""Trainer test helpers: the tiny offline model and datasets (kubeft.dev.tinymodel), and job specs."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from kubeft.dev import tinymodel
from kubeft.dev.tinymodel import CHATML, QA, SYSTEM, build_tokenizer, write_jsonl

__all__ = ["CHATML", "QA", "ROWS", "SYSTEM", "build_model", "build_tokenizer", "job_spec", "write_jsonl"]

ROWS = {fmt: partial(tinymodel.rows, fmt) for fmt in ("alpaca", "sharegpt", "messages", "text")}


def build_model(out: Path, vocab_size: int, tokenizer: Any) -> None:
    """A random 2-layer Llama (hidden 64) saved as safetensors next to the tokenizer."""
    assert vocab_size == len(tokenizer)
    tinymodel.build_model(out, tokenizer)


def job_spec(model_dir: Path, data: Path, **hp: Any) -> dict[str, Any]:
    """A small FineTuneJob spec for CPU tests (LoRA, a few steps, local storage)."""
    hyper = {
        "epochs": 1,
        "learningRate": 5e-3,
        "batchSize": 4,
        "gradientAccumulation": 1,
        "maxSeqLength": 128,
        "packing": True,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": "all-linear"},
        "optimizer": "adamw_torch",
        "seed": 0,
        "warmupRatio": 0.0,
        "lrScheduler": "constant",
        "maxSteps": 4,
        "gradientCheckpointing": False,
    }
    hyper.update(hp)
    return {
        "model": {"source": str(model_dir)},
        "method": "lora",
        "dataset": {"source": str(data), "format": "auto", "trainOn": "responses"},
        "hyperparameters": hyper,
        "storage": {"bucket": "kubeft"},
        "checkpoints": {"everySteps": 2, "keep": 2},
        "export": {"formats": ["adapter"]},
    }
