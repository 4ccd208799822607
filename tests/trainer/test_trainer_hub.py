"""hf:// sources through the trainer's real download code (huggingface_hub), against a stand-in hub.

Nothing can reach huggingface.co here; kubeft.dev.fakehub answers the same HTTP calls for
local directories. The trainer runs as a subprocess: huggingface_hub reads HF_ENDPOINT when
it is imported.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kubeft import contract
from kubeft.dev import fakehub

from .runs import spawn, write_job
from .trainer_helpers import ROWS, job_spec, write_jsonl

pytestmark = pytest.mark.slow

TOKEN = "hf_test_token"


@pytest.fixture()
def hub(tiny_model_dir: Path, tmp_path: Path) -> Any:
    model = tmp_path / "hub" / "model"
    shutil.copytree(tiny_model_dir, model)
    data = tmp_path / "hub" / "data"
    write_jsonl(data / "qa-train.jsonl", ROWS["alpaca"]() * 2)
    write_jsonl(data / "qa-test.jsonl", ROWS["alpaca"]())
    repos = {
        ("model", "kubeft-test/tiny-llama"): model,
        ("model", "kubeft-test/gated-llama"): model,
        ("dataset", "kubeft-test/qa"): data,
    }
    gated = {("model", "kubeft-test/gated-llama"): TOKEN}
    with fakehub.serve(fakehub.FakeHub(repos, gated)) as h:
        yield h


def run(tmp_path: Path, hub: Any, model: str, dataset: str, token: str | None) -> tuple[int, dict[str, Any]]:
    spec = job_spec(Path("unused"), Path("unused"), maxSteps=2)
    spec["model"]["source"] = model
    spec["dataset"]["source"] = dataset
    spec["storage"] = {"endpoint": (tmp_path / "store").as_uri(), "bucket": "kubeft"}
    job = write_job(tmp_path / "job.yaml", spec)
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
           contract.ENV_TERMINATION_LOG: str(tmp_path / "termination-log")}  # fmt: skip
    if token:
        env[contract.ENV_HF_TOKEN] = token
    proc = spawn(job, tmp_path / "work", env=env, log=tmp_path / "trainer.log")
    rc = proc.wait(timeout=300)
    term = tmp_path / "termination-log"
    return rc, json.loads(term.read_text()) if term.exists() else {}


def test_model_and_dataset_split_download_from_the_hub_with_the_token(tmp_path: Path, hub: Any) -> None:
    rc, term = run(tmp_path, hub, "hf://kubeft-test/gated-llama", "hf://datasets/kubeft-test/qa:train", TOKEN)
    assert rc == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    resolved = {path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert f"/kubeft-test/gated-llama/resolve/{fakehub.COMMIT}/config.json" in resolved
    # the split picked the train file of the dataset repository, not the test one
    assert f"/datasets/kubeft-test/qa/resolve/{fakehub.COMMIT}/qa-train.jsonl" in resolved
    assert all(token == TOKEN for _, path, token in hub.requests if "gated-llama" in path)
    adapter = (
        tmp_path
        / "store"
        / "kubeft"
        / contract.artifacts_prefix(contract.job_prefix("test", "tiny"))
        / "adapter"
    )
    assert (adapter / "adapter_model.safetensors").is_file()
    log = (tmp_path / "trainer.log").read_text()
    assert "format alpaca (detected), 16 of 16 rows usable" in log  # the train file: 2 × 8 rows
    assert term == {}  # no termination message on success


@pytest.mark.parametrize(
    ("model", "dataset", "token", "says"),
    [
        ("hf://kubeft-test/gated-llama", "hf://datasets/kubeft-test/qa:train", None,
         "put an hfToken in the credentials Secret"),
        ("hf://kubeft-test/gated-llama", "hf://datasets/kubeft-test/qa:train", "hf_someone_else",
         "accept the model's terms on the hub with the account of the token in hfToken"),
        ("hf://kubeft-test/missing", "hf://datasets/kubeft-test/qa:train", TOKEN,
         "spec.model.source hf://kubeft-test/missing: cannot download from the Hugging Face Hub"),
        ("hf://kubeft-test/tiny-llama", "hf://datasets/kubeft-test/qa:validation", TOKEN,
         "spec.dataset.source hf://datasets/kubeft-test/qa:validation: no files for split 'validation'"),
    ],
)  # fmt: skip
def test_unreachable_hub_sources_fail_as_invalid_input_with_the_reason(
    tmp_path: Path, hub: Any, model: str, dataset: str, token: str | None, says: str
) -> None:
    rc, term = run(tmp_path, hub, model, dataset, token)
    assert rc == contract.EXIT_INVALID_INPUT
    assert term["reason"] == "InvalidInput" and says in term["message"], term
    assert "\n" not in term["message"]
