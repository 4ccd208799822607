"""Replays the committed calibration grid (bench/results/estimator_grid.json) through the estimator.

Every point is a peak measured on a GPU while kubeft's trainer ran (NVML, CUDA context
included). The estimator must be within 10% of it and never more than 5% below (an
under-estimate means an OOM on the node the operator chose).
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


def _id(p: dict[str, Any]) -> str:
    ckpt = "offload" if p["offload_activations"] else ("ckpt" if p["gradient_checkpointing"] else "nockpt")
    return f"{p['shape']}-{p['method']}-{p['seq_len']}x{p['micro_batch']}-{ckpt}"


def test_the_grid_covers_both_shapes_and_both_profiles() -> None:
    assert {p["shape"] for p in POINTS} >= {"llama-3.2-1b", "llama-3.1-8b"}
    assert {p["gradient_checkpointing"] for p in POINTS} == {True, False}


@pytest.mark.parametrize("point", POINTS, ids=_id)
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
