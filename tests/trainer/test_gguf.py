"""GGUF exports, made by llama.cpp's own converter and quantizer and loaded back in llama.cpp.

The tiny model is trained for a few steps, merged, converted (F16) and quantized (Q8_0, Q4_K_M);
then llama.cpp (llama-cpp-python) loads each file and generates, and the F16 file's next-token
logits are compared with the merged Hugging Face model's on the same token ids.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeft_trainer import gguf as gguf_mod
from kubeft_trainer.__main__ import main
from kubeft_trainer.config import JobRef, RuntimeOptions, TrainerConfig, parse_spec
from kubeft_trainer.train import Recipe

from kubeft import contract, gguf
from kubeft import estimate as est
from kubeft.dev import tinymodel

from .runs import write_job
from .trainer_helpers import QA, SYSTEM, RecordingReporter, job_spec

pytestmark = pytest.mark.slow
NS, JOB = "test", "tiny"
# F16 GGUF vs the merged model (bf16 weights, read in float32): both compute in 32 bits from the same
# 16-bit weights, so what differs is rounding (bf16 → f16 of each weight) and summation order
F16_LOGIT_TOLERANCE = 0.02  # relative to the largest |logit| on the prompt


def _recipe(spec: dict[str, Any], workdir: Path, status: Any = None) -> Recipe:
    cfg = TrainerConfig(
        job=JobRef(JOB, NS, ""),
        spec=parse_spec(spec),
        runtime=RuntimeOptions(workdir=workdir, metrics_port=None, report_status=False),
    )
    return Recipe(cfg, status=status)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Recipe, RecordingReporter]]:
    """A full fine-tune of the tiny model (it memorises the answers: sharp logits to compare) exporting
    the merged model and every GGUF format; yields the artifacts folder, the run and its status."""
    tmp = tmp_path_factory.mktemp("gguf")
    model = tinymodel.build_tiny_model(tmp / "model")
    data = tinymodel.write_jsonl(tmp / "train.jsonl", tinymodel.rows("messages") * 4)
    spec = job_spec(model, data, maxSteps=40, learningRate=3e-3, batchSize=8)
    spec["method"] = "full"
    del spec["hyperparameters"]["lora"]
    spec["export"] = {"formats": ["merged-16bit", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]}
    spec["storage"] = {"endpoint": (tmp / "store").as_uri(), "bucket": "kubeft"}
    status = RecordingReporter()
    run = _recipe(spec, tmp / "work", status)
    run.run()
    yield tmp / "store" / "kubeft" / contract.artifacts_prefix(contract.job_prefix(NS, JOB)), run, status


def _llama(path: Path) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False, seed=0)


def _chat_prompt(question: str) -> str:
    system = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    return f"{system}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def test_every_gguf_format_is_exported_with_a_modelfile(exported: Any) -> None:
    artifacts, run, _ = exported
    for fmt in gguf.FORMATS.values():
        folder = artifacts / fmt.name
        assert (folder / fmt.filename).stat().st_size > 0, fmt
        modelfile = (folder / gguf_mod.MODELFILE).read_text()
        assert f"FROM ./{fmt.filename}" in modelfile
        # the chat template the job trained with (chatml), as Ollama's Go template, and its stop token
        assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}' in modelfile
        assert 'PARAMETER stop "<|im_end|>"' in modelfile
        assert run.artifacts[fmt.name].endswith(f"/artifacts/{fmt.name}/")
    sizes = {f: (artifacts / f.name / f.filename).stat().st_size for f in gguf.FORMATS.values()}
    assert sizes[gguf.F16] > sizes[gguf.Q8_0] > sizes[gguf.Q4_K_M]


def test_f16_gguf_logits_match_the_merged_model(exported: Any) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifacts, _, _ = exported
    merged_dir = artifacts / "merged-16bit"
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    llm = _llama(artifacts / "gguf-f16" / gguf.F16.filename)
    worst = 0.0
    try:
        prompts = [_chat_prompt(QA[0][0]), _chat_prompt(QA[3][0]), QA[5][0] + " " + QA[5][1]]
        for prompt in prompts:
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                expected = hf(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            scale = float(np.abs(expected).max())
            diff = float(np.abs(got - expected).max())
            worst = max(worst, diff / scale)
            print(f"prompt {prompt[:40]!r}: max |Δlogit| {diff:.5f} of max |logit| {scale:.3f}")
            assert diff <= F16_LOGIT_TOLERANCE * scale, (prompt, diff, scale)
            assert int(np.argmax(got)) == int(np.argmax(expected))  # the same next token
        # and the same greedy continuation, token for token
        ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hf_out = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :]
        llm.reset()
        llama_out = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            llama_out.append(int(token))
            if len(llama_out) == 8 or token == llm.token_eos():
                break
        assert llama_out == hf_out.tolist()[: len(llama_out)], (llama_out, hf_out.tolist())
    finally:
        llm.close()
    print(f"F16 GGUF vs merged model: worst max |Δlogit| / max |logit| = {worst:.5f}")


@pytest.mark.parametrize("fmt", [gguf.F16, gguf.Q8_0, gguf.Q4_K_M], ids=lambda f: f.name)
def test_gguf_loads_in_llama_cpp_and_generates(exported: Any, fmt: gguf.GgufFormat) -> None:
    artifacts, _, _ = exported
    llm = _llama(artifacts / fmt.name / fmt.filename)
    try:
        # the GGUF carries the chat template; llama.cpp renders it and answers
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": QA[0][0]}], max_tokens=16, temperature=0.0
        )
        text = out["choices"][0]["message"]["content"]
        print(f"{fmt.name}: {text!r}")
        # the fine-tuned answer: Q4_K_M may round a token differently, the others may not
        assert "Paris" in text if fmt is gguf.Q4_K_M else text.strip() == QA[0][1], text
        assert llm.metadata.get("general.file_type") == str(fmt.ftype)
    finally:
        llm.close()


def test_quantized_logits_stay_close_to_f16(exported: Any) -> None:
    """Both stay close to F16 and keep its top token. (The tiny model's rows are narrower than a k-quant
    block, so Q4_K_M's tensors fall back to Q5_0/Q8_0 here: it is no coarser than Q8_0 on this model.)"""
    import numpy as np

    artifacts, _, _ = exported
    prompt = _chat_prompt(QA[1][0])
    scores = {}
    for fmt in (gguf.F16, gguf.Q8_0, gguf.Q4_K_M):
        llm = _llama(artifacts / fmt.name / fmt.filename)
        try:
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            llm.eval(ids)
            scores[fmt] = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        finally:
            llm.close()
    scale = float(np.abs(scores[gguf.F16]).max())
    d8 = float(np.abs(scores[gguf.Q8_0] - scores[gguf.F16]).max()) / scale
    d4 = float(np.abs(scores[gguf.Q4_K_M] - scores[gguf.F16]).max()) / scale
    print(f"vs F16: Q8_0 {d8:.4f}, Q4_K_M {d4:.4f} (max |Δlogit| / max |logit|)")
    assert d8 < 0.05 and d4 < 0.1
    for fmt in (gguf.Q8_0, gguf.Q4_K_M):
        assert int(np.argmax(scores[fmt])) == int(np.argmax(scores[gguf.F16])), fmt


def test_sizes_match_the_estimate_for_the_tiny_model(exported: Any) -> None:
    artifacts, _, _ = exported
    shape = est.ModelShape.from_file(artifacts / "merged-16bit")
    for fmt in gguf.FORMATS.values():
        size = (artifacts / fmt.name / fmt.filename).stat().st_size
        tensors = gguf.estimated_bytes(shape, fmt.name)
        # the rest is the header: metadata, the vocabulary, the chat template, alignment
        assert tensors < size < tensors + 64 * 1024, (fmt, size, tensors)


def test_tensor_types_and_sizes_match_llama_cpp_on_a_256_wide_model(tmp_path: Path) -> None:
    """The size table in docs/trainer.md comes from kubeft.gguf.estimated_bytes: check its choice of
    type for every tensor against the real quantizer's, on a model whose rows fit k-quant blocks."""
    from gguf import GGUFReader

    model = tmp_path / "wide"
    tok = tinymodel.build_tokenizer(model)
    tinymodel.build_model(model, tok, hidden=256, layers=8)
    shape = est.ModelShape.from_file(model)
    f16 = gguf_mod.convert(model, tmp_path / "f16.gguf")
    for fmt in gguf.FORMATS.values():
        path = f16 if fmt is gguf.F16 else gguf_mod.quantize(f16, tmp_path / fmt.filename, fmt)
        reader = GGUFReader(str(path))
        actual = {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}
        expected = {}
        for name, cols, rows in gguf.tensors(shape):
            kind = gguf.tensor_type(fmt, name, cols, rows, shape.num_layers, shape.tie_word_embeddings)
            expected[name] = (kind, gguf.tensor_bytes(kind, cols * rows))
        assert actual == expected, fmt
        assert sum(b for _, b in actual.values()) == gguf.estimated_bytes(shape, fmt.name)


def test_sizes_of_the_8b_shape_as_documented() -> None:
    """docs/trainer.md's table (computed; published Llama-3.1-8B files: 16.07, 8.54 and 4.92 GB)."""
    shape = est.known_shape("llama-3.1-8b")
    got = {f: round(gguf.estimated_bytes(shape, f) / 1e9, 2) for f in gguf.FORMATS}
    assert got == {"gguf-f16": 16.06, "gguf-q8_0": 8.53, "gguf-q4_k_m": 4.91}
    docs = (Path(__file__).resolve().parents[2] / "docs" / "trainer.md").read_text()
    for fmt, gb in got.items():
        assert f"| `{fmt}` | {gb:.2f} GB" in docs, fmt


def test_supported_architectures_are_the_installed_converters() -> None:
    """kubeft.gguf.SUPPORTED_ARCHITECTURES (what the operator checks) is the converter's own list."""
    script = gguf_mod.converter_script()
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = module
    try:
        spec.loader.exec_module(module)
        registered = set(module.ModelBase._model_classes[module.ModelType.TEXT])
    finally:
        sys.modules.pop("convert_hf_to_gguf", None)
    assert registered == set(gguf.SUPPORTED_ARCHITECTURES)
    assert "LlamaForCausalLM" in registered and "Qwen2ForCausalLM" in registered


def test_gguf_without_room_is_skipped_and_the_job_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_mod, "disk_free", lambda path: 100 * 1024)  # a work volume with 100 KiB free
    model = tinymodel.build_tiny_model(tmp_path / "model")
    data = tinymodel.write_jsonl(tmp_path / "train.jsonl", tinymodel.rows("alpaca"))
    spec = job_spec(model, data, maxSteps=2)
    spec["export"] = {"formats": ["adapter", "gguf-f16", "gguf-q4_k_m"]}
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    status = RecordingReporter()
    run = _recipe(spec, tmp_path / "work", status)
    run.run()
    assert set(run.artifacts) == {"adapter"}
    said = status.said("message")
    assert any(
        "gguf-f16 not exported: the GGUF files take" in m and "the work directory has 0.0 GiB free" in m
        for m in said
    ), said


