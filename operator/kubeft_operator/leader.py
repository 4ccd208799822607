"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Every replica watches and keeps its caches warm; only the one holding the Lease reconciles. The
holder renews the Lease every ``retry`` seconds; the others read it as often, and take it over
once its record has not changed for ``duration`` seconds by their own clock (so clocks of
different nodes need not agree). A leader that cannot renew for ``duration`` stops leading at once
(its workers stop) and the process exits, to come back as a standby: it never acts on a Lease it
may have lost. A single replica (no Lease name) leads from the start and makes no request.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import Gauge

log = logging.getLogger("kubeft.leader")

LEADING = Gauge("kubeft_operator_leader", "1 while this replica holds the leader Lease (and acts).")


def identity() -> str:
    """This replica's name in the Lease: the pod name (HOSTNAME) and a random suffix."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Holds (or waits for) the Lease ``namespace/name``; ``leading`` says whether to act now."""

    def __init__(
        self,
        api: client.ApiClient | None,
        namespace: str,
        name: str,
        duration: float = 10.0,
        retry: float = 2.0,
        on_started_leading: Callable[[], None] = lambda: None,
        on_stopped_leading: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api) if api is not None else None
        self.namespace, self.name = namespace, name
        self.duration, self.retry = duration, retry
        self.identity = identity()
        self.on_started_leading, self.on_stopped_leading = on_started_leading, on_stopped_leading
        self.clock = clock
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) as last read
        self._observed_at = 0.0  # our clock when that record last changed
        self._renewed_at = 0.0  # our clock at our last successful renewal
        self._thread: threading.Thread | None = None

    @classmethod
    def single(cls, on_started_leading: Callable[[], None] = lambda: None) -> LeaseElector:
        """One replica: leads at once, no Lease."""
        elector = cls(None, "", "", on_started_leading=on_started_leading)
        elector._leading.set()
        LEADING.set(1)
        return elector

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        if self.coordination is None:
            self.on_started_leading()
            return
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Gives the Lease up (so a standby takes over at once) and stops."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry + 5)
        if self.leading and self.coordination is not None:
            try:
                self._write(None, release=True)
                log.info("released the leader Lease %s/%s", self.namespace, self.name)
            except Exception as exc:  # the standby takes over after the Lease expires instead
                log.warning("could not release the leader Lease: %s", exc)
        self._leading.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:
                log.warning("leader election: %s", exc)
            if self.leading and self.clock() - self._renewed_at > self.duration:
                log.error("could not renew the leader Lease for %.0f s: stepping down", self.duration)
                self._leading.clear()
                LEADING.set(0)
                self.on_stopped_leading()
                return
            self._stop.wait(self.retry)

    def _step(self) -> None:
        assert self.coordination is not None
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        now = self.clock()
        if lease is None:
            self._write(None)
            self._became_leader()
            return
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        record = (holder, str(spec.renew_time or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder == self.identity:
            self._write(lease)
            self._renewed_at = now
            if not self.leading:
                self._became_leader()
            return
        if self.leading:  # someone else holds it now: never act on a Lease we lost
            log.error("the leader Lease is held by %s now: stepping down", holder)
            self._leading.clear()
            LEADING.set(0)
            self.on_stopped_leading()
            self._stop.set()
            return
        expired = not holder or now - self._observed_at > (spec.lease_duration_seconds or self.duration)
        if expired:
            self._write(lease)
            self._became_leader()

    def _became_leader(self) -> None:
        self._renewed_at = self.clock()
        log.info("became the leader (%s, Lease %s/%s)", self.identity, self.namespace, self.name)
        self._leading.set()
        LEADING.set(1)
        self.on_started_leading()

    def _write(self, lease: Any, release: bool = False) -> None:
        """Creates, takes over or renews the Lease (optimistic concurrency on resourceVersion)."""
        assert self.coordination is not None
        now = dt.datetime.now(dt.UTC)
        if release:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
            if (lease.spec.holder_identity or "") != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
            return
        if lease is None:
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=int(self.duration),
                    acquire_time=_micro(now),
                    renew_time=_micro(now),
                    lease_transitions=0,
                ),
            )
            self.coordination.create_namespaced_lease(self.namespace, body)
            return
        spec = lease.spec or client.V1LeaseSpec()
        if spec.holder_identity != self.identity:
            spec.acquire_time = _micro(now)
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = int(self.duration)
        spec.renew_time = _micro(now)
        lease.spec = spec
        self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)  # 409 if raced
