"""GGUF exports for llama.cpp and Ollama, made with llama.cpp's own tools.

* ``convert_hf_to_gguf.py`` (installed by the ``llama-cpp-python`` wheel next to its package,
  ``site-packages/bin/``; it uses the ``gguf`` package) turns the merged 16-bit model into an F16
  GGUF;
* ``llama_model_quantize`` (libllama, through ``llama_cpp``) makes Q8_0 and Q4_K_M from that;
* an Ollama ``Modelfile`` goes next to each GGUF, with the chat template the job trained with.

The converter and the quantizer run as child processes: a crash in native code (or the converter
refusing a model) ends that child with a message, never the trainer.

Before training, :func:`check_convertible` runs the converter with ``--vocab-only`` on the base
model: an architecture or tokenizer it does not support fails the job at once (InvalidInput),
not after hours of training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeft import estimate as est
from kubeft import gguf as spec_gguf
from kubeft_trainer.errors import InvalidInputError, TrainerError

log = logging.getLogger(__name__)

MODELFILE = "Modelfile"
CONVERT_TIMEOUT_SECONDS = 6 * 3600.0
# Room the converter needs beside the files: it loads one tensor at a time (lazily, from the
# safetensors mmap) and may upcast it to 32 bits before writing it as 16 bits.
HOST_OVERHEAD_BYTES = 1 << 30


class GgufError(TrainerError):
    """llama.cpp's converter or quantizer failed on the merged model."""

    reason = "ExportFailed"


def converter_script() -> Path:
    """llama.cpp's convert_hf_to_gguf.py, as the llama-cpp-python wheel installs it."""
    import importlib.util

    found = importlib.util.find_spec("llama_cpp")
    if found is None or found.origin is None:
        raise GgufError("GGUF export needs the llama-cpp-python package (pip install 'kubeft[trainer]')")
    script = Path(found.origin).resolve().parent.parent / "bin" / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise GgufError(f"llama.cpp's converter is not where llama-cpp-python installs it: {script}")
    return script


def _tail(text: str, lines: int = 6) -> str:
    """The converter's last words: its error, without the progress bars."""
    kept = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.rstrip().endswith("/s]")]
    return " | ".join(kept[-lines:])


def _run(argv: list[str], what: str, timeout: float = CONVERT_TIMEOUT_SECONDS) -> str:
    env = {**os.environ, "NO_LOCAL_GGUF": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise GgufError(f"{what} failed (exit {done.returncode}): {_tail(done.stdout + done.stderr)}")
    return done.stdout + done.stderr


def convert(model_dir: Path, outfile: Path, vocab_only: bool = False) -> Path:
    """An F16 GGUF of a Hugging Face model directory (config.json, safetensors, tokenizer)."""
    argv = [sys.executable, str(converter_script()), str(model_dir), "--outfile", str(outfile)]
    argv += ["--outtype", "f16"]
    if vocab_only:
        argv.append("--vocab-only")
    _run(argv, "llama.cpp convert_hf_to_gguf.py")
    return outfile


def quantize(src: Path, dst: Path, fmt: spec_gguf.GgufFormat) -> Path:
    """``llama_model_quantize`` of an F16 GGUF to ``fmt`` (Q8_0, Q4_K_M), in a child process."""
    argv = [sys.executable, "-m", "kubeft_trainer.gguf", "quantize", str(src), str(dst), str(fmt.ftype)]
    out = _run(argv, f"llama.cpp quantize to {fmt.type_name}")
    fallback = [ln for ln in out.splitlines() if "required fallback quantization" in ln]
    if fallback:  # tiny models: rows narrower than a k-quant block get a 32-wide type instead
        log.info("%s: %s", fmt.type_name, fallback[-1].split("WARNING:")[-1].strip())
    return dst


def _quantize_main(src: str, dst: str, ftype: int) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 0  # all cores
    rc = int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params))
    if rc != 0:
        print(f"llama_model_quantize returned {rc}", file=sys.stderr)
    return rc


def check_convertible(model_dir: Path, scratch: Path) -> None:
    """Refuses, before training, a model llama.cpp's converter cannot turn into GGUF.

    The architecture (config.json) against the converter's list, then the converter itself on the
    vocabulary only (seconds): an unsupported tokenizer fails here too, with the converter's words.
    """
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        config = {}
    problem = spec_gguf.architecture_problem(config.get("architectures"))
    if problem:
        raise InvalidInputError(f"spec.export.formats: {problem}")
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        try:
            convert(model_dir, Path(tmp) / "vocab.gguf", vocab_only=True)
        except GgufError as exc:
            raise InvalidInputError(
                f"spec.export.formats: llama.cpp's converter cannot convert this model to GGUF ({exc}); "
                "drop the gguf-* formats"
            ) from None
        except subprocess.TimeoutExpired:
            log.warning("the GGUF vocabulary check timed out; the export will tell")


# --- planning -------------------------------------------------------------------------------------


