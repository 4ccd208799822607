"""The bench's reports: the loss comparison's verdicts and the calibration grid's merge.

The bench itself runs on a GPU machine, outside the test suite; what it concludes from its
measurements (within noise or not, which points the committed grid keeps) is plain code and is
tested here on made-up results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import fit  # noqa: E402
import grid  # noqa: E402
import run  # noqa: E402


def _result(label: str, held_out: float, losses: list[float]) -> dict[str, Any]:
    return {
        "label": label,
        "shape": "llama-1b",
        "held_out_loss": held_out,
        "losses": [[i + 1, x] for i, x in enumerate(losses)],
    }


def _row(table: str, label: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_labels_carry_a_training_seed() -> None:
    assert run.parse_label("peer") == ("peer", 0)
    assert run.parse_label("peer@1") == ("peer", 1)
    assert run.parse_label("kubeft-lean@3") == ("kubeft-lean", 3)


def test_loss_table_judges_each_trainer_against_the_peer_seed_spread() -> None:
    falling = [8.0 - 0.05 * i for i in range(40)]  # learnt: 8.0 → 6.05
    results = [
        _result("peer", 6.10, falling),
        _result("peer@1", 6.14, falling),  # spread 0.04: within noise is |Δ| ≤ 0.08
        _result("kubeft-lean", 6.16, falling),  # +0.06
        _result("kubeft", 6.30, falling),  # +0.20
    ]
    table = run.loss_table(results)
    assert _row(table, "kubeft-lean")[-2:] == ["+0.0600", "yes"]
    assert _row(table, "kubeft")[-2:] == ["+0.2000", "NO"]
    assert _row(table, "peer")[-2:] == ["—", "—"]
    assert "0.0400 nats" in table
    assert "task learnt" in table
    # train loss along the run: step 40 is the mean of the last 4 logged steps
    assert _row(table, "peer")[4] == f"{sum(falling[-4:]) / 4:.3f}"


def test_loss_table_says_when_the_task_was_not_learnt_or_noise_is_unknown() -> None:
    flat = [8.3] * 20
    table = run.loss_table([_result("peer", 8.3, flat), _result("kubeft", 8.3, flat)])
    assert "NOT learnt" in table
    assert "no noise estimate" in table
    assert _row(table, "kubeft")[-1] == "—"  # no verdict without a second peer seed


def _grid_file(path: Path, gpu: str, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"gpu": gpu, "versions": {"torch": "2.11.0"}, "points": rows}))
    return path


def _point(seq: int, mb: int, measured: int | None, **extra: Any) -> dict[str, Any]:
    row = grid.row_for("llama-1b", "qlora", seq, mb, 1)
    if measured is not None:
        row["measured_nvml_bytes"] = measured
    row.update(extra)
    return row


def test_collect_keeps_one_measurement_per_setting_and_lists_the_failures(tmp_path: Path) -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    old = _grid_file(tmp_path / "old.json", h100, [_point(2048, 4, 100), _point(512, 1, 50)])
    new = _grid_file(
        tmp_path / "grid-llama-1b.json",
        h100,
        [
            _point(2048, 4, 120),  # re-measured: the later one wins
            _point(4096, 4, None, oom=True, error="CUDA out of memory"),
            _point(4096, 1, None, error="exit 1: boom"),
        ],
    )
    into = tmp_path / "estimator_grid.json"
    assert grid.main(["collect", str(old), str(tmp_path / "grid-llama-1b.json"), "--into", str(into)]) == 0
    doc = json.loads(into.read_text())
    measured = {(p["seq_len"], p["micro_batch"]): p["measured_nvml_bytes"] for p in doc["points"]}
    assert measured == {(2048, 4): 120, (512, 1): 50}
    assert all(p["shape"] == "llama-3.2-1b" for p in doc["points"])  # the estimator's shape names
    failed = {(p["seq_len"], p["micro_batch"]): p for p in doc["not_measured"]}
    assert set(failed) == {(4096, 4), (4096, 1)} and failed[(4096, 4)]["oom"] is True
    assert doc["gpus"] == [h100] and all(p["gpu"] == h100 for p in doc["points"])
    assert new.exists()


def test_collect_keeps_each_gpu_models_points_apart(tmp_path: Path) -> None:
    h100, h200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    a = _grid_file(tmp_path / "a.json", h100, [_point(2048, 4, 100)])
    b = _grid_file(tmp_path / "b.json", h200, [_point(2048, 4, 90), _point(512, 4, 40)])
    out = tmp_path / "out.json"
    assert grid.main(["collect", str(a), str(b), "--into", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["gpus"] == [h100, h200]
    # the same setting measured on two GPU models is two points, each replayed against its own GPU
    measured = {fit.point_id(p): p["measured_nvml_bytes"] for p in doc["points"]}
    assert measured == {
        "H100-80GB-HBM3/llama-3.2-1b-qlora-2048x4-ckpt": 100,
        "H200/llama-3.2-1b-qlora-2048x4-ckpt": 90,
        "H200/llama-3.2-1b-qlora-512x4-ckpt": 40,
    }
    assert set(doc["versions"]) == {h100, h200}


def test_a_bad_point_is_refused_before_anything_runs() -> None:
    with pytest.raises(SystemExit, match="bad point"):
        grid.parse_point("qlora:2048:4")
    with pytest.raises(SystemExit, match="bad point"):
        grid.parse_point("qlora:2048:4:3")
    assert grid.parse_point("full:512:1:0") == ("full", 512, 1, 0)
