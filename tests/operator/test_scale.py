"""The scale benchmark's code path on 100 jobs (bench/scale.py runs 1,000): every job placed and
Succeeded through the real operator with kwok playing the pods, and finished jobs costing the
operator no request. Bounds are request counts, generous, so a regression (a LIST per reconcile,
a timer that never idles) shows without depending on this machine's speed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import scale  # noqa: E402

pytestmark = pytest.mark.stack

JOBS = 100


def test_a_hundred_jobs_are_placed_and_finish_and_finished_jobs_cost_no_request(
    stack: Any, kubeft_crds: list[str], tmp_path: Path
) -> None:
    r = scale.run(jobs=JOBS, nodes=20, run_seconds=5, steady_seconds=20, timeout=600, out=None,
                  log_dir=tmp_path)  # fmt: skip
    print(scale.markdown(r))
    assert r["failed"] == 0, r["failures"]
    assert r["succeeded"] == JOBS
    assert r["to_placed_s"]["n"] == JOBS and r["to_bound_s"]["n"] == JOBS
    # per job over its life: its Secret, LocalQueue and objects (6 creates), a handful of status
    # patches and events; nothing proportional to time or to the number of other jobs
    assert r["operator_requests_per_job"] <= 40, r["operator_requests"]
    assert not any(k.startswith("list ") and "events" not in k for k in r["operator_requests"]), r[
        "operator_requests"
    ]
    # all finished: nothing at all in the steady window
    assert r["steady_operator_requests"] == {}, r["steady_operator_requests"]
