"""`kubeft estimate`: peak GPU memory of a fine-tuning job, with its breakdown.

    kubeft estimate llama-3.1-8b --method lora
    kubeft estimate ./models/qwen/config.json --method qlora --batch-size 4 --max-seq-length 4096 -o json
    kubeft estimate llama-3.2-1b --profile lean
    kubeft estimate ./models/qwen --dataset train.jsonl --max-seq-length 1024

MODEL is a config.json, a directory holding one, or a known shape name
(``kubeft estimate --list-shapes``). The table also says which known GPUs fit.

With ``--dataset``, MODEL must be a model directory with tokenizer files: the dataset is
tokenized by the trainer's own code, its length report (against --max-seq-length) and a
suggested maxSeqLength are printed, and the estimate is for that suggested length.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from kubeft import estimate as est
from kubeft import gpus

PROFILES = ("configured", "lean", "fast")


def register(subparsers: Any) -> None:
    """Adds the ``estimate`` subcommand to the ``kubeft`` parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "estimate",
        help="peak GPU memory of a fine-tuning job, with its breakdown",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="config.json, a model directory, or a known shape name")
    p.add_argument("--list-shapes", action="store_true", help="list the known shape names and exit")
    p.add_argument("--method", choices=("qlora", "lora", "full"), default="qlora")
    p.add_argument("--batch-size", type=int, default=2, help="micro-batch per GPU (default 2)")
    p.add_argument("--max-seq-length", type=int, default=2048, help="tokens per sequence (default 2048)")
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recompute activations in the backward pass (default on)",
    )
    p.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="padding-free packed batches (default on)",
    )
    p.add_argument("--fused-ce", action="store_true", help="fused linear cross-entropy (no logits buffer)")
    p.add_argument("--optimizer", choices=est.OPTIMIZERS, default="adamw_8bit")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument(
        "--lora-targets",
        default=est.ALL_LINEAR,
        help="comma-separated module names, or all-linear / attention / mlp (default all-linear)",
    )
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="configured",
        help="configured: the flags as given; lean/fast: the trainer's memory profiles",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument(
        "--dataset",
        metavar="FILE_OR_URI",
        help="a dataset (.jsonl/.json file, folder or s3://): print its token lengths and estimate for "
        "the suggested maxSeqLength (needs MODEL's tokenizer)",
    )
    p.add_argument(
        "--s3-endpoint",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint of an s3:// dataset (default $AWS_ENDPOINT_URL)",
    )
    p.set_defaults(func=run)


def _shape(model: str) -> est.ModelShape:
    if model.lower() in est.KNOWN_SHAPES:
        return est.known_shape(model)
    return est.ModelShape.from_file(model)