def disk_free(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (the work directory)."""
    return int(shutil.disk_usage(path).free)


@dataclass(frozen=True)
class GgufPlan:
    """Which GGUF formats are built (F16 first: the others are quantized from it), and why others are not."""

    formats: tuple[str, ...]
    skipped: dict[str, str]


def plan(
    formats: list[str], shape: est.ModelShape | None, disk_free: int | None, host_free: int | None
) -> GgufPlan:
    """What fits: the F16 file is always made (it is the quantizer's input), so the disk needs the F16
    plus every quantized file asked for; the host memory one tensor in 32 bits and the converter's overhead.
    """
    wanted = [f for f in spec_gguf.FORMATS if f in formats]
    if not wanted or shape is None:
        return GgufPlan(tuple(wanted), {})
    gib = 2**30
    f16 = spec_gguf.estimated_bytes(shape, spec_gguf.F16.name)
    quants = [spec_gguf.estimated_bytes(shape, f) for f in wanted if f != spec_gguf.F16.name]
    disk = f16 + sum(quants)
    largest = 4 * max(cols * rows for _, cols, rows in spec_gguf.tensors(shape))
    host = largest + HOST_OVERHEAD_BYTES
    if disk_free is not None and disk > disk_free:
        why = (
            f"not exported: the GGUF files take {disk / gib:.1f} GiB of disk (F16 {f16 / gib:.1f} GiB, the "
            f"quantizer's input) and the work directory has {disk_free / gib:.1f} GiB free"
        )
        return GgufPlan((), {f: why for f in wanted})
    if host_free is not None and host > host_free:
        why = (
            f"not exported: the converter needs {host / gib:.1f} GiB of host memory and "
            f"{host_free / gib:.1f} GiB is free"
        )
        return GgufPlan((), {f: why for f in wanted})
    return GgufPlan(tuple(wanted), {})


# --- Ollama ---------------------------------------------------------------------------------------

# Ollama's Go templates for the chat templates the trainer knows (kubeft_trainer.data): the GGUF also
# carries the Jinja template (tokenizer.chat_template) for llama.cpp.
OLLAMA_TEMPLATES = {
    "chatml": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"
    ),
    "llama3": (
        "<|begin_of_text|>{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}
STOP_TOKENS = {"chatml": ("<|im_end|>", "<|im_start|>"), "llama3": ("<|eot_id|>", "<|start_header_id|>")}


def template_family(chat_template: str | None) -> str | None:
    """chatml or llama3 by the template's markers; None for another template."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template:
        return "llama3"
    return None


def modelfile(gguf_name: str, chat_template: str | None, eos_token: str | None) -> str:
    """An Ollama Modelfile for ``gguf_name`` (next to it): ``ollama create NAME -f Modelfile``."""
    family = template_family(chat_template)
    lines = [
        "# Ollama: ollama create my-model -f Modelfile && ollama run my-model",
        "# llama.cpp: llama-cli -m " + gguf_name + " -cnv   (the chat template is in the GGUF)",
        f"FROM ./{gguf_name}",
    ]
    if family is not None:
        lines.append(f'TEMPLATE """{OLLAMA_TEMPLATES[family]}"""')
        stops: tuple[str, ...] = STOP_TOKENS[family]
    else:
        lines.append("# no TEMPLATE: Ollama reads the chat template from the GGUF (tokenizer.chat_template)")
        stops = (eos_token,) if eos_token else ()
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: Path, gguf_name: str, tokenizer: Any) -> Path:
    path = out_dir / MODELFILE
    path.write_text(
        modelfile(gguf_name, getattr(tokenizer, "chat_template", None), getattr(tokenizer, "eos_token", None))
    )
    return path


def build(merged_dir: Path, formats: tuple[str, ...], out_root: Path, tokenizer: Any) -> dict[str, Path]:
    """Each format's directory (``<out_root>/<format>/model-<type>.gguf`` + Modelfile), F16 first.

    Every directory is complete when returned; the caller uploads them in order.
    """
    dirs: dict[str, Path] = {}
    f16_dir = out_root / spec_gguf.F16.name
    f16_dir.mkdir(parents=True, exist_ok=True)
    f16 = f16_dir / spec_gguf.F16.filename
    log.info("converting %s to GGUF F16 with llama.cpp's convert_hf_to_gguf.py", merged_dir)
    convert(merged_dir, f16)
    for name in formats:
        fmt = spec_gguf.FORMATS[name]
        out = out_root / name
        out.mkdir(parents=True, exist_ok=True)
        if fmt is not spec_gguf.F16:
            log.info("quantizing to %s with llama.cpp", fmt.type_name)
            quantize(f16, out / fmt.filename, fmt)
        write_modelfile(out, fmt.filename, tokenizer)
        dirs[name] = out
    if spec_gguf.F16.name not in formats:
        f16.unlink(missing_ok=True)
        shutil.rmtree(f16_dir, ignore_errors=True)
    return dirs


if __name__ == "__main__":  # the quantizer's child: python -m kubeft_trainer.gguf quantize SRC DST FTYPE
    if len(sys.argv) != 5 or sys.argv[1] != "quantize":
        sys.exit("usage: python -m kubeft_trainer.gguf quantize SRC DST FTYPE")
    sys.exit(_quantize_main(sys.argv[2], sys.argv[3], int(sys.argv[4])))