def test_gguf_plan_counts_the_f16_and_every_quantized_file() -> None:
    shape = est.known_shape("llama-3.1-8b")
    gib = 2**30
    both = gguf_mod.plan(["gguf-q8_0", "gguf-q4_k_m"], shape, 40 * gib, 64 * gib)
    assert both.formats == ("gguf-q8_0", "gguf-q4_k_m") and not both.skipped
    tight = gguf_mod.plan(["gguf-q8_0", "gguf-q4_k_m"], shape, 20 * gib, 64 * gib)
    assert tight.formats == () and "F16 15.0 GiB, the quantizer's input" in tight.skipped["gguf-q8_0"]
    no_memory = gguf_mod.plan(["gguf-f16"], shape, 40 * gib, 2 * gib)
    assert no_memory.formats == () and "host memory" in no_memory.skipped["gguf-f16"]


def _unsupported(tmp_path: Path, what: str) -> Path:
    model = tmp_path / "model"
    if what == "architecture":
        tinymodel.build_tiny_model(model)
        config = json.loads((model / "config.json").read_text())
        config["architectures"] = ["SpeechT5ForTextToSpeech"]
        (model / "config.json").write_text(json.dumps(config))
    else:  # a GPT-2 style byte-level BPE trained here: its pre-tokenizer is none the converter knows
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        t = Tokenizer(models.BPE(unk_token="<unk>"))
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        t.decoder = decoders.ByteLevel()
        t.train_from_iterator(
            [q + " " + a for q, a in QA] * 4,
            trainers.BpeTrainer(
                vocab_size=300, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )  # fmt: skip
        tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<|im_end|>")
        tok.pad_token = tok.eos_token
        tok.chat_template = tinymodel.CHATML
        tok.save_pretrained(str(model))
        tinymodel.build_model(model, tok)
    return model


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("architecture", "does not support the architecture SpeechT5ForTextToSpeech"),
        ("tokenizer", "BPE pre-tokenizer was not recognized"),
    ],
)
def test_gguf_of_a_model_the_converter_refuses_fails_before_training(
    what: str, message: str, tmp_path: Path, trainer_env: Path
) -> None:
    model = _unsupported(tmp_path, what)
    data = tinymodel.write_jsonl(tmp_path / "train.jsonl", tinymodel.rows("alpaca"))
    spec = job_spec(model, data, maxSteps=2)
    spec["export"] = {"formats": ["adapter", "gguf-q4_k_m"]}
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job = write_job(tmp_path / "job.yaml", spec)
    rc = main(["--config", str(job), "--workdir", str(tmp_path / "work"), "--no-status", "--no-metrics"])
    assert rc == contract.EXIT_INVALID_INPUT
    term = json.loads(trainer_env.read_text())
    assert term["reason"] == "InvalidInput"
    assert term["message"].startswith("spec.export.formats: ")
    assert message in term["message"], term["message"]
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("manifest.json"))
