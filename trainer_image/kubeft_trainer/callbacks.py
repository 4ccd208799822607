"""Trainer callbacks: metrics and status per step, eval schedule, checkpoint upload, SIGTERM.

A step's loss (what `ProgressCallback` reports as trainLoss) is the mean cross-entropy over
the step's trainable tokens: TRL sums the per-token losses of every micro-batch of the
optimizer step and divides by the number of labelled targets of the whole step
(``num_items_in_batch``), so long and short samples weigh by their tokens, not per sample.
A step without any trainable token has no loss; `UntrainedStepGuard` keeps it from being
reported as 0.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubeft_trainer import distributed as dist_mod
from kubeft_trainer.checkpoint import LOCAL_PREFIX, Uploader, upload_part
from kubeft_trainer.metrics import TrainerMetrics
from kubeft_trainer.status import StatusReporter

log = logging.getLogger(__name__)

# Testing aid: seconds to sleep after each optimizer step, so that tests can kill a run mid-way
# deterministically. Never set in production.
ENV_DEBUG_STEP_DELAY = "KUBEFT_DEBUG_STEP_DELAY_SECONDS"


class StopFlag:
    """Set by SIGTERM (pod eviction/deletion); the training loop checkpoints and stops at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: int | None = None

    def install(self) -> None:
        """Handles SIGTERM in the main thread (signals can only be installed there)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: saving a final checkpoint and stopping", signum)
        self.signal = signum
        self._event.set()

    def set(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


def _round(value: float, digits: int = 4) -> float:
    return float(round(value, digits)) if math.isfinite(value) else 0.0


class ProgressCallback(TrainerCallback):
    """Per step: Prometheus gauges and the status progress; per eval: eval loss and perplexity."""

    def __init__(
        self, metrics: TrainerMetrics, status: StatusReporter, world: dict[str, int] | None = None
    ) -> None:
        self.metrics = metrics
        self.status = status
        # globalBatch (rows per optimizer step over every GPU) and worldSize, shown from the start
        self.progress: dict[str, Any] = dict(world or {})
        self._last_log_time: float | None = None
        self._last_tokens = 0
        self._step_start: float | None = None
        self._first_step: int | None = None
        self.tokens_per_second = 0.0
        self.delay = float(os.environ.get(ENV_DEBUG_STEP_DELAY, "0") or 0)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.metrics.set("total_steps", state.max_steps)
        self.metrics.set("step", state.global_step)
        self._last_log_time = time.monotonic()
        self._last_tokens = state.num_input_tokens_seen
        self._step_start = time.monotonic()
        self._first_step = state.global_step
        self.progress.update(
            step=state.global_step,
            totalSteps=state.max_steps,
            display=f"{state.global_step}/{state.max_steps}",
        )
        if state.global_step:  # started from a checkpoint
            self.progress["resumedFromStep"] = state.global_step
        self.status.update(progress=dict(self.progress))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.delay:
            time.sleep(self.delay)
        step = state.global_step
        self.metrics.set("step", step)
        self.metrics.set("epoch", state.epoch or 0.0)
        eta = self._eta(state)
        self.metrics.set("eta_seconds", eta)
        self.metrics.update_memory()
        self.progress.update(
            step=step,
            totalSteps=state.max_steps,
            display=f"{step}/{state.max_steps}",
            epoch=_round(state.epoch or 0.0),
            etaSeconds=int(eta),
        )
        self.status.update(progress=dict(self.progress))

    def _eta(self, state: TrainerState) -> float:
        if self._step_start is None or self._first_step is None or state.global_step <= self._first_step:
            return 0.0
        per_step = (time.monotonic() - self._step_start) / (state.global_step - self._first_step)
        return max(0.0, per_step * (state.max_steps - state.global_step))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        # a loss that is not a number reports nothing (the last value stays), never 0
        if "loss" in logs and not math.isfinite(logs["loss"]):
            logs = {k: v for k, v in logs.items() if k != "loss"}
        if "loss" in logs:
            self.metrics.set("train_loss", logs["loss"])
            self.progress["trainLoss"] = _round(logs["loss"])
        if "learning_rate" in logs:
            self.metrics.set("learning_rate", logs["learning_rate"])
        if logs.get("grad_norm") is not None:
            self.metrics.set("grad_norm", float(logs["grad_norm"]))
        now = time.monotonic()
        tokens = state.num_input_tokens_seen
        if self._last_log_time is not None and tokens > self._last_tokens and now > self._last_log_time:
            self.tokens_per_second = (tokens - self._last_tokens) / (now - self._last_log_time)
            self.metrics.set("tokens_per_second", self.tokens_per_second)
            self.metrics.inc("tokens", tokens - self._last_tokens)
            self.progress["tokensPerSecond"] = _round(self.tokens_per_second, 1)
        self._last_log_time, self._last_tokens = now, tokens
        if "loss" in logs:
            log.info(
                "step %d/%d loss %.4f lr %.3g grad_norm %.3f tokens/s %.0f",
                state.global_step,
                state.max_steps,
                logs["loss"],
                logs.get("learning_rate", 0.0),
                float(logs.get("grad_norm") or 0.0),
                self.tokens_per_second,
            )
        elif "learning_rate" in logs and "grad_norm" in logs:  # a training step without a loss
            log.info("step %d/%d no loss (no trainable token)", state.global_step, state.max_steps)
        self.status.update(progress=dict(self.progress))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and "eval_loss" in metrics:
            loss = float(metrics["eval_loss"])
            self.metrics.set("eval_loss", loss)
            self.metrics.set("eval_perplexity", perplexity(loss))
            self.progress["evalLoss"] = _round(loss)
            self.status.update(progress=dict(self.progress))
            log.info("eval at step %d: loss %.4f perplexity %.3f", state.global_step, loss, perplexity(loss))


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run does not report inf."""
    return math.exp(min(loss, 50.0))


