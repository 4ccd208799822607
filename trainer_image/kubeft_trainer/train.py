"""The training recipe: one story from config to exported artifacts.

    setup()    storage, metrics server, status (Initializing), model + tokenizer + datasets,
               the newest complete checkpoint to resume from, TRL's SFTTrainer
    train()    status Training; SFT with checkpoints uploaded in the background;
               SIGTERM → final checkpoint, then exit 143
    evaluate() status Evaluating; loss/perplexity on the eval set, sample generations
    export()   status Exporting; adapter, merged-16bit, GGUF (llama.cpp), uploaded under artifacts/,
               and pushed as OCI artifacts when export.oci names a repository
    cleanup()  waits for uploads, final status, stops the metrics server

TRL's SFTTrainer does the heavy lifting as its docs recommend: pre-tokenized rows with our
labels, bfd packing (padding-free, position_ids reset per sample), its chunked LM head
loss, LoRA through peft_config, and Liger's kernels on CUDA.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from kubeft import contract
from kubeft import gguf as gguf_formats
from kubeft_trainer import attention
from kubeft_trainer import data as data_mod
from kubeft_trainer import distributed as dist_mod
from kubeft_trainer import export as export_mod
from kubeft_trainer import gguf as gguf_mod
from kubeft_trainer import oci as oci_mod
from kubeft_trainer import profile as profile_mod
from kubeft_trainer.callbacks import (
    CheckpointCallback,
    EvalScheduleCallback,
    ProgressCallback,
    StopFlag,
    UntrainedStepGuard,
    perplexity,
)
from kubeft_trainer.checkpoint import IncompatibleCheckpoint, Uploader, UploadResult, download_latest
from kubeft_trainer.config import TrainerConfig
from kubeft_trainer.errors import InvalidInputError, Terminated, TrainerError
from kubeft_trainer.metrics import TrainerMetrics
from kubeft_trainer.model import (
    Hardware,
    detect_hardware,
    liger_available,
    load_model,
    load_tokenizer,
    lora_config,
    parameter_counts,
    versions,
)
from kubeft_trainer.status import (
    PHASE_EVALUATING,
    PHASE_EXPORTING,
    PHASE_TRAINING,
    StatusReporter,
    make_reporter,
)
from kubeft_trainer.storage import RetryPolicy, Storage

log = logging.getLogger(__name__)

BNB_OPTIMIZERS = frozenset({"adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"})
# bitsandbytes' optimizers keep their states beside parameters that FSDP shards and regathers: they do
# not work under FSDP (bitsandbytes-foundation/bitsandbytes#89); the operator refuses the combination
FSDP_REFUSED_OPTIMIZERS = BNB_OPTIMIZERS
FINAL_UPLOAD_TIMEOUT_SECONDS = 1800.0
DEFAULT_BUCKET = "kubeft"  # local runs without spec.storage.bucket (the operator always sets one)
GENERATION_MAX_NEW_TOKENS = 64


class Recipe:
    """One FineTuneJob run. Call setup(), train(), evaluate(), export(), cleanup() in order (or run())."""

    def __init__(
        self,
        cfg: TrainerConfig,
        status: StatusReporter | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = cfg.spec
        self.method = cfg.resolved_method
        self.workdir = cfg.runtime.workdir
        self.output_dir = self.workdir / "output"
        # everything this run stores lives under <namespace>/<name>/<uid>: a job created again under
        # the same name (a new UID) starts fresh
        self.job_root = contract.job_prefix(cfg.job.namespace, cfg.job.name, cfg.job.uid)
        self.stop = StopFlag()
        # several processes (torchrun): rank 0 alone writes the status, uploads and exports
        self.rank = dist_mod.current()
        self.metrics = TrainerMetrics.create(cfg.job.namespace, cfg.job.name, self.rank.rank)
        if status is None:
            status = (
                make_reporter(
                    cfg.runtime.report_status,
                    cfg.job.namespace,
                    cfg.job.name,
                    cfg.runtime.status_interval_seconds,
                    uid=cfg.job.uid,
                )
                if self.rank.main
                else StatusReporter()
            )
        self.status = status
        self.retry_policy = retry_policy or RetryPolicy()
        self.storage = Storage(
            self.spec.storage.endpoint,
            self.spec.storage.bucket or DEFAULT_BUCKET,
            self.workdir / "storage",
            self.retry_policy,
        )
        self.hw: Hardware = detect_hardware()
        self.strategy = self._strategy()
        if self.strategy == "fsdp":
            dist_mod.prefer_expandable_segments()
        if self.hw.cuda and self.rank.distributed:
            import torch

            torch.cuda.set_device(self.rank.local_rank)
        self.metrics_port: int | None = None
        self.trainer: Any = None
        self.tokenizer: Any = None
        self.model_dir: Path | None = None
        self.uploader: Uploader | None = None
        self.resume_dir: Path | None = None
        self.datasets: data_mod.Datasets | None = None
        self.profile: profile_mod.Profile | None = None
        self.args: Any = None
        self.summary: dict[str, Any] = {}
        self.artifacts: dict[str, Any] = {}
        self._t0 = time.monotonic()

    # --- setup ------------------------------------------------------------------

    def setup(self) -> None:
        import datasets

        datasets.disable_progress_bars()
        self.stop.install()
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = dist_mod.metrics_port(self.cfg.runtime.metrics_port, self.rank)
        if port is not None:
            self.metrics_port = self.metrics.serve(port)
        if self.rank.distributed:
            self._join_world()
        store = self.storage.job_store
        source = self.spec.model.source
        self._stage(f"fetching the model {source}")
        self.model_dir = dist_mod.node_first(
            self.rank,
            "model",
            lambda: self.storage.fetch(
                source,
                self.workdir / "model",
                "spec.model.source",
                self._download_progress(f"the model {source}"),
            ),
            str,
            Path,
        )
        self.tokenizer = load_tokenizer(self.model_dir)
        if self.rank.main and any(gguf_formats.is_gguf(f) for f in self.spec.export_formats(self.method)):
            # rank 0 alone exports, so it alone checks (a refusal ends every rank)
            self._stage("checking that llama.cpp can convert the model to GGUF (vocabulary only)")
            gguf_mod.check_convertible(self.model_dir, self.workdir / "gguf-check")
        self._stage(f"preparing the dataset {self.spec.dataset.source}")
        self.datasets = self._load_datasets()
        self.metrics.inc("dataset_rows_usable", self.datasets.report.usable)
        self.metrics.inc("dataset_rows_malformed", self.datasets.report.malformed)
        self._report_lengths()
        self._check_stop()
        self._stage("looking for a checkpoint to resume from")
        resumed = dist_mod.node_first(
            self.rank,
            "resume",
            lambda: self._resume(store),
            lambda r: None if r is None else [r[0], str(r[1])],
            lambda v: None if v is None else (int(v[0]), Path(v[1])),
        )
        if resumed is not None:
            _, self.resume_dir = resumed
        if self.rank.main:
            self.uploader = Uploader(
                store,
                self.job_root,
                self.spec.checkpoints.keep,
                self.retry_policy,
                on_uploaded=self._on_checkpoint_uploaded,
                on_retry=lambda exc: self.metrics.inc("checkpoint_upload_retries"),
                extra_manifest={
                    "method": self.method,
                    "baseModel": self.spec.model.source,
                    "strategy": self.strategy,
                    "worldSize": self.rank.world_size,
                },
            )
        host = profile_mod.available_host_memory()
        self.profile = profile_mod.choose(
            self.spec,
            self.method,
            profile_mod.shape_of(self.model_dir),
            self.hw.cuda,
            self.hw.memory_bytes,
            self.cfg.placement,
            os.environ.get(profile_mod.ENV_PROFILE, "auto"),
            # the node's processes share its host memory (offloaded activations are pinned there)
            host // self.rank.local_world_size if host is not None else None,
        )
        # packed rows: each sample attends only to itself, without a (T×T) mask
        attn = attention.ATTN_IMPLEMENTATION if self.spec.hyperparameters.packing else "sdpa"
        quantised = " and quantising it to 4-bit NF4" if self.method == "qlora" and self.hw.cuda else ""
        self._stage(f"loading the model{quantised}")
        if self.strategy == "fsdp":
            # transformers reads the FSDP settings (rank 0 loads, the others wait for its weights)
            # from the arguments' environment while it loads the model
            self.args = self.training_args()
        model = load_model(
            self.model_dir,
            self.method,
            self.hw,
            attn,
            device=self.rank.local_rank,
            fsdp=self.strategy == "fsdp",
        )
        self._stage("building the trainer (LoRA adapters, packing, optimizer)")
        self.trainer = self._build_trainer(model)
        # malformed rows and cut samples stay visible in the status for the whole run; a clean
        # dataset clears old messages
        self.status.update(progress={"message": "; ".join(self._dataset_warnings())})
        self._banner()

    def _resume(self, store: Any) -> tuple[int, Path] | None:
        """This run's newest checkpoint, else the one ``spec.resumeFrom`` names; None: start fresh.

        Either must have been trained on the same base model with the same method (its manifest
        says), else the job fails with a clear reason instead of loading the wrong weights.
        """
        expect = {"method": self.method, "baseModel": self.spec.model.source}
        policy = self.storage._bounded()
        origin = self.spec.resume_from
        fits = self._checkpoint_fits
        try:
            resumed = download_latest(store, self.job_root, self.output_dir, policy, expect, fits=fits)
            root, step = self.job_root, None
            if resumed is None and origin:
                source, root, step = self._resume_source(origin)
                resumed = download_latest(source, root, self.output_dir, policy, expect, step, fits=fits)
                if resumed is None:
                    what = f"step {step}" if step is not None else "a complete checkpoint"
                    raise InvalidInputError(f"spec.resumeFrom {origin}: {what} is not there")
                store = source
        except IncompatibleCheckpoint as exc:
            where = "spec.resumeFrom" if origin and root != self.job_root else "this job's checkpoint"
            raise InvalidInputError(f"{where}: {exc}: refusing to resume from it") from None
        if resumed is None:
            return None
        done = resumed[0]
        latest = {"latest": store.uri(contract.checkpoint_prefix(root, done) + "/"), "step": done}
        if root != self.job_root:
            latest["resumedFrom"] = origin
        self.status.update(checkpoints=latest)
        return resumed

    def _checkpoint_fits(self, manifest: dict[str, Any]) -> str | None:
        """Why a checkpoint cannot be resumed by this run's world (None: it can).

        A DDP or one-GPU checkpoint holds whole weights and optimizer states: any world resumes it
        (with another world size the global batch, and so the data order, changes; the log says
        so). An FSDP checkpoint holds each rank's shards: it resumes under FSDP with the same world
        size only.
        """
        was = str(manifest.get("strategy") or "ddp")
        size = int(manifest.get("worldSize") or 1)
        now, world = self.strategy, self.rank.world_size
        if was == "fsdp" and (now != "fsdp" or size != world):
            return (
                f"holds FSDP shards of {size} GPUs; this job trains with {now} on {world} GPU(s) "
                f"(resume it with distributed.strategy fsdp on {size} GPUs in all)"
            )
        if was != "fsdp" and now == "fsdp":
            return (
                f"holds whole weights ({'DDP on ' + str(size) + ' GPUs' if size > 1 else 'one GPU'}); "
                "this job trains with fsdp, which resumes FSDP checkpoints only (use strategy ddp)"
            )
        if size != world:
            log.warning(
                "resuming a checkpoint made on %d GPU(s) with %d: the global batch is now %d rows",
                size,
                world,
                self.spec.global_batch,
            )
        return None

    def _strategy(self) -> str:
        """ddp | fsdp: the operator resolves ``auto``; a local run of several processes takes ddp."""
        wanted = self.spec.distributed.strategy
        if not self.rank.distributed or wanted != "fsdp":
            return "ddp"
        if not self.hw.cuda:
            # accelerate shards with FSDP on accelerators only; CPU processes (tests, laptops) replicate
            log.warning("distributed.strategy fsdp needs GPUs: these CPU processes train as DDP")
            return "ddp"
        return "fsdp"

    def _join_world(self) -> None:
        """Makes the training arguments, which starts the process group (NCCL or gloo, with timeout)."""
        hp = self.spec.hyperparameters
        if self.strategy == "fsdp" and hp.optimizer in FSDP_REFUSED_OPTIMIZERS and self.hw.cuda:
            raise InvalidInputError(
                f"spec.hyperparameters.optimizer {hp.optimizer} (bitsandbytes) does not work with "
                "distributed.strategy fsdp: use adamw_torch (or adamw_torch_fused), or strategy ddp"
            )
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            # NCCL between GPUs, gloo on CPU; a collective that waits past the timeout (a dead rank)
            # fails the process, and torchrun then ends the gang
            dist.init_process_group(
                dist_mod.backend(self.hw.cuda),
                timeout=timedelta(seconds=dist_mod.collective_timeout()),
                device_id=torch.device("cuda", self.rank.local_rank) if self.hw.cuda else None,
            )
        log.info(
            "%s: %s over %s, global batch %d (batch %d × accumulation %d × %d GPUs), collective timeout %ds",
            dist_mod.describe(self.rank),
            self.strategy.upper(),
            dist_mod.backend(self.hw.cuda),
            self.global_batch,
            hp.batch_size,
            hp.gradient_accumulation,
            self.rank.world_size,
            dist_mod.collective_timeout(),
        )

    @property
    def global_batch(self) -> int:
        """Rows per optimizer step over the whole world: batch × accumulation × world size."""
        hp = self.spec.hyperparameters
        return hp.batch_size * hp.gradient_accumulation * self.rank.world_size

    def _resume_source(self, uri: str) -> tuple[Any, str, int | None]:
        """(store, job run prefix, step or None) of a ``spec.resumeFrom`` URI.

        ``s3://<bucket>/<ns>/<name>/<uid>/`` resumes that run's newest checkpoint;
        ``.../checkpoints/step-N/`` that step.
        """
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not bucket or not key.strip("/"):
            raise InvalidInputError(
                f"spec.resumeFrom {uri}: expected s3://<bucket>/<namespace>/<job>/<uid>/ or a checkpoint "
                "in it"
            )
        key = key.strip("/")
        m = re.fullmatch(r"(.+)/checkpoints/step-(\d+)", key)
        if m:
            return self.storage.store(bucket), m.group(1), int(m.group(2))
        return self.storage.store(bucket), key.removesuffix("/checkpoints"), None

    def _stage(self, message: str) -> None:
        """What initialisation is doing now: the log and status.progress.message (rate-limited)."""
        log.info("%s", message)
        self.status.update(progress={"message": message})

    def _report_lengths(self) -> None:
        """What maxSeqLength cuts, per dataset: an Event (Warning past the stated share), summary, status."""
        assert self.datasets is not None
        for prefix, lengths in (("train", self.datasets.lengths), ("eval", self.datasets.eval_lengths)):
            if lengths is None:
                continue
            self.summary.update(lengths.metrics(prefix))
            if lengths.warning:
                self.status.event("Warning", "DatasetTruncated", lengths.summary())
            else:
                self.status.event("Normal", "DatasetLengths", lengths.summary())
        if self.datasets.lengths is not None:
            self.summary["suggestedMaxSeqLength"] = self.datasets.lengths.suggested_max_seq_length
        warnings = self._dataset_warnings()
        if warnings:  # while preparing; the end of setup sets it again
            self.status.update(progress={"message": "; ".join(warnings)})

    def _dataset_warnings(self) -> list[str]:
        """The dataset's warnings for status.progress.message: malformed rows, samples cut by maxSeqLength."""
        assert self.datasets is not None
        said = []
        if self.datasets.report.malformed:
            said.append(self.datasets.report.summary())
        for lengths in (self.datasets.lengths, self.datasets.eval_lengths):
            if lengths is not None and lengths.truncated:
                said.append(lengths.summary())
        return said

    def _download_progress(self, what: str) -> Any:
        def report(done: int, total: int, files_done: int, files: int) -> None:
            self.status.update(
                progress={
                    "message": f"downloading {what}: {done / 1e9:.2f} of {total / 1e9:.2f} GB "
                    f"({files_done}/{files} files)"
                }
            )

        return report

    def _load_datasets(self) -> data_mod.Datasets:
        ds = self.spec.dataset
        train_path = self.storage.fetch(ds.source, self.workdir / "data" / "train", "spec.dataset.source")
        eval_path = None
        if ds.eval is not None and ds.eval.source:
            eval_path = self.storage.fetch(
                ds.eval.source, self.workdir / "data" / "eval", "spec.dataset.eval.source"
            )
        template = data_mod.resolve_chat_template(
            self.tokenizer, None if ds.chat_template == "auto" else ds.chat_template
        )
        self.tokenizer.chat_template = template
        return data_mod.build_datasets(
            train_path,
            ds.source,
            ds.format,
            self.tokenizer,
            template,
            ds.train_on,
            self.spec.hyperparameters.seed,
            eval_split=ds.eval.split if ds.eval is not None else None,
            eval_path=eval_path,
            eval_source=ds.eval.source if ds.eval is not None else None,
            max_seq_length=self.spec.hyperparameters.max_seq_length,
        )

    def training_args(self) -> Any:
        """TRL SFTConfig from the spec (also used by tests to check the mapping)."""
        from trl import SFTConfig

        hp = self.spec.hyperparameters
        optim = hp.optimizer
        if not self.hw.cuda and optim in BNB_OPTIMIZERS:
            log.info("optimizer %s needs a GPU; using adamw_torch on CPU", optim)
            optim = "adamw_torch"
        use_liger = liger_available(self.hw)
        prof = self.profile or profile_mod.Profile(
            "configured", hp.batch_size, hp.gradient_accumulation, hp.gradient_checkpointing, False, None, ""
        )
        parallel: dict[str, Any] = {}
        checkpointing = prof.gradient_checkpointing
        if self.rank.distributed:
            parallel.update(
                ddp_backend=dist_mod.backend(self.hw.cuda),
                ddp_timeout=dist_mod.collective_timeout(),
                ddp_find_unused_parameters=False,
            )
        bf16, fp16 = self.hw.bf16, self.hw.fp16
        if self.strategy == "fsdp":
            parallel.update(fsdp=True, fsdp_config=self.fsdp_config(checkpointing))
            checkpointing = False  # FSDP checkpoints activations itself (fsdp_config)
            if self.method == "full":
                # without autocast accelerate keeps the 16-bit weights as they are (no fp32 master copy,
                # which would double them): the same pure 16-bit training as on one GPU
                bf16 = fp16 = False
        return SFTConfig(
            output_dir=str(self.output_dir),
            per_device_train_batch_size=prof.micro_batch,
            per_device_eval_batch_size=hp.batch_size,
            gradient_accumulation_steps=prof.grad_accum,
            num_train_epochs=hp.epochs,
            max_steps=hp.max_steps if hp.max_steps is not None else -1,
            learning_rate=hp.learning_rate,
            lr_scheduler_type=hp.lr_scheduler,
            warmup_steps=hp.warmup_ratio,
            weight_decay=hp.weight_decay,
            max_grad_norm=hp.max_grad_norm,
            optim=optim,
            seed=hp.seed,
            data_seed=hp.seed,
            bf16=bf16,
            fp16=fp16,
            use_cpu=not self.hw.cuda,
            gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
            activation_offloading=prof.offload_activations and self.strategy != "fsdp",
            max_length=hp.max_seq_length,
            packing=hp.packing,
            packing_strategy="bfd",
            padding_free=hp.packing,
            eval_packing=False,
            use_liger_kernel=use_liger,
            logging_steps=1,
            logging_first_step=True,
            save_strategy="steps",
            save_steps=self.spec.checkpoints.every_steps,
            save_total_limit=None,
            eval_strategy="no",
            include_num_input_tokens_seen="non_padding",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataset_num_proc=None,
            remove_unused_columns=True,
            **parallel,
        )

    def fsdp_config(self, activation_checkpointing: bool) -> dict[str, Any]:
        """FSDP2 through accelerate: each decoder layer a unit, sharded checkpoints, rank 0 loads.

        Parameters, gradients and optimizer states are sharded over the world; checkpoints are
        saved sharded (each rank its shards, torch.distributed.checkpoint) and resumed so.
        """
        return {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "reshard_after_forward": True,
            "state_dict_type": "SHARDED_STATE_DICT",
            # rank 0 reads the weights, the others get them from it: one host copy per node
            "cpu_ram_efficient_loading": True,
            "activation_checkpointing": activation_checkpointing,
        }

    def _build_trainer(self, model: Any) -> Any:
        from transformers import PrinterCallback
        from trl import SFTTrainer

        assert self.datasets is not None and (self.uploader is not None or not self.rank.main)
        args = self.training_args()
        world = {"globalBatch": self.global_batch, "worldSize": self.rank.world_size}
        callbacks = [
            ProgressCallback(self.metrics, self.status, world),
            EvalScheduleCallback(self.spec.eval_every_steps if self.datasets.eval is not None else None),
            CheckpointCallback(
                self.uploader,
                self.stop,
                self.rank,
                device=self._device(),
                sharded=self.strategy == "fsdp",
                store=self.storage.job_store,
                job_root=self.job_root,
            ),
        ]
        peft_config = None if self.method == "full" else lora_config(self.spec.hyperparameters.lora)
        strategy, method = self.strategy, self.method

        class Trainer(UntrainedStepGuard, SFTTrainer):  # type: ignore[misc]
            """SFTTrainer that never reports a loss of 0 for a step without trainable tokens."""

            @staticmethod
            def get_optimizer_cls_and_kwargs(args: Any, model: Any = None) -> tuple[Any, Any]:
                cls, kwargs = SFTTrainer.get_optimizer_cls_and_kwargs(args, model)
                return cls, dist_mod.sharded_optimizer_kwargs(cls, kwargs, strategy, method)

            def _load_optimizer_and_scheduler(self, checkpoint: Any) -> Any:
                # transformers maps a resumed optimizer state to args.device, which accelerate names
                # "cpu:N" in a world of CPU processes, and torch cannot restore storages there
                import torch

                if self.args.world_size <= 1 or self.args.device.type != "cpu":
                    return super()._load_optimizer_and_scheduler(checkpoint)
                load = torch.load

                def on_cpu(*args: Any, **kwargs: Any) -> Any:
                    if str(kwargs.get("map_location", "")).startswith("cpu"):
                        kwargs["map_location"] = "cpu"
                    return load(*args, **kwargs)

                torch.load = on_cpu  # type: ignore[assignment]
                try:
                    return super()._load_optimizer_and_scheduler(checkpoint)
                finally:
                    torch.load = load

        try:
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=self.datasets.train,
                eval_dataset=self.datasets.eval,
                processing_class=self.tokenizer,
                peft_config=peft_config,
                callbacks=callbacks,
            )
        except ValueError as exc:  # e.g. target modules that the model does not have
            raise InvalidInputError(f"cannot set up training: {exc}") from exc
        # Our ProgressCallback logs each step; the Trainer's printer would repeat it as raw dicts.
        trainer.remove_callback(PrinterCallback)
        return trainer

    def _device(self) -> Any:
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.hw.cuda else torch.device("cpu")

    def _banner(self) -> None:
        trainable, total = parameter_counts(self.trainer.model)
        vers = " ".join(f"{k}={v}" for k, v in versions().items())
        gib = self.hw.memory_bytes / 2**30
        log.info(
            "kubeft trainer: job %s/%s method %s", self.cfg.job.namespace, self.cfg.job.name, self.method
        )
        log.info(
            "device: %s %s (%.1f GiB), compute dtype %s", self.hw.device, self.hw.name, gib, self.hw.dtype
        )
        log.info("versions: %s", vers)
        log.info(
            "trainable params: %s of %s (%.3f%%)",
            f"{trainable:,}",
            f"{total:,}",
            100.0 * trainable / max(total, 1),
        )
        args = self.trainer.args
        hp = self.spec.hyperparameters
        log.info(
            "global batch %d rows per optimizer step: batch %d × accumulation %d × %d GPU(s) (%s); "
            "learning rate %g (not rescaled)",
            self.global_batch,
            hp.batch_size,
            hp.gradient_accumulation,
            self.rank.world_size,
            self.strategy if self.rank.distributed else "one process",
            hp.learning_rate,
        )
        self.summary["globalBatch"] = self.global_batch
        self.summary["worldSize"] = self.rank.world_size
        log.info(
            "packing %s (padding-free %s), liger %s, gradient checkpointing %s, optimizer %s, %d steps",
            args.packing,
            args.padding_free,
            args.use_liger_kernel,
            args.gradient_checkpointing,
            args.optim,
            self.trainer.args.max_steps if self.trainer.args.max_steps > 0 else -1,
        )
        self.summary["trainableParameters"] = trainable
        self.summary["totalParameters"] = total
        self._report_profile()

    def _report_profile(self) -> None:
        """The profile and its reason: start banner, metrics, status (progress.profile*), summary."""
        prof = self.profile
        if prof is None:
            return
        log.info("%s", prof.describe())
        log.info("attention: %s", self.trainer.model.config._attn_implementation)
        self.metrics.set("profile_fast", 1.0 if prof.name == "fast" else 0.0)
        self.metrics.set("micro_batch_size", prof.micro_batch)
        self.metrics.set("gradient_accumulation_steps", prof.grad_accum)
        self.metrics.set("gradient_checkpointing", 1.0 if prof.gradient_checkpointing else 0.0)
        self.metrics.set("activation_offloading", 1.0 if prof.offload_activations else 0.0)
        if prof.estimated_bytes:
            self.metrics.set("estimated_peak_bytes", prof.estimated_bytes)
            self.summary["estimatedPeakBytes"] = prof.estimated_bytes
        self.summary["microBatchSize"] = prof.micro_batch
        self.summary["gradientAccumulationSteps"] = prof.grad_accum
        self.status.update(progress={"profile": prof.name, "profileReason": prof.reason})

    # --- train ------------------------------------------------------------------

    def train(self) -> None:
        self.status.update(phase=PHASE_TRAINING)
        resume = str(self.resume_dir) if self.resume_dir is not None else None
        result = self.trainer.train(resume_from_checkpoint=resume)
        # the Trainer's mean counts a step without trainable tokens as a loss of 0; leave it out
        loss, steps = float(result.training_loss), int(self.trainer.state.global_step)
        untrained = len(getattr(self.trainer, "untrained_steps", []))
        if untrained:
            self.summary["untrainedSteps"] = untrained
            loss = loss * steps / (steps - untrained) if steps > untrained else math.nan
        if math.isfinite(loss):
            self.summary["trainLoss"] = round(loss, 6)
        self.summary["trainRuntimeSeconds"] = round(float(result.metrics.get("train_runtime", 0.0)), 2)
        self.summary["steps"] = int(self.trainer.state.global_step)
        if self.stop.requested:
            log.warning("stopping after a final checkpoint at step %d", self.trainer.state.global_step)
            try:
                if self.uploader is not None:
                    self.uploader.flush(timeout=FINAL_UPLOAD_TIMEOUT_SECONDS)
            finally:
                # torchrun stops every worker once one exits: the others wait for rank 0's upload
                dist_mod.main_done(self.rank, "final-checkpoint", FINAL_UPLOAD_TIMEOUT_SECONDS)
            raise Terminated(
                f"terminated by signal at step {self.trainer.state.global_step}; checkpoint saved"
            )

    def _on_checkpoint_uploaded(self, result: UploadResult) -> None:
        self.metrics.upload_seconds.observe(result.seconds)
        self.metrics.inc("checkpoint_upload_bytes", result.bytes)
        self.metrics.inc("checkpoints")
        self.status.update(checkpoints={"latest": result.uri, "step": result.step})

    def _check_stop(self) -> None:
        if self.stop.requested:
            raise Terminated("terminated by signal before training started")

    # --- evaluate ---------------------------------------------------------------

    def evaluate(self) -> None:
        self._check_stop()
        if self.trainer.eval_dataset is None and not self.spec.eval_prompts:
            return
        self.status.update(phase=PHASE_EVALUATING)
        if self.trainer.eval_dataset is not None:
            metrics = self.trainer.evaluate()
            loss = float(metrics["eval_loss"])
            self.summary["evalLoss"] = round(loss, 6)
            self.summary["evalPerplexity"] = round(perplexity(loss), 4)
        if self.spec.eval_prompts:
            self._generate_samples()

    def _generate_samples(self) -> None:
        import torch

        # DDP: rank 0 generates with its replica; FSDP: every rank takes part in each forward
        sharded = self.strategy == "fsdp" and self.rank.distributed
        if self.rank.distributed and not sharded and not self.rank.main:
            return
        model = self.trainer.model
        model.eval()
        was_cache = model.config.use_cache
        model.config.use_cache = True
        out = self.workdir / "artifacts" / "eval"
        out.mkdir(parents=True, exist_ok=True)
        path = (
            out / "generations.jsonl" if self.rank.main else out / f"generations-rank-{self.rank.rank}.jsonl"
        )
        with path.open("w") as f:
            for prompt in self.spec.eval_prompts:
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
                enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    ids = model.generate(
                        **enc,
                        max_new_tokens=GENERATION_MAX_NEW_TOKENS,
                        do_sample=False,
                        pad_token_id=self.tokenizer.pad_token_id,
                        synced_gpus=sharded,
                    )
                completion = self.tokenizer.decode(
                    ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True
                )
                f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
        model.config.use_cache = was_cache
        if not self.rank.main:
            path.unlink()
            return
        log.info("wrote %d sample generations to %s", len(self.spec.eval_prompts), path)

    # --- export -----------------------------------------------------------------

    def export(self) -> None:
        self._check_stop()
        gathered = None
        if self.strategy == "fsdp" and self.rank.distributed:
            # every rank sends its shards; rank 0 gets the whole state dict (in host memory)
            gathered = self.trainer.accelerator.get_state_dict(self.trainer.model)
        if not self.rank.main:  # rank 0 alone exports
            return
        store = self.storage.job_store
        self.status.update(phase=PHASE_EXPORTING)
        local = self.workdir / "artifacts"
        formats = list(self.spec.export_formats(self.method))
        ggufs = [f for f in formats if gguf_formats.is_gguf(f)]
        skipped: list[str] = []  # why a format asked for is missing: status.progress.message
        adapter_dir = None
        if gathered is not None:
            adapter_dir = self._export_gathered(gathered, local, formats)
        elif self.method != "full":
            adapter_dir = export_mod.export_adapter(
                self.trainer.model, self.tokenizer, local / export_mod.ADAPTER
            )
        merged = False
        if export_mod.MERGED in formats or ggufs:  # the GGUF files are made from the merged model
            assert self.model_dir is not None
            if self.method == "full" and gathered is not None:
                merged = True  # written by _export_gathered
            elif self.method == "full":
                export_mod.export_merged(
                    self.model_dir, self.method, self.hw, self.tokenizer, local / export_mod.MERGED,
                    full_model=self.trainer.model,
                )  # fmt: skip
                merged = True
            else:
                merged, why = self._export_merged_adapter(local / export_mod.MERGED, adapter_dir)
                if not merged:
                    skipped.append(why)
                    skipped += [f"{f} not exported: it is made from the merged model" for f in ggufs]
        dirs = {fmt: local / fmt for fmt in formats if fmt in (export_mod.ADAPTER, export_mod.MERGED)}
        if not merged:
            dirs.pop(export_mod.MERGED, None)
        for fmt, path in dirs.items():
            uri, _ = export_mod.upload_dir(
                store, path, export_mod.artifact_prefix(self.job_root, fmt), self.storage._bounded()
            )
            self.artifacts["adapter" if fmt == export_mod.ADAPTER else "merged"] = uri
        if ggufs and merged:
            for fmt, path in self._export_gguf(local, ggufs, skipped).items():
                uri, _ = export_mod.upload_dir(
                    store, path, export_mod.artifact_prefix(self.job_root, fmt), self.storage._bounded()
                )
                self.artifacts[fmt] = uri
                dirs[fmt] = path
        if (local / "eval").exists():
            uri, _ = export_mod.upload_dir(
                store,
                local / "eval",
                export_mod.artifact_prefix(self.job_root, "eval"),
                self.storage._bounded(),
            )
            self.artifacts["evalGenerations"] = uri + "generations.jsonl"
        if skipped:
            self.status.update(progress={"message": "; ".join(skipped)})
        self.status.update(artifacts=self.artifacts)
        if self.spec.export.oci is not None:
            self._push_oci(dirs)

    def _export_gathered(self, state: dict[str, Any], local: Path, formats: list[str]) -> Path | None:
        """FSDP: the adapter (or the fully trained model) from the gathered state dict, in the same
        files as a one-GPU run's export. Returns the adapter's directory (None for full)."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if self.method != "full":
            out = local / export_mod.ADAPTER
            out.mkdir(parents=True, exist_ok=True)
            # peft keeps the adapter's entries of the whole state dict
            model.save_pretrained(str(out), state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(str(out))
            log.info("adapter exported to %s", out)
            return out
        if export_mod.MERGED in formats or any(gguf_formats.is_gguf(f) for f in formats):
            out = local / export_mod.MERGED
            out.mkdir(parents=True, exist_ok=True)
            dtype = export_mod.save_dtype(self.hw)
            model.config.use_cache = True
            weights = {k: v.to(dtype) for k, v in state.items()}
            model.save_pretrained(str(out), state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(str(out))
            log.info("merged %s model exported to %s", str(dtype).removeprefix("torch."), out)
        return None

    def _export_gguf(self, local: Path, formats: list[str], skipped: list[str]) -> dict[str, Path]:
        """llama.cpp's GGUF files of the merged model, where disk and memory allow (gguf.plan)."""
        shape = profile_mod.shape_of(local / export_mod.MERGED)
        disk_free = gguf_mod.disk_free(local)
        plan = gguf_mod.plan(formats, shape, disk_free, profile_mod.available_host_memory())
        for fmt, why in plan.skipped.items():
            log.warning("%s %s", fmt, why)
            skipped.append(f"{fmt} {why}")
        if not plan.formats:
            return {}
        self._stage(f"converting the merged model to GGUF ({', '.join(plan.formats)}) with llama.cpp")
        t0 = time.monotonic()
        dirs = gguf_mod.build(local / export_mod.MERGED, plan.formats, local, self.tokenizer)
        self.summary["ggufSeconds"] = round(time.monotonic() - t0, 1)
        for fmt, path in dirs.items():
            size = (path / gguf_formats.FORMATS[fmt].filename).stat().st_size
            log.info("%s: %s (%d bytes)", fmt, path / gguf_formats.FORMATS[fmt].filename, size)
        return dirs

    def _push_oci(self, dirs: dict[str, Path]) -> None:
        """Every export as an OCI artifact; status.artifacts.oci grows with each push.

        A failed push fails the job (the message names the export and the reference); what is
        already in object storage stays there and in status.artifacts.
        """
        oci = self.spec.export.oci
        assert oci is not None
        auth = oci_mod.auth_from_env()
        plain = oci.plain_http or oci_mod.is_loopback(oci_mod.registry_host(oci.repository))
        annotations = {
            "io.kubeft.job": f"{self.cfg.job.namespace}/{self.cfg.job.name}",
            "io.kubeft.base-model": self.spec.model.source,
            "io.kubeft.method": self.method,
        }
        pushed: list[dict[str, str]] = []
        for fmt, path in dirs.items():
            self._stage(f"pushing {fmt} to {oci.repository}")
            try:
                result = oci_mod.push(
                    path,
                    fmt,
                    oci.repository,
                    oci_mod.tag_for(self.cfg.job.name, fmt),
                    auth,
                    plain,
                    {**annotations, "io.kubeft.format": fmt},
                )
            except oci_mod.OciPushError as exc:
                kept = ", ".join(f"{k} {v}" for k, v in self.artifacts.items() if isinstance(v, str))
                self.status.update(progress={"message": f"{exc}; kept in object storage: {kept}"})
                raise
            pushed.append(result.status())
            self.artifacts["oci"] = list(pushed)
            self.status.update(artifacts={"oci": list(pushed)})

    def _export_merged_adapter(self, out_dir: Path, adapter_dir: Path | None) -> tuple[bool, str]:
        """Base + adapter merged in 16 bits where memory allows (export.plan_merge); else (False, why)."""
        import torch

        assert self.model_dir is not None
        self._release_trainer()
        shape = profile_mod.shape_of(self.model_dir)
        weights = 2 * shape.total_params if shape is not None else 0
        gpu_free = int(torch.cuda.mem_get_info()[0]) if self.hw.cuda else None
        plan = export_mod.plan_merge(weights, gpu_free, profile_mod.available_host_memory())
        if plan.device == "cuda":
            try:
                log.info("merging %s", plan.reason)
                export_mod.export_merged(
                    self.model_dir, self.method, self.hw, self.tokenizer, out_dir, adapter_dir, device="cuda"
                )
                return True, ""
            except torch.OutOfMemoryError:
                log.warning("the merge ran out of GPU memory; trying host memory")
                self._release_trainer()
                plan = export_mod.plan_merge(weights, None, profile_mod.available_host_memory())
        if plan.device == "cpu":
            log.info("merging %s", plan.reason)
            export_mod.export_merged(
                self.model_dir, self.method, self.hw, self.tokenizer, out_dir, adapter_dir, device="cpu"
            )
            return True, ""
        log.warning("%s", plan.reason)
        return False, plan.reason

    def _release_trainer(self) -> None:
        # The merged export loads a second copy of the base; free the training one first.
        import gc

        import torch

        if self.trainer is not None:
            self.trainer.model = None
            self.trainer.model_wrapped = None
            self.trainer.optimizer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- cleanup ----------------------------------------------------------------

    def cleanup(self, succeeded: bool) -> None:
        """Waits for checkpoint uploads (on success), sends the last status, stops the metrics server."""
        try:
            if self.uploader is not None:
                if succeeded:
                    self.uploader.flush(timeout=FINAL_UPLOAD_TIMEOUT_SECONDS)
                self.uploader.close()
        finally:
            if succeeded and self.rank.main:
                readings = self.metrics.update_memory()
                self.summary["runtimeSeconds"] = round(time.monotonic() - self._t0, 1)
                peak = readings.get("gpu_memory_peak_reserved_bytes")
                if peak is not None:
                    self.summary["peakMemoryReservedBytes"] = peak
                self.status.update(metrics=_status_metrics(self.summary))
                log.info("run summary: %s", json.dumps(self.summary))
            self.status.close()
            self.metrics.stop()
            if self.rank.local_main:
                shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def run(self) -> None:
        """setup → train → evaluate → export, with cleanup either way."""
        ok = False
        try:
            self.setup()
            self.train()
            self.evaluate()
            self.export()
            ok = True
        finally:  # a failure reaches the operator via the termination message (__main__)
            self.cleanup(ok)


def failure_message(exc: BaseException, limit: int = 1024) -> str:
    """A one-paragraph message for status and the termination log."""
    text = str(exc) if isinstance(exc, TrainerError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    # status.metrics holds numbers only; keep them finite for JSON.
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and math.isfinite(v)}
