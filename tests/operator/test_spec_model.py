"""One spec model (kubeft/spec.py) for the CRD, the operator, the trainer and ``kubeft estimate``.

The CRD and the model must say the same thing about every field (enums, defaults, bounds), the
operator's job.json must load in the trainer's loader, and the two must plan the same bytes.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
import pytest
import yaml
from kubeft_operator import placement as pl
from kubeft_operator import resources
from kubeft_operator.api import FineTuneJob
from kubeft_operator.reconcile import Inputs, Observed, decide
from kubeft_operator.settings import Settings
from kubeft_trainer import profile
from kubeft_trainer.config import load_config
from kubeft_trainer.errors import InvalidInputError
from kubeft_trainer.status import StatusReporter
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kubeft import contract
from kubeft import estimate as est
from kubeft import spec as sm

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds" / "kubeft.io_finetunejobs.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _literals(annotation: Any) -> list[Any] | None:
    """The values of a Literal inside an annotation (Optional, tuple items), if any."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = _literals(arg)
        if found is not None:
            return found
    return None


def _bounds(metadata: list[Any], array: bool) -> dict[str, Any]:
    """A field's constraints in the CRD's OpenAPI v3.0 words."""
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, at.Ge):
            out["minimum"] = m.ge
        elif isinstance(m, at.Gt):
            out["minimum"], out["exclusiveMinimum"] = m.gt, True
        elif isinstance(m, at.Le):
            out["maximum"] = m.le
        elif isinstance(m, at.Lt):
            out["maximum"], out["exclusiveMaximum"] = m.lt, True
        elif isinstance(m, at.MinLen):
            out["minItems" if array else "minLength"] = m.min_length
        elif isinstance(m, at.MaxLen):
            out["maxItems" if array else "maxLength"] = m.max_length
        elif getattr(m, "pattern", None):
            out["pattern"] = m.pattern
    return out


def _crd_bounds(node: dict[str, Any]) -> dict[str, Any]:
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
            "minItems", "maxItems", "pattern")  # fmt: skip
    out = {k: node[k] for k in keys if k in node and node[k] is not False}
    if node.get("type") == "object" and "maxProperties" in node:
        out["maxLength"] = node["maxProperties"]  # a dict field's max_length
    return out


def _cel_pattern(node: dict[str, Any]) -> str | None:
    """A pattern the CRD checks with CEL (for a message of its own) instead of ``pattern``."""
    for rule in node.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if text.startswith("self.matches('") and text.endswith("')"):
            return str(text[len("self.matches('") : -2])
    return None