class EvalScheduleCallback(TrainerCallback):
    """Evaluates every N steps during training; the final eval is the recipe's own (phase Evaluating)."""

    def __init__(self, every_steps: int | None) -> None:
        self.every = every_steps

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            control.should_evaluate = True


class CheckpointCallback(TrainerCallback):
    """Queues every checkpoint the Trainer saves for upload; turns SIGTERM into save-and-stop.

    Under torchrun: a SIGTERM seen by any rank stops every rank at the same step (an all-reduce of
    the flag each step), so that they save together; rank 0 alone has an uploader. FSDP ranks on
    other nodes write their shards to their own disks: each node's local rank 0 uploads its node's
    files (:func:`upload_part`) and rank 0 lists them in the manifest, written last.
    """

    def __init__(
        self,
        uploader: Uploader | None,
        stop: StopFlag,
        rank: dist_mod.Rank | None = None,
        device: Any = None,
        sharded: bool = False,
        store: Any = None,
        job_root: str = "",
    ) -> None:
        self.uploader = uploader
        self.stop = stop
        self.rank = rank or dist_mod.Rank()
        self.device = device
        self.sharded = sharded  # FSDP: every rank's shards belong to the checkpoint
        self.store = store
        self.job_root = job_root
        self.stopped_early = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if dist_mod.any_rank(self.stop.requested, self.rank, self.device):
            self.stop.set()
            control.should_save = True
            control.should_training_stop = True
            self.stopped_early = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        step = state.global_step
        local = Path(str(args.output_dir)) / f"{LOCAL_PREFIX}{step}"
        others: list[dict[str, Any]] = []
        if self.rank.distributed:
            dist_mod.barrier(self.rank)  # every rank's files are written
            if self.sharded and self.rank.nnodes > 1:
                others = self._node_parts(step, local)
        if self.uploader is not None:
            self.uploader.submit(step, local, others)

    def _node_parts(self, step: int, local: Path) -> list[dict[str, Any]]:
        """FSDP on several nodes: the other nodes upload their shards; rank 0 gets their file lists."""
        import json

        key = f"checkpoint-{step}"
        if self.rank.local_main and not self.rank.main:
            files = upload_part(self.store, self.job_root, step, local)
            dist_mod.publish(self.rank, key, json.dumps(files))
            return []
        if self.rank.main:
            return [f for part in dist_mod.collect(self.rank, key) for f in json.loads(part)]
        return []


def trainable_tokens(batches: list[dict[str, Any]]) -> int:
    """Labelled targets in the micro-batches of one step (the first token of a row is never one)."""
    total = 0
    for batch in batches:
        labels = batch.get("shift_labels")
        if labels is None:
            labels = batch["labels"][..., 1:]
        total += int((labels != -100).sum())
    return total


class UntrainedStepGuard:
    """Trainer mixin: a step without any trainable token reports no loss instead of 0.

    TRL divides a step's summed token losses by its trainable tokens clamped to 1, so a step
    whose labels are all masked logs loss 0.0, which reads as a perfect fit. The dataset code
    drops samples that would do this; should such a step still happen, its "loss" is left out
    of the log (the metrics, the status and the LOSS column keep the previous value) and the
    step is listed in `untrained_steps`. Use as ``class T(UntrainedStepGuard, SFTTrainer)``.
    """

    state: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.untrained_steps: list[int] = []

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: Any
    ) -> tuple[list[Any], Any]:
        base = cast(Any, super())
        batches, num_items = base.get_batch_samples(epoch_iterator, num_batches, device)
        # called once per optimizer step, before it: the step about to run is global_step + 1
        if batches and all("labels" in b for b in batches) and trainable_tokens(batches) == 0:
            self.untrained_steps.append(int(self.state.global_step) + 1)
        return batches, num_items

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and int(self.state.global_step) in self.untrained_steps:
            log.warning("step %d had no trainable token: no loss reported for it", self.state.global_step)
            del logs["loss"]
        cast(Any, super()).log(logs, *args, **kwargs)
