"""What maxSeqLength cuts: the length report, dropped samples, exit 2, steps without a loss, estimate."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from kubeft_trainer import data
from kubeft_trainer.__main__ import main
from kubeft_trainer.config import JobRef, RuntimeOptions, TrainerConfig, parse_spec
from kubeft_trainer.status import KubeStatusReporter, StatusReporter
from kubeft_trainer.train import Recipe

from kubeft import contract, estimate_cli

from .runs import losses, spawn, write_job
from .trainer_helpers import QA, SYSTEM, RecordingReporter, job_spec, write_jsonl

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


def recipe(spec: dict[str, Any], workdir: Path, status: StatusReporter) -> Recipe:
    cfg = TrainerConfig(
        job=JobRef(JOB, NS),
        spec=parse_spec(spec),
        runtime=RuntimeOptions(workdir=workdir, metrics_port=None, report_status=False),
    )
    return Recipe(cfg, status=status)


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


def test_long_samples_show_in_the_status_the_event_and_the_run_summary(
    mixed: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_model_dir, mixed, maxSeqLength=LIMIT, maxSteps=2)
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    status = RecordingReporter()
    recipe(spec, tmp_path / "work", status).run()
    # the Event: a Warning (6 of 14 cut is past the stated 5%), with counts, lines and percentiles
    ((type_, reason, message),) = status.events
    assert (type_, reason) == ("Warning", "DatasetTruncated")
    assert "6 of 14 samples longer than maxSeqLength 64" in message
    assert "dropped 4 whose answer was cut away (lines 9, 10, 11, 12)" in message and "p95 " in message
    # status.progress.message keeps it for the whole run
    assert status.state["progress"]["message"] == message
    # the run summary (status.metrics)
    metrics = status.state["metrics"]
    assert metrics["trainSamplesTruncated"] == 6 and metrics["trainSamplesAnswerCut"] == 4
    assert metrics["trainSamplesAnswerPartlyCut"] == 2 and metrics["trainSamples"] == 10
    assert metrics["trainTokensCut"] > 0
    assert metrics["trainLengthP50"] <= LIMIT < metrics["trainLengthP95"] <= metrics["trainLengthMax"]
    assert metrics["suggestedMaxSeqLength"] == metrics["trainLengthP95"]


def test_a_clean_dataset_gets_a_normal_event_and_no_message(
    dataset_file: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = job_spec(tiny_model_dir, dataset_file("alpaca"), maxSteps=1)
    status = RecordingReporter()
    run = recipe(spec, tmp_path / "work", status)
    try:
        run.setup()
    finally:
        run.cleanup(False)
    ((type_, reason, message),) = status.events
    assert (type_, reason) == ("Normal", "DatasetLengths")
    assert message.endswith("none of 8 samples longer than maxSeqLength 128")
    assert status.state["progress"]["message"] == ""


def test_every_answer_cut_away_exits_2_with_the_length_that_would_fit(
    tmp_path: Path, tiny_model_dir: Path, tiny_tokenizer: Any, trainer_env: Path
) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", answer_cut_rows(6))
    spec = job_spec(tiny_model_dir, path, maxSeqLength=LIMIT)
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job = write_job(tmp_path / "job.yaml", spec)
    rc = main(["--config", str(job), "--workdir", str(tmp_path / "work"), "--no-status", "--no-metrics"])
    assert rc == contract.EXIT_INVALID_INPUT == 2
    message = json.loads(trainer_env.read_text())
    assert message["reason"] == "InvalidInput"
    fits = p(token_lengths(tiny_tokenizer, path), 95)
    assert fits > LIMIT
    assert f"maxSeqLength {LIMIT} cuts away the answer of every sample" in message["message"]
    assert "lines 1, 2, 3, 4, 5, ..." in message["message"]
    assert f"maxSeqLength {fits} would keep 95% of the samples whole" in message["message"]


# --- steps without a trainable token ---------------------------------------------------------------


def _zero_loss_case(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Any]:
    # Packed rows of LIMIT tokens, one per step: a long sample alone fills one, and before the
    # answer-cut samples were dropped, such a row trained nothing (TRL logged loss 0.0).
    path = write_jsonl(tmp_path / "cut.jsonl", short_rows()[:2] + answer_cut_rows(10))
    spec = job_spec(tiny_model_dir, path, maxSeqLength=LIMIT, maxSteps=6, batchSize=1)
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    spec["checkpoints"] = {"everySteps": 6, "keep": 1}
    return spec


def _step_losses(tmp_path: Path) -> dict[int, float]:
    state = (
        tmp_path
        / "store/kubeft"
        / contract.checkpoint_prefix(contract.job_prefix(NS, JOB), 6)
        / "trainer_state.json"
    )
    return losses(json.loads(state.read_text()))


@pytest.mark.slow
def test_no_step_reports_a_loss_of_0(tmp_path: Path, tiny_model_dir: Path) -> None:
    status = RecordingReporter()
    recipe(_zero_loss_case(tmp_path, tiny_model_dir), tmp_path / "work", status).run()
    reported = status.said("trainLoss")
    assert reported and all(loss > 0 for loss in reported), reported  # the LOSS column
    step_losses = _step_losses(tmp_path)
    assert sorted(step_losses) == list(range(1, 7)) and all(v > 0 for v in step_losses.values()), step_losses
    assert status.state["metrics"]["trainLoss"] > 0


@pytest.mark.slow
def test_a_step_without_trainable_tokens_reports_no_loss(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the unavoidable case: keep the answer-cut samples (as if the cut were not checked),
    # so that some packed rows have no target at all.
    keep = data._trainable
    monkeypatch.setattr(data, "_trainable", lambda labels, end: keep(labels, len(labels)))
    status = RecordingReporter()
    run = recipe(_zero_loss_case(tmp_path, tiny_model_dir), tmp_path / "work", status)
    run.run()
    untrained = run.trainer.untrained_steps
    assert untrained and len(untrained) < 6  # the case is what it should be
    step_losses = _step_losses(tmp_path)
    assert sorted(step_losses) == sorted(set(range(1, 7)) - set(untrained))  # no value for those steps
    assert all(v > 0 for v in step_losses.values())
    assert all(loss > 0 for loss in status.said("trainLoss"))
    summary = status.state["metrics"]
    assert summary["untrainedSteps"] == len(untrained)
    # the run's mean is over the steps that trained, not diluted by zeros
    assert summary["trainLoss"] == pytest.approx(sum(step_losses.values()) / len(step_losses), rel=1e-4)


def test_the_guard_leaves_the_loss_out_of_an_untrained_steps_log() -> None:
    import torch
    from kubeft_trainer.callbacks import UntrainedStepGuard

    class Base:
        def __init__(self) -> None:
            self.state = type("State", (), {"global_step": 0})()
            self.logged: list[dict[str, float]] = []

        def get_batch_samples(self, it: Any, n: int, device: Any) -> tuple[list[Any], None]:
            return [next(it) for _ in range(n)], None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            self.logged.append(dict(logs))

    class Trainer(UntrainedStepGuard, Base):
        pass

    trainer = Trainer()
    # only the first label is set: it is never a target, so the step trains nothing
    masked = {"labels": torch.tensor([[5, -100, -100]])}
    trained = {"labels": torch.tensor([[-100, -100, 7]])}
    for step, batch in enumerate([masked, trained], 1):
        trainer.get_batch_samples(iter([batch]), 1, "cpu")
        trainer.state.global_step = step
        trainer.log({"loss": 0.0 if step == 1 else 2.5, "grad_norm": 0.0, "learning_rate": 1e-3})
    assert trainer.untrained_steps == [1]
    assert trainer.logged == [
        {"grad_norm": 0.0, "learning_rate": 1e-3},
        {"loss": 2.5, "grad_norm": 0.0, "learning_rate": 1e-3},
    ]


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


# --- kubeft estimate --dataset -----------------------------------------------------------------


def estimate(*argv: str) -> tuple[int, str]:
    from kubeft.cli import build_parser

    args = build_parser().parse_args(["estimate", *argv])
    out = io.StringIO()
    return estimate_cli.run(args, out), out.getvalue()


def test_estimate_prints_the_trainers_length_report_and_estimates_for_the_suggestion(
    mixed: Path, tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    rc, text = estimate(str(tiny_model_dir), "--dataset", str(mixed), "--max-seq-length", str(LIMIT))
    assert rc == 0, text
    built = data.build_datasets(
        mixed, str(mixed), "auto", tiny_tokenizer, data.CHATML_TEMPLATE, "responses", 0, max_seq_length=LIMIT
    )
    assert built.lengths is not None
    suggested = p(token_lengths(tiny_tokenizer, mixed), 95)
    assert built.lengths.summary() in text  # the same numbers as the trainer's
    assert f"suggested   maxSeqLength {suggested} (keeps 95% of the samples whole)" in text
    assert f"batch 2 x {suggested} tokens" in text
    # JSON: the report, and the estimate is the one for the suggested length
    rc, doc_text = estimate(
        str(tiny_model_dir), "--dataset", str(mixed), "--max-seq-length", "64", "-o", "json"
    )
    doc = json.loads(doc_text)
    assert doc["dataset"]["suggestedMaxSeqLength"] == suggested
    assert doc["dataset"]["datasetSamplesAnswerCut"] == 4 and doc["dataset"]["maxSeqLength"] == LIMIT
    _, plain = estimate(str(tiny_model_dir), "--max-seq-length", str(suggested), "-o", "json")
    assert doc["estimatedBytes"] == json.loads(plain)["estimatedBytes"]


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages", "text"])
def test_estimate_reads_each_test_dataset_format(fmt: str, dataset_file: Any, tiny_model_dir: Path) -> None:
    path = dataset_file(fmt)
    rc, text = estimate(str(tiny_model_dir / "config.json"), "--dataset", str(path))
    assert rc == 0, text
    assert f"format {fmt} (detected), 8 of 8 rows usable" in text
    assert "none of 8 samples longer than maxSeqLength 2048" in text


def test_estimate_without_a_tokenizer_says_one_is_needed(
    mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, text = estimate("llama-3.1-8b", "--dataset", str(mixed))
    assert rc == 2 and text == ""
    assert "--dataset needs a tokenizer" in capsys.readouterr().err


def test_estimate_of_an_s3_dataset_needs_an_endpoint(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    rc, _ = estimate(str(tiny_model_dir), "--dataset", "s3://kubeft/data/train.jsonl", "--s3-endpoint", "")
    assert rc == 2
    assert "give the endpoint with --s3-endpoint" in capsys.readouterr().err


def test_estimate_of_a_dataset_without_usable_rows_exits_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"messages": [{"role": "user", "content": "q"}]}])
    rc, text = estimate(str(tiny_model_dir), "--dataset", str(path))
    assert rc == 2 and text == ""
    assert "no usable rows" in capsys.readouterr().err


@pytest.mark.stack
def test_what_max_seq_length_cuts_reaches_the_clusters_status_and_a_warning_event(
    stack: Any,
    kubeft_crds: list[str],
    custom_objects: Any,
    core_v1: Any,
    namespace: str,
    mixed: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    # the FineTuneJob in the cluster is the one whose status and events the trainer writes
    name = "cut-job"
    manifest = {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "s3://models/tiny/"},
            "dataset": {"source": "s3://data/mixed.jsonl"},
            "storage": {"credentialsSecret": "creds"},
            "suspend": True,  # no operator schedules it
        },
    }
    custom_objects.create_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, manifest
    )
    spec = job_spec(tiny_model_dir, mixed, maxSteps=2, maxSeqLength=LIMIT)
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job = write_job(tmp_path / "job.yaml", spec, name, namespace)
    proc = spawn(job, tmp_path / "run", {"KUBECONFIG": str(stack.kubeconfig)})
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    status = custom_objects.get_namespaced_custom_object_status(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
    )["status"]
    assert "whose answer was cut away (lines 9, 10, 11, 12)" in status["progress"]["message"]
    assert status["metrics"]["suggestedMaxSeqLength"] > LIMIT
    events = [
        e for e in core_v1.list_namespaced_event(namespace).items
        if e.involved_object.name == name and e.reason == "DatasetTruncated"
    ]  # fmt: skip
    assert len(events) == 1 and events[0].type == "Warning"
    text = events[0].message
    assert "lines 9, 10, 11, 12" in text and "p95" in text  # the dropped rows' lines and the percentiles
