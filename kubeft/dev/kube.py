"""Small Kubernetes helpers for the dev stack, the demo and the tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from kubeft.kubeapi import create_or_replace


def wait_until(
    fn: Callable[[], Any], timeout: float = 60.0, what: str = "condition", interval: float = 0.25
) -> Any:
    """Polls ``fn`` until it returns something truthy and returns it; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout}s")
        time.sleep(interval)


def wait_for_service_account(api: Any, namespace: str, name: str = "default", timeout: float = 60.0) -> None:
    """Waits until the controller manager has created a namespace's ServiceAccount."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account(name, namespace)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def apply_admission_policies(api: Any, path: Path) -> list[str]:
    """Creates or replaces each ValidatingAdmissionPolicy (and binding) in ``path``; returns their names.

    The API server starts enforcing them within a second or so (its policy informer)."""
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(api)
    calls = {
        "ValidatingAdmissionPolicy": (
            admission.create_validating_admission_policy,
            admission.read_validating_admission_policy,
            admission.replace_validating_admission_policy,
        ),
        "ValidatingAdmissionPolicyBinding": (
            admission.create_validating_admission_policy_binding,
            admission.read_validating_admission_policy_binding,
            admission.replace_validating_admission_policy_binding,
        ),
    }
    names = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in calls:
            continue
        create_or_replace(*calls[doc["kind"]], doc)
        names.append(doc["metadata"]["name"])
    return names


def apply_crds(api: Any, paths: Iterable[Path], timeout: float = 60.0) -> list[str]:
    """Creates or replaces each CRD in `paths` and waits until the API server serves it."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    names: list[str] = []
    for path in paths:
        # libyaml's loader when present: Kueue's workloads CRD is 1.4 MB of YAML (2.6 s in pure Python, 0.5 s)
        for doc in yaml.load_all(
            Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        ):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            create_or_replace(
                ext.create_custom_resource_definition,
                ext.read_custom_resource_definition,
                ext.replace_custom_resource_definition,
                doc,
            )
            names.append(doc["metadata"]["name"])
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            conds = {c.type: c.status for c in (crd.status.conditions or [])}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s: {conds}")
            time.sleep(0.2)
    return names
