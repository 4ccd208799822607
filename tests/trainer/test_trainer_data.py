"""Dataset formats, detection, malformed rows, chat templates and label masking."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kubeft_trainer import data
from kubeft_trainer.errors import InvalidInputError

from .trainer_helpers import QA, SYSTEM, write_jsonl


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages", "text"])
def test_auto_detects_each_format_and_says_so(
    fmt: str, dataset_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = dataset_file(fmt)
    with caplog.at_level(logging.INFO):
        samples, report = data.load_samples(path, "auto", str(path))
    assert report.format == fmt and report.detected
    assert f"format {fmt} (detected)" in caplog.text
    assert report.usable == len(QA) == len(samples)


def test_chat_formats_convert_to_the_same_conversation(dataset_file: Any) -> None:
    alpaca, _ = data.load_samples(dataset_file("alpaca"), "alpaca", "a")
    sharegpt, _ = data.load_samples(dataset_file("sharegpt"), "sharegpt", "s")
    messages, _ = data.load_samples(dataset_file("messages"), "messages", "m")
    q, a = QA[0]
    assert alpaca[0].messages == [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    expected = [{"role": "system", "content": SYSTEM}, *alpaca[0].messages]
    assert sharegpt[0].messages == messages[0].messages == expected


def test_alpaca_history_system_and_input_become_turns(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {
                "instruction": "Translate",
                "input": "chat",
                "output": "cat",
                "system": "S",
                "history": [["hi", "hello"]],
            }
        ],
    )
    (sample,), _ = data.load_samples(path, "alpaca", "a")
    assert sample.messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Translate\n\nchat"},
        {"role": "assistant", "content": "cat"},
    ]


def test_malformed_rows_are_counted_and_reported_with_line_numbers(
    dataset_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [
        "{not json",
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": "nope"},
    ]
    path = dataset_file("messages", extra=bad)
    with caplog.at_level(logging.WARNING):
        _, report = data.load_samples(path, "auto", "train.jsonl")
    assert report.usable == len(QA) and report.malformed == 4
    assert report.malformed_lines == [9, 10, 11, 12]
    summary = report.summary()
    assert "skipped 4 malformed rows (lines 9, 10, 11, 12)" in summary
    assert "no assistant response" in summary
    assert "lines 9, 10, 11, 12" in caplog.text


def test_a_dataset_without_usable_rows_fails_fast(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": []}, "garbage"])
    with pytest.raises(InvalidInputError, match=r"no usable rows.*lines 1, 2"):
        data.load_samples(path, "messages", "bad.jsonl")


def test_undetectable_format_fails_fast(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(InvalidInputError, match="cannot detect"):
        data.load_samples(path, "auto", "x.jsonl")


def _trained_text(tokenizer: Any, row: dict[str, list[int]]) -> str:
    return str(
        tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
    )


def test_train_on_responses_masks_every_prompt_token(tiny_tokenizer: Any) -> None:
    q, a = QA[0]
    sample = data.Sample(
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
            {"role": "user", "content": QA[1][0]},
            {"role": "assistant", "content": QA[1][1]},
        ]
    )
    template = data.resolve_chat_template(tiny_tokenizer, None)
    row = data.tokenize_sample(tiny_tokenizer, template, sample, "responses")
    assert len(row["input_ids"]) == len(row["labels"])
    # only the assistant turns (with their end-of-turn marker) carry labels
    assert _trained_text(tiny_tokenizer, row) == f"{a}<|im_end|>\n{QA[1][1]}<|im_end|>\n"
    full = tiny_tokenizer.decode(row["input_ids"])
    assert full.startswith("<|im_start|>system\n" + SYSTEM)
    first_label = next(i for i, lab in enumerate(row["labels"]) if lab != -100)
    assert tiny_tokenizer.decode(row["input_ids"][:first_label]).endswith("<|im_start|>assistant\n")


def test_train_on_all_keeps_every_label(tiny_tokenizer: Any) -> None:
    sample = data.Sample(
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    )
    row = data.tokenize_sample(tiny_tokenizer, data.CHATML_TEMPLATE, sample, "all")
    assert row["labels"] == row["input_ids"]


def test_text_rows_train_on_every_token_and_end_with_eos(tiny_tokenizer: Any) -> None:
    row = data.tokenize_sample(
        tiny_tokenizer, data.CHATML_TEMPLATE, data.Sample(text="the sky is blue"), "responses"
    )
    assert row["labels"] == row["input_ids"]
    assert row["input_ids"][-1] == tiny_tokenizer.eos_token_id


def test_named_llama3_template_is_used_when_asked(tiny_tokenizer: Any) -> None:
    template = data.resolve_chat_template(tiny_tokenizer, "llama3")
    sample = data.Sample(
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    )
    row = data.tokenize_sample(tiny_tokenizer, template, sample, "responses")
    text = tiny_tokenizer.decode(row["input_ids"])
    assert "<|start_header_id|>assistant<|end_header_id|>" in text
    assert _trained_text(tiny_tokenizer, row) == "hello<|eot_id|>"


def test_tokenizer_without_template_falls_back_to_chatml(tiny_tokenizer: Any) -> None:
    saved = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = None
        assert data.resolve_chat_template(tiny_tokenizer, None) == data.CHATML_TEMPLATE
    finally:
        tiny_tokenizer.chat_template = saved


def test_eval_split_holds_out_rows_reproducibly(dataset_file: Any, tiny_tokenizer: Any) -> None:
    path = dataset_file("messages", repeat=5)
    built = [
        data.build_datasets(
            path, "p", "auto", tiny_tokenizer, data.CHATML_TEMPLATE, "responses", 7, eval_split=0.2
        )
        for _ in range(2)
    ]
    first, second = built[0].eval, built[1].eval
    assert first is not None and second is not None
    assert len(built[0].train) == 32 and len(first) == 8
    assert first["input_ids"] == second["input_ids"]


def test_pvc_sources_are_read_in_place_from_the_mounted_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeft_trainer.storage import Storage

    from kubeft import contract

    root = tmp_path / "pvc"
    (root / "data" / "sets").mkdir(parents=True)
    (root / "data" / "sets" / "train.jsonl").write_text("{}\n")
    monkeypatch.setenv(contract.ENV_PVC_ROOT, str(root))
    storage = Storage(None, "kubeft", tmp_path / "store")
    dest = tmp_path / "dest"
    got = storage.fetch("pvc://data/sets/train.jsonl", dest, "spec.dataset.source")
    assert got == root / "data" / "sets" / "train.jsonl" and not dest.exists()  # nothing copied
    assert storage.fetch("pvc://data/sets/", dest, "spec.dataset.source") == root / "data" / "sets"
    with pytest.raises(InvalidInputError, match="no such file or directory in the claim data"):
        storage.fetch("pvc://data/sets/eval.jsonl", dest, "spec.dataset.eval.source")
    with pytest.raises(InvalidInputError, match=f"the claim models is not mounted at {root}/models"):
        storage.fetch("pvc://models/llama", dest, "spec.model.source")
    with pytest.raises(InvalidInputError, match="expected pvc://<claim>/<path>"):
        storage.fetch("pvc://data", dest, "spec.model.source")


def test_a_dataset_folder_leaves_out_hidden_folders(tmp_path: Path) -> None:
    # a hub download keeps its bookkeeping (JSON) under .cache/: not training data
    write_jsonl(tmp_path / "ds" / "part-1.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "ds" / "more" / "part-2.json", [{"text": "b"}])
    (tmp_path / "ds" / ".cache" / "huggingface" / "trees").mkdir(parents=True)
    (tmp_path / "ds" / ".cache" / "huggingface" / "trees" / "c0ffee.json").write_text("[]")
    got = [p.relative_to(tmp_path / "ds").as_posix() for p in data.data_files(tmp_path / "ds")]
    assert got == ["more/part-2.json", "part-1.jsonl"]