def _item_annotation(annotation: Any) -> Any:
    """The item type of a tuple field (``tuple[Annotated[str, ...], ...]``), unwrapping Annotated/Optional."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    for arg in args:
        if typing.get_origin(arg) is tuple:
            return typing.get_args(arg)[0]
        if typing.get_origin(arg) is typing.Annotated:
            return _item_annotation(typing.get_args(arg)[0])
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0]
    return None


def _compare(model: type[BaseModel], node: dict[str, Any], path: str, problems: list[str]) -> None:
    props = node.get("properties", {})
    keys = sm.keys(model)  # type: ignore[arg-type]
    for missing in sorted(set(props) - set(keys)):
        problems.append(f"{path}.{missing}: in the CRD, not in the model")
    for missing in sorted(set(keys) - set(props)):
        problems.append(f"{path}.{missing}: in the model, not in the CRD")
    for key in sorted(set(props) & set(keys)):
        field = model.model_fields[keys[key]]
        crd = props[key]
        where = f"{path}.{key}"
        sub = sm._submodel(field.annotation)
        if sub is not None:
            _compare(sub, crd.get("items", crd), where, problems)
            continue
        array = crd.get("type") == "array"
        enum = _literals(field.annotation)
        crd_enum = crd.get("enum") or crd.get("items", {}).get("enum")
        if enum != crd_enum:
            problems.append(f"{where}: enum {enum} in the model, {crd_enum} in the CRD")
        default = field.default
        if default is PydanticUndefined or default is None:
            default = None
        elif isinstance(default, tuple):
            default = list(default)
        if default != crd.get("default") and not (default in ({}, []) and "default" not in crd):
            problems.append(f"{where}: default {default!r} in the model, {crd.get('default')!r} in the CRD")
        mine, theirs = _bounds(field.metadata, array), _crd_bounds(crd)
        # URIs: the CRD takes s3/hf/pvc only (CEL), the model also local paths (`kubeft train`)
        if "pattern" in mine and "pattern" not in theirs and _cel_pattern(crd):
            theirs["pattern"] = _cel_pattern(crd)
        if mine != theirs:
            problems.append(f"{where}: bounds {mine} in the model, {theirs} in the CRD")
        item = _item_annotation(field.annotation) if array else None
        if item is not None and typing.get_origin(item) is typing.Annotated:
            item_meta = [m for info in typing.get_args(item)[1:] for m in getattr(info, "metadata", [])]
            if _bounds(item_meta, False) != _crd_bounds(crd["items"]):
                problems.append(
                    f"{where}[]: item bounds differ: {_bounds(item_meta, False)} vs {crd['items']}"
                )


def test_the_crd_and_the_spec_model_have_the_same_fields_enums_defaults_and_bounds() -> None:
    problems: list[str] = []
    _compare(sm.FineTuneJobSpec, SCHEMA["properties"]["spec"], "spec", problems)
    assert not problems, "\n".join(problems)


def test_the_comparison_notices_a_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    crd = json.loads(json.dumps(SCHEMA["properties"]["spec"]))
    crd["properties"]["hyperparameters"]["properties"]["maxSeqLength"]["default"] = 4096
    crd["properties"]["hyperparameters"]["properties"]["optimizer"]["enum"].append("lion")
    problems: list[str] = []
    _compare(sm.FineTuneJobSpec, crd, "spec", problems)
    assert any("maxSeqLength: default 2048" in p for p in problems)
    assert any("optimizer: enum" in p for p in problems)


def test_the_model_knows_every_optimizer_the_estimator_does() -> None:
    assert set(sm.OPTIMIZERS) == set(est.OPTIMIZERS)


def test_phases_and_status_fields_have_one_writer_each_and_match_the_crd() -> None:
    status = SCHEMA["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == list(contract.PHASES)
    owners = set(contract.OPERATOR_STATUS_FIELDS) | set(contract.TRAINER_STATUS_FIELDS)
    assert not set(contract.OPERATOR_STATUS_FIELDS) & set(contract.TRAINER_STATUS_FIELDS)
    assert set(status) == owners | {"phase"}
    assert set(contract.TRAINER_PHASES) | set(contract.OPERATOR_PHASES) == set(contract.PHASES)
    reporter = StatusReporter()  # the trainer cannot write the operator's fields or phases
    with pytest.raises(ValueError, match="belong to the operator"):
        reporter.update(gpu={"product": "x"})
    with pytest.raises(ValueError, match="not one the trainer sets"):
        reporter.update(phase=contract.PHASE_INITIALIZING)


SPEC: dict[str, Any] = {
    "model": {"source": "s3://models/llama-3.1-8b/"},
    "method": "auto",
    "dataset": {"source": "s3://data/train.jsonl", "eval": {"split": 0.1, "prompts": ["Hi"]}},
    "hyperparameters": {"batchSize": 4, "maxSeqLength": 4096, "lora": {"r": 32, "targetModules": ["q_proj"]}},
    "storage": {"credentialsSecret": "minio-creds"},
    "export": {"formats": ["adapter"]},
}


def test_unknown_keys_are_refused_with_their_path_or_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    typo = {**SPEC, "hyperparameters": {**SPEC["hyperparameters"], "learningrate": 1e-4}}
    with pytest.raises(
        sm.SpecError, match=r"spec\.hyperparameters\.learningrate: unknown key \(known: .*learningRate"
    ):
        sm.parse_spec(typo)
    with caplog.at_level(logging.WARNING):
        spec = sm.parse_spec({**typo, "newField": 1}, strict=False)
    assert spec.hyperparameters.batch_size == 4
    assert "spec.hyperparameters.learningrate" in caplog.text and "spec.newField" in caplog.text


def test_every_problem_is_named_by_its_path() -> None:
    bad = {**SPEC, "method": "dpo", "hyperparameters": {"batchSize": 0, "lora": {"dropout": 2}}}
    with pytest.raises(sm.SpecError) as info:
        sm.parse_spec(bad)
    text = str(info.value)
    assert "spec.method: 'dpo' is not one of" in text
    assert "spec.hyperparameters.batchSize: must be at least 1, got 0" in text
    assert "spec.hyperparameters.lora.dropout: must be at most 0.9, got 2" in text


def _decide(spec: dict[str, Any]) -> tuple[FineTuneJob, Any]:
    body = {"metadata": {"name": "j", "namespace": "team-a", "uid": "u-1", "generation": 1}, "spec": spec}
    job = FineTuneJob.from_body(body)
    h100 = {
        "metadata": {"name": "h100", "labels": {contract.LABEL_GPU_PRODUCT: "NVIDIA-H100-80GB-HBM3"}},
        "spec": {},
        "status": {
            "allocatable": {contract.RESOURCE_GPU: "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    inputs = Inputs(shape=est.known_shape("llama-3.1-8b"), classes=pl.gpu_classes(pl.gpu_nodes([h100], [])))
    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    return job, decide(job, Observed(), inputs, Settings(), now)


def test_the_operators_job_json_loads_in_the_trainer_which_plans_the_same_bytes(tmp_path: Path) -> None:
    job, d = _decide(SPEC)
    assert d.create is not None
    # auto on an 80 GB GPU would take full fine-tuning, but an adapter is asked for: LoRA, the most
    # accurate method that makes one (full + adapter was refused by the trainer, failing the job)
    assert d.create.method == "lora"
    doc = resources.trainer_config(job, d.create)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(doc))
    cfg = load_config(env={contract.ENV_JOB_CONFIG: str(path)})
    # the spec round-trips: the trainer reads what the operator wrote, with the method resolved
    assert cfg.resolved_method == d.create.method
    assert cfg.spec.hyperparameters == job.spec.hyperparameters
    assert cfg.spec.dataset == job.spec.dataset
    assert cfg.spec.export_formats(cfg.resolved_method) == ("adapter",)
    # the trainer's plan for its profiles is the operator's placement estimate, byte for byte
    shape = est.known_shape("llama-3.1-8b")  # the trainer reads the config.json the operator read
    plan = est.estimate_profiles(shape, est.Setup.from_spec(cfg.spec, cfg.resolved_method))  # type: ignore[arg-type]
    assert {name: e.to_dict() for name, e in plan.items()} == doc["estimate"]["profiles"]
    assert d.status["vram"]["estimatedBytes"] == plan["configured"].total == doc["estimate"]["estimatedBytes"]
    # the trainer's lean profile (no room on the host to offload) is the plan's lean estimate
    lean = profile.choose(
        cfg.spec, cfg.resolved_method, shape, True, 80 * 2**30, cfg.placement, "lean", 2**30
    )
    assert (lean.name, lean.micro_batch, lean.estimated_bytes) == ("lean", 4, plan["lean"].total)


def test_kubeft_estimate_prints_the_operators_breakdown_for_a_job_file(tmp_path: Path) -> None:
    from kubeft import estimate_cli
    from kubeft.cli import build_parser

    _, d = _decide({**SPEC, "method": "lora"})
    manifest = {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "metadata": {"name": "j"},
                "spec": {**SPEC, "method": "lora"}}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    args = build_parser().parse_args(["estimate", "-f", str(path), "llama-3.1-8b", "-o", "json"])
    out = io.StringIO()
    assert estimate_cli.run(args, out) == 0
    printed = json.loads(out.getvalue())
    assert printed["estimatedBytes"] == d.status["vram"]["estimatedBytes"]
    assert printed["breakdown"] == d.status["vram"]["breakdown"]


def test_kubeft_estimate_says_when_the_estimator_refuses_an_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubeft import estimate_cli
    from kubeft.cli import build_parser

    moe = tmp_path / "config.json"
    moe.write_text(json.dumps({**est.KNOWN_SHAPES["mistral-7b-v0.3"], "num_local_experts": 8}))
    args = build_parser().parse_args(["estimate", str(moe)])
    assert estimate_cli.run(args) == 2
    assert "the estimator refuses this model: mixture-of-experts" in capsys.readouterr().err


def test_a_local_job_file_is_refused_by_the_trainer_with_the_same_message(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "hyperparameters": {"maxSeqLength": 8}}))
    with pytest.raises(
        InvalidInputError, match=r"spec\.hyperparameters\.maxSeqLength: must be at least 16, got 8"
    ):
        load_config(path, env={})
