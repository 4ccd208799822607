"""`kubeft estimate`: peak GPU memory of a fine-tuning job, with its breakdown: the operator's numbers.

    kubeft estimate llama-3.1-8b --method lora
    kubeft estimate ./models/qwen/config.json --method qlora --batch-size 4 --max-seq-length 4096 -o json
    kubeft estimate -f examples/lora-qwen2.5-7b-sharegpt.yaml qwen2.5-7b
    kubeft estimate llama-3.2-1b --profile lean
    kubeft estimate ./models/qwen --dataset train.jsonl --max-seq-length 1024

MODEL is a config.json, a directory holding one, or a known shape name
(``kubeft estimate --list-shapes``). ``-f`` reads the job itself (a FineTuneJob manifest or its
spec), checked by the same spec model as the operator and the trainer; MODEL may then be left
out when the spec's model is a local directory or carries ``model.architecture``. Flags left
unset take the spec's values (or the CRD's defaults). The estimate is the one the operator
places with (``status.vram``): the trainer's chunked LM-head loss included. The table also says
which known GPUs it fits with the operator's placement margin.

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

import yaml

from kubeft import contract, gpus
from kubeft import estimate as est
from kubeft import spec as spec_model

PROFILES = ("configured", "lean", "fast")
# flag → spec path; a flag left unset keeps the spec's value (or the model's default)
FLAG_PATHS = {
    "method": ("method",),
    "batch_size": ("hyperparameters", "batchSize"),
    "max_seq_length": ("hyperparameters", "maxSeqLength"),
    "gradient_checkpointing": ("hyperparameters", "gradientCheckpointing"),
    "packing": ("hyperparameters", "packing"),
    "optimizer": ("hyperparameters", "optimizer"),
    "lora_r": ("hyperparameters", "lora", "r"),
    "lora_targets": ("hyperparameters", "lora", "targetModules"),
    "lora_dropout": ("hyperparameters", "lora", "dropout"),
}


def register(subparsers: Any) -> None:
    """Adds the ``estimate`` subcommand to the ``kubeft`` parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "estimate",
        help="peak GPU memory of a fine-tuning job, with its breakdown",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="config.json, a model directory, or a known shape name")
    p.add_argument("-f", "--file", type=Path, help="a FineTuneJob manifest (or its spec) to estimate")
    p.add_argument("--list-shapes", action="store_true", help="list the known shape names and exit")
    p.add_argument("--method", choices=spec_model.METHODS, help="default: the spec's, else qlora")
    p.add_argument("--batch-size", type=int, help="micro-batch per GPU (default 2)")
    p.add_argument("--max-seq-length", type=int, help="tokens per sequence (default 2048)")
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="recompute activations in the backward pass (default on)",
    )
    p.add_argument(
        "--packing", action=argparse.BooleanOptionalAction, help="padding-free packed batches (default on)"
    )
    p.add_argument("--optimizer", choices=spec_model.OPTIMIZERS, help="default adamw_8bit")
    p.add_argument("--lora-r", type=int, help="default 16")
    p.add_argument(
        "--lora-targets",
        help="comma-separated module names, or all-linear / attention / mlp (default all-linear)",
    )
    p.add_argument("--lora-dropout", type=float, help="default 0")
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="configured",
        help="configured: the job as written (what the operator places with); lean/fast: the trainer's "
        "memory profiles",
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


class _Refused(Exception):
    """Bad input: the message is printed after ``kubeft estimate:``."""