def _gib(n: int) -> str:
    return f"{n / est.GIB:.2f} GiB"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Runs the subcommand; returns the exit code (2 on bad input)."""
    out = out or sys.stdout
    if args.list_shapes:
        for name in est.KNOWN_SHAPES:
            out.write(name + "\n")
        return 0
    if not args.model:
        sys.stderr.write("kubeft estimate: give a config.json, a model directory or a shape name\n")
        return 2
    lengths = None
    if getattr(args, "dataset", None):
        lengths = dataset_lengths(args, out if args.output == "table" else None)
        if lengths is None:
            return 2
        args.max_seq_length = lengths["suggestedMaxSeqLength"]
    try:
        shape = _shape(args.model)
        setup = est.Setup(
            method=args.method,
            micro_batch=args.batch_size,
            seq_len=args.max_seq_length,
            gradient_checkpointing=args.gradient_checkpointing,
            padding_free=args.packing,
            fused_cross_entropy=args.fused_ce,
            optimizer=args.optimizer,
            lora_r=args.lora_r,
            lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
            lora_dropout=args.lora_dropout,
        )
        result = est.estimate_profiles(shape, setup)[args.profile]
    except est.EstimateError as exc:
        sys.stderr.write(f"kubeft estimate: {exc}\n")
        return 2
    fits = [name for name, mib in gpus.GPU_MEMORY_MIB.items() if mib * gpus.MIB >= result.total]
    if args.output == "json":
        doc = result.to_dict() | {"profile": args.profile, "fitsGpus": fits}
        if lengths is not None:
            doc["dataset"] = lengths
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    out.write(f"model       {args.model} ({shape.model_type}, {shape.total_params / 1e9:.2f}B params)\n")
    out.write(
        f"setup       {result.method}, batch {setup.micro_batch} x {setup.seq_len} tokens, "
        f"profile {args.profile}, trainable {result.trainable_params:,} params\n\n"
    )
    width = max(len(k) for k in est.BREAKDOWN_KEYS)
    for key, value in result.breakdown().items():
        out.write(f"  {key:<{width}}  {_gib(value):>12}\n")
    out.write(f"  {'total':<{width}}  {_gib(result.total):>12}\n\n")
    out.write(f"fits on     {', '.join(fits) if fits else 'no known single GPU'}\n")
    return 0


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def dataset_lengths(args: argparse.Namespace, out: TextIO | None) -> dict[str, Any] | None:
    """The trainer's length report of --dataset, printed to `out` (when given); None on bad input.

    Uses kubeft_trainer.data, so the numbers are the ones the trainer logs for the same
    dataset, maxSeqLength and tokenizer (format auto, trainOn responses, the tokenizer's chat
    template or chatml).
    """
    model = Path(args.model)
    model_dir = model.parent if model.is_file() else model
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        sys.stderr.write(
            f"kubeft estimate: --dataset needs a tokenizer to count tokens: give MODEL as a model "
            f"directory with tokenizer files ({', '.join(TOKENIZER_FILES)}), not {args.model!r}\n"
        )
        return None
    try:
        from kubeft_trainer import data
        from kubeft_trainer.errors import TrainerError
        from kubeft_trainer.storage import Storage
        from transformers import AutoTokenizer
    except ModuleNotFoundError as exc:
        sys.stderr.write(
            f"kubeft estimate: --dataset needs the trainer's packages ({exc}): kubeft[trainer]\n"
        )
        return None
    source = str(args.dataset)
    if source.startswith("s3://") and not args.s3_endpoint:
        sys.stderr.write(f"kubeft estimate: --dataset {source}: give the endpoint with --s3-endpoint\n")
        return None
    # the report is printed below; the trainer's log lines would say it twice (kubeft -v keeps them)
    quiet = logging.getLogger("kubeft_trainer")
    level = quiet.level
    if not getattr(args, "verbose", False):
        quiet.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="kubeft-estimate-") as tmp:
        try:
            storage = Storage(args.s3_endpoint, "kubeft", Path(tmp) / "store")
            path = storage.fetch(source, Path(tmp) / "data", "--dataset")
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            template = data.resolve_chat_template(tokenizer, None)
            report, lengths = data.measure_lengths(
                path, "auto", source, tokenizer, template, "responses", args.max_seq_length
            )
        except (TrainerError, OSError, ValueError) as exc:
            sys.stderr.write(f"kubeft estimate: --dataset {source}: {exc}\n")
            return None
        finally:
            quiet.setLevel(level)
    suggested = lengths.suggested_max_seq_length
    if out is not None:
        out.write(f"{report.summary()}\n{lengths.summary()}\n")
        out.write(
            f"suggested   maxSeqLength {suggested} (keeps {round(100 * data.KEEP_WHOLE_SHARE)}% of the "
            f"samples whole); the estimate below is for it\n\n"
        )
    return {
        "source": source,
        "format": report.format,
        "rows": report.rows,
        "usable": report.usable,
        "maxSeqLength": args.max_seq_length,
        "summary": lengths.summary(),
        **lengths.metrics("dataset"),
        "suggestedMaxSeqLength": suggested,
    }
