"""Status reporting: only the trainer's fields, merged, at most one patch per interval."""

from __future__ import annotations

from typing import Any

import pytest
from kubeft_trainer.status import KubeStatusReporter, StatusReporter

from kubeft import contract


class FakeCustomObjects:
    """Records status patches like CustomObjectsApi.patch_namespaced_custom_object_status."""

    def __init__(self, fail_with: int | None = None) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_with = fail_with

    def patch_namespaced_custom_object_status(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any]
    ) -> None:
        assert (group, version, plural) == (contract.GROUP, contract.VERSION, contract.PLURAL)
        if self.fail_with is not None:
            exc = RuntimeError("refused")
            exc.status = self.fail_with  # type: ignore[attr-defined]
            raise exc
        self.patches.append((namespace, name, body))


def test_many_updates_become_few_merged_patches() -> None:
    api = FakeCustomObjects()
    reporter = KubeStatusReporter(api, "team-a", "job-1", interval=1.0)
    reporter.update(phase="Training")
    for step in range(1, 51):
        reporter.update(progress={"step": step, "totalSteps": 50, "trainLoss": 1.0 / step})
    reporter.update(checkpoints={"latest": "s3://b/k/", "step": 50})
    reporter.close()
    # at most the first update goes out at once; the rest wait for the interval and go out as one
    assert 1 <= len(api.patches) <= 2
    namespace, name, last = api.patches[-1]
    assert (namespace, name) == ("team-a", "job-1")
    assert last["status"]["progress"] == {"step": 50, "totalSteps": 50, "trainLoss": 1.0 / 50}
    assert last["status"]["checkpoints"] == {"latest": "s3://b/k/", "step": 50}
    merged: dict[str, Any] = {}
    for _, _, body in api.patches:
        merged.update(body["status"])
    assert merged["phase"] == "Training"


def test_operator_fields_and_phases_are_refused() -> None:
    reporter = StatusReporter()
    with pytest.raises(ValueError, match="belong to the operator"):
        reporter.update(conditions=[])
    with pytest.raises(ValueError, match="not one the trainer sets"):
        reporter.update(phase="Succeeded")


def test_a_forbidden_status_patch_disables_reporting_without_failing() -> None:
    api = FakeCustomObjects(fail_with=403)
    reporter = KubeStatusReporter(api, "team-a", "job-1", interval=0.1)
    reporter.update(phase="Training")
    reporter.update(progress={"step": 1})
    reporter.close()
    assert api.patches == []
