"""Replays the committed calibration grid (bench/results/estimator_grid.json) through the estimator.

Every point is a peak measured on a GPU while kubeft's trainer ran (NVML, CUDA context
included), on the GPU model the point names. The estimator must be within 10% of it and never
more than 5% below (an under-estimate means an OOM on the node the operator chose).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kubeft import estimate as est

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))

import fit  # noqa: E402  (bench/fit.py: the one place that turns a grid point into a Setup)

GRID = REPO / "bench" / "results" / "estimator_grid.json"
POINTS: list[dict[str, Any]] = json.loads(GRID.read_text())["points"]


def test_the_grid_covers_architectures_gpus_methods_and_profiles() -> None:
    assert len(POINTS) >= 40
    assert len({p["gpu"] for p in POINTS}) >= 2  # every point names the GPU model it was measured on
    shapes = {p["shape"] for p in POINTS}
    assert shapes >= {"llama-3.2-1b", "llama-3.1-8b", "qwen2.5-1.5b", "qwen2.5-7b"}
    # architectures whose head ratios and MLP widths differ, so the h, h_kv and F terms are told apart
    ratios = {(round(s.kv_dim / s.hidden_size, 3), round(s.intermediate_size / s.hidden_size, 2))
              for s in map(est.known_shape, shapes)}  # fmt: skip
    assert len(ratios) >= 3
    assert {p["method"] for p in POINTS} == {"qlora", "lora", "full"}
    kinds = {(p["gradient_checkpointing"], p["offload_activations"]) for p in POINTS}
    assert kinds == {(False, False), (True, False), (True, True)}


@pytest.mark.parametrize("point", POINTS, ids=fit.point_id)
def test_estimate_matches_the_measured_peak(point: dict[str, Any]) -> None:
    reason = fit.skip_reason(point)
    if reason is not None:  # a run that failed, ran out of memory or measured nothing
        pytest.skip(reason)
    setup = fit.point_setup(point)
    predicted = est.estimate(est.known_shape(point["shape"]), setup).total
    measured = point["measured_nvml_bytes"]
    error = (predicted - measured) / measured
    assert abs(error) <= 0.10, (
        f"{error:+.1%}: predicted {predicted / 2**30:.2f} GiB, measured {measured / 2**30:.2f}"
    )
    assert error >= -0.05, f"under-estimate {error:+.1%}"
