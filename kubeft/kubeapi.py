"""The one create-or-replace of a cluster-scoped object given as a dict (CRDs, admission policies
and their bindings), shared by the operator and the local stack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def create_or_replace(
    create: Callable[[dict[str, Any]], Any],
    read: Callable[[str], Any],
    replace: Callable[[str, dict[str, Any]], Any],
    body: dict[str, Any],
) -> bool:
    """Creates ``body``; when it exists (409), replaces it at the stored resourceVersion.

    Returns True when it was created. ``create``/``read``/``replace`` are the official client's
    calls for the object's kind.
    """
    from kubernetes.client.rest import ApiException

    name = body["metadata"]["name"]
    try:
        create(body)
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise
    body["metadata"]["resourceVersion"] = read(name).metadata.resource_version
    replace(name, body)
    return False
