"""Trainer test helpers: the tiny offline model and datasets (kubeft.dev.tinymodel), and job specs."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from kubeft_trainer.status import StatusReporter

from kubeft.dev import tinymodel
from kubeft.dev.tinymodel import CHATML, QA, SYSTEM, write_jsonl

__all__ = ["CHATML", "QA", "ROWS", "SYSTEM", "job_spec", "write_jsonl"]

ROWS = {fmt: partial(tinymodel.rows, fmt) for fmt in ("alpaca", "sharegpt", "messages", "text")}


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


class RecordingReporter(StatusReporter):
    """Keeps every status update, so tests see the phase sequence and values later updates replace."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[dict[str, Any]] = []

    def update(self, **fields: Any) -> None:
        self.updates.append(fields)
        super().update(**fields)

    def said(self, key: str) -> list[Any]:
        """Every value ``progress.<key>`` took, in order."""
        return [u["progress"][key] for u in self.updates if key in (u.get("progress") or {})]
