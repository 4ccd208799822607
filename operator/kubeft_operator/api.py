"""The FineTuneJob as the operator reads it: identity, the spec model, the status as read.

The spec model itself is kubeft's one spec model (:mod:`kubeft.spec`), shared with the trainer,
``kubeft estimate`` and the bench; parsed once at the top of each handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kubeft.profile import Profile
from kubeft.spec import FineTuneJobSpec, SpecError, parse_spec

__all__ = ["FineTuneJob", "FineTuneJobSpec", "InvalidSpec"]


class InvalidSpec(ValueError):
    """The object does not parse into the spec model (only for objects the schema let through)."""


class FineTuneJob(BaseModel):
    """A parsed FineTuneJob: identity, spec and the status as read (a plain dict)."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    uid: str
    generation: int = 0
    spec: FineTuneJobSpec
    status: dict[str, Any] = Field(default_factory=dict)
    deletion_timestamp: str | None = None
    profile: Profile | None = None  # the namespace's FineTuneProfile, whose defaults are in ``spec``

    @classmethod
    def from_body(cls, body: Mapping[str, Any], profile: Profile | None = None) -> FineTuneJob:
        """Parses a FineTuneJob object as the API returns it, with ``profile``'s defaults filled in
        where the job has none; raises :class:`InvalidSpec`."""
        meta = body.get("metadata") or {}
        raw = dict(body.get("spec") or {})
        if profile is not None:
            raw = profile.apply_defaults(raw)
        try:
            # lenient: the apiserver checked the object against the CRD, which may be newer than us
            spec = parse_spec(raw, strict=False)
            return cls(
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid", ""),
                generation=meta.get("generation") or 0,
                spec=spec,
                status=dict(body.get("status") or {}),
                deletion_timestamp=meta.get("deletionTimestamp"),
                profile=profile,
            )
        except KeyError as exc:
            raise InvalidSpec(f"metadata.{exc.args[0]} is missing") from exc
        except SpecError as exc:
            raise InvalidSpec(str(exc)) from exc

    def profile_violations(self, default_bucket: str = "") -> list[str]:
        """What the job's profile forbids in this job now (the profile may have changed since),
        reads from other namespaces' runs included (``default_bucket``: the operator's)."""
        if self.profile is None:
            return []
        spec = self.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
        return self.profile.violations(spec, self.namespace, default_bucket)

    @property
    def phase(self) -> str:
        """``status.phase``, empty before the operator first wrote it."""
        return str(self.status.get("phase") or "")

    @property
    def restarts(self) -> int:
        """``status.restarts``: failed attempts so far."""
        return int(self.status.get("restarts") or 0)
