"""The trainer's config contract: the operator's job.json, local job.yaml files, overrides, plain errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeft_trainer.config import load_config, parse_spec
from kubeft_trainer.errors import InvalidInputError

from kubeft import contract

SPEC: dict[str, Any] = {
    "model": {"source": "s3://models/llama-3.2-1b-instruct/"},
    "method": "qlora",
    "dataset": {"source": "s3://datasets/medqa/train.jsonl", "format": "auto", "eval": {"split": 0.1}},
    "hyperparameters": {
        "epochs": 1,
        "learningRate": 2e-4,
        "batchSize": 2,
        "gradientAccumulation": 4,
        "maxSeqLength": 2048,
        "packing": True,
        "lora": {"r": 16, "alpha": 16, "dropout": 0, "targetModules": ["all-linear"]},
        "optimizer": "adamw_8bit",
        "seed": 0,
    },
    "resources": {"gpus": 1, "gpuMemory": "auto"},
    "storage": {
        "endpoint": "http://minio.minio:9000",
        "bucket": "kubeft",
        "credentialsSecret": "minio-creds",
    },
    "checkpoints": {"everySteps": 100, "keep": 3},
    "export": {"formats": ["adapter", "merged-16bit"]},
}


def trainer_config(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": contract.TRAINER_CONFIG_API_VERSION,
        "kind": contract.TRAINER_CONFIG_KIND,
        "job": {"name": "medqa", "namespace": "team-a", "uid": "u-1"},
        "attempt": 1,
        "spec": spec,
        "placement": {
            "gpuProduct": "NVIDIA-H100-80GB-HBM3",
            "gpuMemoryBytes": 85899345920,
            "gpuCount": 1,
            "x": 1,
        },
        "estimate": {"estimatedBytes": 123, "method": "qlora"},
    }


def test_operator_job_json_is_read_from_the_env_path(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(trainer_config(SPEC)))
    cfg = load_config(env={contract.ENV_JOB_CONFIG: str(path), contract.ENV_METRICS_PORT: "9555"})
    assert (cfg.job.name, cfg.job.namespace, cfg.job.uid) == ("medqa", "team-a", "u-1")
    assert cfg.spec.hyperparameters.learning_rate == pytest.approx(2e-4)
    assert cfg.spec.hyperparameters.lora.target_modules == ("all-linear",)
    assert cfg.spec.dataset.eval is not None and cfg.spec.dataset.eval.split == pytest.approx(0.1)
    assert cfg.spec.export_formats("qlora") == ("adapter", "merged-16bit")
    assert cfg.placement["gpuProduct"] == "NVIDIA-H100-80GB-HBM3"
    assert cfg.runtime.metrics_port == 9555


def test_operator_job_json_with_unknown_spec_keys_warns_instead_of_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {**SPEC, "newOperatorField": {"a": 1}, "hyperparameters": {**SPEC["hyperparameters"], "fancy": 2}}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(trainer_config(spec)))
    with caplog.at_level(logging.WARNING):
        cfg = load_config(env={contract.ENV_JOB_CONFIG: str(path)})
    assert cfg.spec.hyperparameters.batch_size == 2
    assert "spec.newOperatorField" in caplog.text
    assert "spec.hyperparameters.fancy" in caplog.text


def test_local_finetunejob_manifest_rejects_unknown_keys_with_their_path(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": "local-job", "namespace": "dev"},
        "spec": {**SPEC, "hyperparameters": {**SPEC["hyperparameters"], "learningrate": 1e-4}},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(InvalidInputError, match=r"spec\.hyperparameters\.learningrate: unknown key"):
        load_config(path, env={})


def test_local_manifest_takes_name_from_metadata_and_yaml_numbers_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    # YAML 1.1 reads 2e-4 as a string; users write it that way all the time.
    text = yaml.safe_dump(
        {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "metadata": {"name": "j"}, "spec": SPEC}
    )
    path.write_text(text.replace("0.0002", "2e-4"))
    cfg = load_config(path, env={})
    assert cfg.job.name == "j"
    assert cfg.spec.hyperparameters.learning_rate == pytest.approx(2e-4)


def test_overrides_set_fields_and_reject_unknown_paths(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    cfg = load_config(
        path, ["hyperparameters.maxSteps=20", "spec.dataset.trainOn=all", "hyperparameters.lora.r=4"], env={}
    )
    assert cfg.spec.hyperparameters.max_steps == 20
    assert cfg.spec.dataset.train_on == "all"
    assert cfg.spec.hyperparameters.lora.r == 4
    with pytest.raises(InvalidInputError, match="hyperparameters has no key 'maxStep'"):
        load_config(path, ["hyperparameters.maxStep=20"], env={})


def test_env_sets_the_job_identity(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    cfg = load_config(path, env={contract.ENV_JOB_NAME: "from-env", contract.ENV_JOB_NAMESPACE: "ns-env"})
    assert (cfg.job.name, cfg.job.namespace) == ("from-env", "ns-env")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "full"}, r"spec\.export\.formats: 'adapter' needs method qlora, lora or auto"),
        ({"method": "sgd"}, r"spec\.method: 'sgd' is not one of"),
        (
            {"dataset": {"source": "x.jsonl", "eval": {"split": 1.5}}},
            r"eval\.split: must be at most 0\.5, got 1\.5",
        ),
        (
            {"dataset": {"source": "x.jsonl", "eval": {"split": 0.1, "source": "y"}}},
            r"spec\.dataset\.eval: takes either split or source",
        ),
        ({"hyperparameters": {"optimizer": "adamw_bnb_8bit"}}, r"optimizer: 'adamw_bnb_8bit' is not one of"),
        ({"hyperparameters": {"lora": {"targetModules": ["all-linear", "q_proj"]}}}, "list it alone"),
        ({"storage": {"bucket": "Bad_Bucket"}}, r"spec\.storage\.bucket: String should match pattern"),
        ({"hyperparameters": {"batchSize": "two"}}, r"batchSize: expected an integer, got 'two'"),
        ({"hyperparameters": {"learningRate": 0}}, "learningRate: must be greater than 0"),
        ({"model": {}}, "spec.model.source is required"),
    ],
)
def test_invalid_specs_fail_fast_with_a_plain_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_spec({**SPEC, **change})


def test_missing_config_is_an_invalid_input_error() -> None:
    with pytest.raises(InvalidInputError, match="KUBEFT_JOB_CONFIG"):
        load_config(env={})


def test_full_method_defaults_to_the_merged_export() -> None:
    hp = {k: v for k, v in SPEC["hyperparameters"].items() if k != "lora"}
    spec = parse_spec({**SPEC, "method": "full", "hyperparameters": hp, "export": {}})
    assert spec.export_formats("full") == ("merged-16bit",)
    with pytest.raises(
        InvalidInputError, match=r"spec\.hyperparameters\.lora: only the qlora and lora methods use it"
    ):
        parse_spec({**SPEC, "method": "full", "export": {}})


def test_kubeft_train_subcommand_takes_the_trainer_flags() -> None:
    import argparse

    from kubeft_trainer import cli

    parser = argparse.ArgumentParser(prog="kubeft")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["train", "--config", "job.yaml", "--set", "hyperparameters.maxSteps=3", "--no-status"]
    )
    assert (
        args.config == Path("job.yaml")
        and args.overrides == ["hyperparameters.maxSteps=3"]
        and args.no_status
    )
    assert callable(args.func)


def test_the_trainer_sees_one_gpu_unless_told_which(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubeft_trainer.__main__ import one_gpu

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    one_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # chosen by the user or a launcher: kept
    one_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
