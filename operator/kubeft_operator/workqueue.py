"""A work queue of FineTuneJob keys, as client-go's controllers have one.

Watches put the key of a job (its own changes, and those of its trainer Job, pods and Kueue
Workload) on the queue; a few worker threads take keys off it and reconcile. A key is in the
queue at most once, and a key being reconciled is never handed to a second worker: a change that
arrives meanwhile marks it dirty, and it is queued again once the worker is done. ``add_after``
schedules a key for later (a backoff, a TTL): that is the only clock a job has, so a job that waits
for nothing costs nothing.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

K = TypeVar("K", bound=Hashable)

DEPTH = Gauge("kubeft_operator_workqueue_depth", "FineTuneJob keys waiting for a worker now.")
DELAYED = Gauge("kubeft_operator_workqueue_delayed", "Keys scheduled for later (backoff, TTL, resync).")
ADDS = Counter("kubeft_operator_workqueue_adds_total", "Keys put on the work queue (deduplicated adds).")
WAIT_SECONDS = Histogram(
    "kubeft_operator_workqueue_wait_seconds",
    "Time a key waited in the queue before a worker took it.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


class WorkQueue(Generic[K]):
    """Deduplicating FIFO with delayed adds; ``get`` blocks, ``done`` must follow every ``get``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[K] = []
        self._queued: dict[K, float] = {}  # key → when it was queued
        self._processing: set[K] = set()
        self._dirty: set[K] = set()  # changed while being processed: queue again when done
        self._later: list[tuple[float, int, K]] = []  # (due, seq, key) heap
        self._due: dict[K, float] = {}  # the earliest due time of each delayed key
        self._seq = 0
        self._shutdown = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def add(self, key: K) -> None:
        """Queues ``key`` now (no-op when it is already queued)."""
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: K) -> None:
        if self._shutdown:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued[key] = self._clock()
        self._queue.append(key)
        ADDS.inc()
        DEPTH.set(len(self._queue))
        self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Queues ``key`` after ``delay`` seconds; an earlier schedule of the same key wins."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + delay
            if self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._later, (due, self._seq, key))
            DELAYED.set(len(self._due))
            self._cond.notify()

    def _promote_due_locked(self) -> float | None:
        """Moves due keys onto the queue; seconds until the next one is due (None: none waits)."""
        now = self._clock()
        while self._later:
            due, _, key = self._later[0]
            if self._due.get(key) != due:  # superseded by an earlier schedule
                heapq.heappop(self._later)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._later)
            del self._due[key]
            self._add_locked(key)
        DELAYED.set(len(self._due))
        return None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key (marked as being processed), or None on shutdown or after ``timeout``."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                wait = self._promote_due_locked()
                if self._shutdown:
                    return None
                if self._queue:
                    key = self._queue.pop(0)
                    WAIT_SECONDS.observe(self._clock() - self._queued.pop(key))
                    DEPTH.set(len(self._queue))
                    self._processing.add(key)
                    return key
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        """Ends processing of ``key``; queues it again if it changed meanwhile."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    def forget(self, key: K) -> None:
        """Drops any delayed schedule of ``key`` (the job is gone, or waits for nothing now)."""
        with self._cond:
            if self._due.pop(key, None) is not None:
                DELAYED.set(len(self._due))

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()


class Backoff(Generic[K]):
    """Per-key exponential delays (base, 2×base … max) for jobs that wait on something outside."""

    def __init__(self, base: float, maximum: float) -> None:
        self.base, self.maximum = base, maximum
        self._tries: dict[K, int] = {}
        self._lock = threading.Lock()

    def next(self, key: K) -> float:
        with self._lock:
            n = self._tries.get(key, 0)
            self._tries[key] = n + 1
        return float(min(self.maximum, self.base * (2**n)))

    def reset(self, key: K) -> None:
        with self._lock:
            self._tries.pop(key, None)
