"""The replay queue between rollout actors and the learner: ObjectRefs of whole scored groups.

The queue never holds the data itself, only references into Ray's object store, each stamped
with the policy version that produced the group. It is bounded: a producer's `put` waits while
the queue is full (back-pressure, so rollout actors cannot run arbitrarily far ahead). The learner
takes whole groups; groups more than `max_staleness` versions behind the learner are dropped and
counted. With `max_staleness=0` only groups of the current policy are trained on (synchronous).

Invariant, checked by tests and exposed in `stats()`: produced = consumed + dropped + depth.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import ray

from core.metrics import RayMetrics

QUEUE_METRICS = ["queue_depth"]  # reported through ray.util.metrics on every put and take


@dataclass
class QueuedGroup:
    """A reference to one scored group in the object store, with what the queue needs to know."""

    ref: Any
    """ray.ObjectRef of a core.types.Group (kept inside this record, so Ray never resolves it)."""
    policy_version: int
    """Oldest policy version that produced any of the group's tokens."""
    group_id: str
    """Unique id; re-issued work keeps its id, so a duplicate is refused, not counted twice."""


@dataclass
class QueueStats:
    produced: int
    consumed: int
    dropped: int
    depth: int
    max_staleness_seen: int


class ReplayQueue:
    """Bounded, staleness-aware FIFO of group references. Plain class; `ReplayQueueActor` wraps it."""

    def __init__(self, capacity_groups: int, max_staleness: int):
        self.capacity = capacity_groups
        self.max_staleness = max_staleness
        self._items: deque[QueuedGroup] = deque()
        self._seen_ids: set[str] = set()
        self._space = asyncio.Condition()
        self._ready = asyncio.Condition()
        self.produced = self.consumed = self.dropped = 0
        self._dropped_ids: list[str] = []
        self.max_staleness_seen = 0
        # Inside Ray (the actor), the depth also goes to Ray's metrics (dashboard, Prometheus).
        self._metrics = RayMetrics(QUEUE_METRICS) if ray.is_initialized() else None

    def _report_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.record({"queue_depth": float(len(self._items))})

    async def put(self, item: QueuedGroup) -> bool:
        """Add a group, waiting while the queue is full. False if this group id was seen before."""
        if item.group_id in self._seen_ids:
            return False
        async with self._space:
            await self._space.wait_for(lambda: len(self._items) < self.capacity)
            self._seen_ids.add(item.group_id)
            self._items.append(item)
            self.produced += 1
            self._report_depth()
        async with self._ready:
            self._ready.notify_all()
        return True

    def _drop_stale(self, learner_version: int) -> None:
        kept = deque()
        for item in self._items:
            if learner_version - item.policy_version > self.max_staleness:
                self.dropped += 1
                self._dropped_ids.append(item.group_id)
            else:
                kept.append(item)
        self._items = kept

    async def get_batch(self, num_groups: int, learner_version: int,
                        timeout_s: float | None = None) -> list[QueuedGroup]:
        """Take `num_groups` whole groups fresh enough for the learner at `learner_version`.

        Waits until enough fresh groups are queued (or `timeout_s` passes: then returns what is
        there, possibly fewer). Stale groups found on the way are dropped and counted.
        """
        def fresh_enough() -> bool:
            self._drop_stale(learner_version)
            return len(self._items) >= num_groups

        async def enough() -> None:
            async with self._ready:
                await self._ready.wait_for(fresh_enough)
        try:
            await asyncio.wait_for(enough(), timeout_s)
        except TimeoutError:
            pass
        self._drop_stale(learner_version)
        batch = [self._items.popleft() for _ in range(min(num_groups, len(self._items)))]
        for item in batch:
            self.max_staleness_seen = max(self.max_staleness_seen, learner_version - item.policy_version)
        self.consumed += len(batch)
        self._report_depth()
        async with self._space:
            self._space.notify_all()
        return batch

    def take_dropped_ids(self) -> list[str]:
        """Ids of the groups dropped since the last call (the driver requests replacements)."""
        ids, self._dropped_ids = self._dropped_ids, []
        return ids

    def stats(self) -> QueueStats:
        return QueueStats(self.produced, self.consumed, self.dropped, len(self._items),
                          self.max_staleness_seen)


# The queue as an async Ray actor: many producers may wait in `put` while the learner takes.
ReplayQueueActor = ray.remote(num_cpus=0)(ReplayQueue)
