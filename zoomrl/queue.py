"""The replay queue between rollout and learner: references to whole scored groups, in the driver.

The queue never holds the data, only ObjectRefs into Ray's object store (a group stays there
until the learner ranks fetch it), each stamped with the policy version that produced it. The
driver is its only producer and only consumer, so it is a plain object the driver owns: a group
goes in when the rollout pool hands it over, a step's groups come out once enough are queued.
Groups more than `max_staleness` versions behind the learner are dropped, counted and handed back
(the driver requests a replacement for each). With `max_staleness=0` only groups of the current
policy are trained on (synchronous).

The bound: the driver requests at most `learner.prompts_per_step * (max_staleness + 1)` groups
ahead of the learner, which `queue.capacity_groups` must cover (a config rule), so a put into a
full queue means that accounting broke, and raises.

Counts over the whole run, resumes included: produced = consumed + dropped + depth (tests check
it, `stats()` shows it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from core.types import FinishedGroup


@dataclass
class QueueStats:
    """The queue's counts over the whole run (a resumed run starts from its checkpoint's)."""

    produced: int
    consumed: int
    dropped: int
    depth: int
    max_staleness_seen: int


class QueueFull(RuntimeError):
    """A group arrived while the queue held `capacity_groups`: the request bound did not hold."""


class ReplayQueue:
    """Bounded, staleness-aware FIFO of group references."""

    def __init__(self, capacity_groups: int, max_staleness: int, carried: QueueStats | None = None):
        """carried: the counts a resumed run starts from (`resume_stats()` of the checkpoint)."""
        self.capacity = capacity_groups
        self.max_staleness = max_staleness
        self._items: deque[FinishedGroup] = deque()
        self._seen_ids: set[str] = set()
        carried = carried or QueueStats(0, 0, 0, 0, 0)
        self.produced, self.consumed, self.dropped = carried.produced, carried.consumed, carried.dropped
        self.max_staleness_seen = carried.max_staleness_seen

    def put(self, item: FinishedGroup) -> bool:
        """Add a group; False if this group id was seen before (re-issued work that came back twice)."""
        if item.group_id in self._seen_ids:
            return False
        if len(self._items) >= self.capacity:
            raise QueueFull(f"replay queue full ({self.capacity} groups, queue.capacity_groups) when group "
                            f"{item.group_id} arrived: more groups were requested than the staleness "
                            f"bound allows")
        self._seen_ids.add(item.group_id)
        self._items.append(item)
        self.produced += 1
        return True

    def drop_stale(self, learner_version: int) -> list[FinishedGroup]:
        """Remove, count and return the groups more than max_staleness versions behind the learner."""
        kept, stale = deque(), []
        for item in self._items:
            (stale if learner_version - item.policy_version > self.max_staleness else kept).append(item)
        self._items = kept
        self.dropped += len(stale)
        return stale

    def take(self, num_groups: int, learner_version: int) -> list[FinishedGroup] | None:
        """The oldest `num_groups` groups for the learner at `learner_version`, or None while fewer
        are queued. Call `drop_stale` first: this takes what is there."""
        if len(self._items) < num_groups:
            return None
        batch = [self._items.popleft() for _ in range(num_groups)]
        self.consumed += num_groups
        self.max_staleness_seen = max([self.max_staleness_seen]
                                      + [learner_version - item.policy_version for item in batch])
        return batch

    def stats(self) -> QueueStats:
        return QueueStats(self.produced, self.consumed, self.dropped, len(self._items),
                          self.max_staleness_seen)

    def resume_stats(self) -> QueueStats:
        """The counts a run resumed from a checkpoint taken now starts from: the queued groups are
        pending there (requested again after the resume), so they count when they come back."""
        return QueueStats(self.consumed + self.dropped, self.consumed, self.dropped, 0,
                          self.max_staleness_seen)
