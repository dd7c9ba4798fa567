"""The replay queue: a plain object of the driver holding references to whole scored groups."""

import pytest

from tests.helpers.records import finished_group
from zoomrl.queue import QueueFull, QueueStats, ReplayQueue


def balanced(s: QueueStats) -> bool:
    return s.produced == s.consumed + s.dropped + s.depth


def test_whole_groups_in_order_and_counts_add_up():
    queue = ReplayQueue(capacity_groups=8, max_staleness=1)
    for i in range(5):
        assert queue.put(finished_group(i, version=0))
    batch = queue.take(3, learner_version=0)
    assert [b.group_id for b in batch] == ["g0", "g1", "g2"]
    s = queue.stats()
    assert (s.produced, s.consumed, s.dropped, s.depth) == (5, 3, 0, 2) and balanced(s)


def test_take_waits_for_a_whole_step():
    queue = ReplayQueue(capacity_groups=4, max_staleness=1)
    queue.put(finished_group(0, 0))
    assert queue.take(2, learner_version=0) is None and queue.stats().depth == 1
    queue.put(finished_group(1, 0))
    assert [b.group_id for b in queue.take(2, learner_version=0)] == ["g0", "g1"]


def test_stale_groups_are_dropped_counted_and_handed_back():
    queue = ReplayQueue(capacity_groups=8, max_staleness=1)
    for i, version in enumerate([0, 1, 2, 2]):
        queue.put(finished_group(i, version))
    assert [d.group_id for d in queue.drop_stale(learner_version=2)] == ["g0"]
    assert queue.drop_stale(learner_version=2) == []
    batch = queue.take(2, learner_version=2)
    assert [b.policy_version for b in batch] == [1, 2]
    s = queue.stats()
    assert s.dropped == 1 and s.max_staleness_seen == 1 and s.depth == 1 and balanced(s)


def test_zero_staleness_is_on_policy_only():
    queue = ReplayQueue(capacity_groups=8, max_staleness=0)
    queue.put(finished_group(0, 0))
    queue.put(finished_group(1, 1))
    queue.drop_stale(learner_version=1)
    assert [b.group_id for b in queue.take(1, learner_version=1)] == ["g1"]
    assert queue.stats().dropped == 1


def test_a_full_queue_is_an_error_naming_the_bound():
    queue = ReplayQueue(capacity_groups=2, max_staleness=1)
    queue.put(finished_group(0, 0))
    queue.put(finished_group(1, 0))
    with pytest.raises(QueueFull, match="2 groups, queue.capacity_groups.*g2"):
        queue.put(finished_group(2, 0))
    assert queue.stats().produced == 2


def test_duplicate_group_ids_are_refused():
    queue = ReplayQueue(capacity_groups=4, max_staleness=1)
    assert queue.put(finished_group(0, 0))
    assert not queue.put(finished_group(0, 0))
    assert queue.stats().produced == 1


def test_a_resumed_queue_counts_on_from_the_checkpoint():
    queue = ReplayQueue(capacity_groups=8, max_staleness=1)
    for i in range(4):
        queue.put(finished_group(i, 0))
    queue.take(2, learner_version=0)
    queue.put(finished_group(4, 0))
    queue.drop_stale(learner_version=2)  # the three left are too stale
    queue.put(finished_group(5, 2))
    carried = queue.resume_stats()  # g5 is queued: pending at the checkpoint, not counted
    assert carried == QueueStats(produced=5, consumed=2, dropped=3, depth=0, max_staleness_seen=0)
    resumed = ReplayQueue(capacity_groups=8, max_staleness=1, carried=carried)
    resumed.put(finished_group(5, 2))  # requested again after the resume
    resumed.take(1, learner_version=2)
    s = resumed.stats()
    assert (s.produced, s.consumed, s.dropped, s.depth) == (6, 3, 3, 0) and balanced(s)