def _spec_document(args: argparse.Namespace) -> dict[str, Any]:
    """The spec to estimate: ``-f``'s (manifest or bare spec) with the flags that were given applied."""
    doc: dict[str, Any] = {}
    if args.file is not None:
        try:
            loaded = yaml.safe_load(args.file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise _Refused(f"cannot read {args.file}: {exc}") from None
        if isinstance(loaded, dict) and loaded.get("kind") == contract.KIND:
            loaded = loaded.get("spec")
        if not isinstance(loaded, dict):
            raise _Refused(f"{args.file}: expected a FineTuneJob manifest or its spec (a mapping)")
        doc = loaded
    doc.setdefault("model", {"source": args.model or "unknown"})
    doc.setdefault("dataset", {"source": "unknown"})  # the estimate does not depend on the data
    for flag, path in FLAG_PATHS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag == "lora_targets":
            value = [t.strip() for t in value.split(",") if t.strip()]
        node = doc
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return doc


def _shape(model: str | None, spec: spec_model.FineTuneJobSpec) -> est.ModelShape:
    if model and model.lower() in est.KNOWN_SHAPES:
        return est.known_shape(model)
    if model:
        return est.ModelShape.from_file(model)
    if spec.model.architecture is not None:
        return spec.model.architecture.to_shape()
    if Path(spec.model.source).exists():
        return est.ModelShape.from_file(spec.model.source)
    raise _Refused(
        f"which architecture is {spec.model.source}? give MODEL (a known shape, a config.json or a model "
        "directory) or spec.model.architecture"
    )


def _gib(n: int) -> str:
    return f"{n / est.GIB:.2f} GiB"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Runs the subcommand; returns the exit code (2 on bad input)."""
    out = out or sys.stdout
    if args.list_shapes:
        for name in est.KNOWN_SHAPES:
            out.write(name + "\n")
        return 0
    if not args.model and args.file is None:
        sys.stderr.write("kubeft estimate: give a config.json, a model directory, a shape name or -f JOB\n")
        return 2
    lengths = None
    try:
        spec = spec_model.parse_spec(_spec_document(args))
        if getattr(args, "dataset", None):
            lengths = dataset_lengths(
                args, spec.hyperparameters.max_seq_length, out if args.output == "table" else None
            )
            if lengths is None:
                return 2
            args.max_seq_length = lengths["suggestedMaxSeqLength"]
            spec = spec_model.parse_spec(_spec_document(args))
        shape = _shape(args.model, spec)
        # auto: the operator takes the most accurate method that fits a GPU; show each
        methods = spec.candidate_methods()
        results = {
            m: est.estimate_profiles(shape, est.Setup.from_spec(spec, m))[args.profile] for m in methods
        }
    except est.EstimateError as exc:
        sys.stderr.write(f"kubeft estimate: the estimator refuses this model: {exc}\n")
        return 2
    except (spec_model.SpecError, _Refused) as exc:
        sys.stderr.write(f"kubeft estimate: {exc}\n")
        return 2
    docs = {m: _doc(r, args.profile) for m, r in results.items()}
    if args.output == "json":
        doc = docs[methods[0]] if len(methods) == 1 else {"method": "auto", "methods": docs}
        if lengths is not None:
            doc["dataset"] = lengths
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    hp = spec.hyperparameters
    out.write(f"model       {args.model or spec.model.source} ({shape.model_type}, "
              f"{shape.total_params / 1e9:.2f}B params)\n")  # fmt: skip
    for method, result in results.items():
        out.write(
            f"setup       {method}, batch {hp.batch_size} x {hp.max_seq_length} tokens, "
            f"checkpointing {'on' if hp.gradient_checkpointing else 'off'}, profile {args.profile}, "
            f"trainable {result.trainable_params:,} params\n\n"
        )
        width = max(len(k) for k in est.BREAKDOWN_KEYS)
        for key, value in result.breakdown().items():
            out.write(f"  {key:<{width}}  {_gib(value):>12}\n")
        out.write(f"  {'total':<{width}}  {_gib(result.total):>12}\n\n")
        fits = docs[method]["fitsGpus"]
        margin = f"with the operator's {est.PLACEMENT_MARGIN:.0%} margin"
        out.write(f"fits on     {', '.join(fits) if fits else 'no known single GPU'} ({margin})\n")
    if len(methods) > 1:
        out.write(
            "auto        the operator takes the first of full, lora, qlora that fits a GPU it can use\n"
        )
    return 0


def _doc(result: est.Estimate, profile: str) -> dict[str, Any]:
    """The estimate's JSON form, with the known GPUs the operator would place it on (its margin included)."""
    need = result.total * (1 + est.PLACEMENT_MARGIN)
    fits = [name for name, mib in gpus.GPU_MEMORY_MIB.items() if mib * gpus.MIB >= need]
    return result.to_dict() | {"profile": profile, "fitsGpus": fits}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def dataset_lengths(args: argparse.Namespace, limit: int, out: TextIO | None) -> dict[str, Any] | None:
    """The trainer's length report of --dataset against ``limit`` tokens, printed to `out` (when
    given); None on bad input.

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
                path, "auto", source, tokenizer, template, "responses", limit
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
        "maxSeqLength": limit,
        "summary": lengths.summary(),
        **lengths.metrics("dataset"),
        "suggestedMaxSeqLength": suggested,
    }
