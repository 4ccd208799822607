"""What maxSeqLength cuts: the length report, dropped samples, exit 2, steps without a loss, estimate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from kubeft_trainer import data
from kubeft_trainer.status import KubeStatusReporter

from kubeft import contract

from .trainer_helpers import QA, SYSTEM, write_jsonl

NS, JOB = "test", "tiny"
LIMIT = 64
LONG_INPUT = " ".join(q for q, _ in QA) * 3  # a long prompt: the answer after it is cut away at LIMIT
LONG_OUTPUT = " ".join(a for _, a in QA) * 3  # a long answer: cut in part at LIMIT


def short_rows() -> list[dict[str, Any]]:
    return [{"instruction": q, "input": "", "output": a} for q, a in QA]


def answer_cut_rows(n: int) -> list[dict[str, Any]]:
    """Alpaca rows like the issue's: system, history and a long input, so every answer lies past LIMIT."""
    return [
        {
            "instruction": "Answer the last question.",
            "input": LONG_INPUT,
            "output": QA[i % len(QA)][1],
            "system": SYSTEM,
            "history": [[LONG_INPUT, "hello"]],
        }
        for i in range(n)
    ]


def partly_cut_rows(n: int) -> list[dict[str, Any]]:
    return [{"instruction": QA[i][0], "input": "", "output": LONG_OUTPUT} for i in range(n)]


def token_lengths(tokenizer: Any, path: Path) -> list[int]:
    """Lengths from tokenize_sample directly, to check the report's percentiles against."""
    samples, _ = data.load_samples(path, "auto", str(path))
    template = data.resolve_chat_template(tokenizer, None)
    return [len(data.tokenize_sample(tokenizer, template, s, "responses")["input_ids"]) for s in samples]


def p(values: list[int], percent: int) -> int:
    """Nearest-rank percentile, written out here independently of the trainer's."""
    ordered = sorted(values)
    return ordered[math.ceil(len(ordered) * percent / 100) - 1]


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """8 short rows (lines 1-8), 4 whose answer is wholly past LIMIT (9-12), 2 with a long answer (13-14)."""
    return write_jsonl(tmp_path / "mixed.jsonl", short_rows() + answer_cut_rows(4) + partly_cut_rows(2))


# --- the report --------------------------------------------------------------------------------


def test_a_sample_whose_answer_is_cut_away_is_dropped_and_counted(mixed: Path, tiny_tokenizer: Any) -> None:
    built = data.build_datasets(
        mixed,
        "mixed.jsonl",
        "auto",
        tiny_tokenizer,
        data.CHATML_TEMPLATE,
        "responses",
        0,
        max_seq_length=LIMIT,
    )
    lengths = built.lengths
    assert lengths is not None
    every = token_lengths(tiny_tokenizer, mixed)
    assert all(n <= LIMIT for n in every[:8]) and all(n > LIMIT for n in every[8:])  # the fixture's premise
    assert lengths.truncated == 6
    assert lengths.tokens_cut == sum(n - LIMIT for n in every[8:])
    assert lengths.answer_cut == 4 and lengths.answer_cut_lines == [9, 10, 11, 12]
    assert lengths.answer_partly_cut == 2
    assert (lengths.percentile(0.5), lengths.percentile(0.95)) == (p(every, 50), p(every, 95))
    # what trains: the 10 other samples, none longer than the limit, each with a target to learn
    assert len(built.train) == 10
    for ids, labels in zip(built.train["input_ids"], built.train["labels"], strict=True):
        assert len(ids) <= LIMIT and any(label != -100 for label in labels[1:])
    summary = lengths.summary()
    assert f"6 of 14 samples longer than maxSeqLength {LIMIT}" in summary
    assert "dropped 4 whose answer was cut away (lines 9, 10, 11, 12)" in summary
    assert "2 with the answer partly cut" in summary
    assert f"p50 {p(every, 50)}, p95 {p(every, 95)}, max {max(every)} tokens" in summary
    assert f"maxSeqLength {p(every, 95)} keeps 95% of them whole" in summary


def test_a_dataset_that_fits_says_so_and_drops_nothing(dataset_file: Any, tiny_tokenizer: Any) -> None:
    path = dataset_file("messages")
    built = data.build_datasets(
        path, "m", "auto", tiny_tokenizer, data.CHATML_TEMPLATE, "responses", 0, max_seq_length=LIMIT
    )
    assert built.lengths is not None and built.lengths.truncated == 0 and len(built.train) == len(QA)
    assert built.lengths.summary().endswith(f"none of {len(QA)} samples longer than maxSeqLength {LIMIT}")
    assert not built.lengths.warning


# --- Events on the cluster -------------------------------------------------------------------------


class FakeApi:
    """CustomObjectsApi (status patches, get) and CoreV1Api (events) in one recorder."""

    def __init__(self, fail_with: int | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.fail_with = fail_with

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> Any:
        return {"metadata": {"name": name, "uid": "uid-from-get"}}

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> None:
        if self.fail_with is not None:
            exc = RuntimeError("refused")
            exc.status = self.fail_with  # type: ignore[attr-defined]
            raise exc
        self.events.append((namespace, body))


@pytest.mark.parametrize("uid", ["uid-from-config", ""])
def test_an_event_is_created_on_the_finetunejob(uid: str) -> None:
    api = FakeApi()
    reporter = KubeStatusReporter(api, "team-a", "job-1", interval=0.1, core=api, uid=uid)
    reporter.event("Warning", "DatasetTruncated", "x" * 2000)
    reporter.close()
    ((namespace, body),) = api.events
    assert namespace == "team-a" and body.metadata.namespace == "team-a"
    assert body.metadata.name.startswith("job-1.")
    ref = body.involved_object
    assert (ref.api_version, ref.kind, ref.name, ref.namespace) == (
        contract.API_VERSION,
        contract.KIND,
        "job-1",
        "team-a",
    )
    assert ref.uid == (uid or "uid-from-get")  # kubectl describe matches events by uid
    assert (body.type, body.reason) == ("Warning", "DatasetTruncated")
    assert len(body.message) == 1024 and body.message.endswith("...")
    assert body.source.component == "kubeft-trainer"


def test_a_forbidden_event_is_logged_and_not_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi(fail_with=403)
    reporter = KubeStatusReporter(api, "team-a", "job-1", interval=0.1, core=api, uid="u")
    reporter.event("Normal", "DatasetLengths", "fine")
    api.fail_with = None
    reporter.event("Normal", "DatasetLengths", "fine again")
    reporter.close()
    assert api.events == []
    assert "needs create on events" in caplog.text
