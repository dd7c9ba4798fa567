import asyncio

import numpy as np
import pytest
from ray_metrics import samples, scrape_ray_metrics

from zoomrl.queue import QueuedGroup, ReplayQueue, ReplayQueueActor


def item(i: int, version: int) -> QueuedGroup:
    return QueuedGroup(ref=f"ref-{i}", policy_version=version, group_id=f"g{i}")


def test_whole_groups_in_order_and_counts_add_up():
    async def run():
        queue = ReplayQueue(capacity_groups=8, max_staleness=1)
        for i in range(5):
            assert await queue.put(item(i, version=0))
        batch = await queue.get_batch(3, learner_version=0)
        assert [b.group_id for b in batch] == ["g0", "g1", "g2"]
        s = queue.stats()
        assert (s.produced, s.consumed, s.dropped, s.depth) == (5, 3, 0, 2)
    asyncio.run(run())


def test_stale_groups_are_dropped_and_counted():
    async def run():
        queue = ReplayQueue(capacity_groups=8, max_staleness=1)
        for i, version in enumerate([0, 1, 2, 2]):
            await queue.put(item(i, version))
        batch = await queue.get_batch(2, learner_version=2)
        assert [b.policy_version for b in batch] == [1, 2]
        s = queue.stats()
        assert s.dropped == 1 and s.produced == s.consumed + s.dropped + s.depth
        assert s.max_staleness_seen == 1
        assert queue.take_dropped_ids() == ["g0"] and queue.take_dropped_ids() == []
        assert s.depth == 1
    asyncio.run(run())


def test_zero_staleness_is_on_policy_only():
    async def run():
        queue = ReplayQueue(capacity_groups=8, max_staleness=0)
        await queue.put(item(0, 0))
        await queue.put(item(1, 1))
        assert [b.group_id for b in await queue.get_batch(1, learner_version=1)] == ["g1"]
        assert queue.stats().dropped == 1
    asyncio.run(run())


def test_full_queue_makes_producers_wait():
    async def run():
        queue = ReplayQueue(capacity_groups=2, max_staleness=1)
        await queue.put(item(0, 0))
        await queue.put(item(1, 0))
        blocked = asyncio.create_task(queue.put(item(2, 0)))
        await asyncio.sleep(0.05)
        assert not blocked.done() and queue.stats().depth == 2
        await queue.get_batch(1, learner_version=0)
        assert await asyncio.wait_for(blocked, 1.0)
        assert queue.stats().depth == 2
    asyncio.run(run())


def test_duplicate_group_ids_are_refused():
    async def run():
        queue = ReplayQueue(capacity_groups=4, max_staleness=1)
        assert await queue.put(item(0, 0))
        assert not await queue.put(item(0, 0))
        assert queue.stats().produced == 1
    asyncio.run(run())


def test_get_batch_waits_then_times_out_with_what_is_there():
    async def run():
        queue = ReplayQueue(capacity_groups=4, max_staleness=1)
        await queue.put(item(0, 0))
        batch = await queue.get_batch(2, learner_version=0, timeout_s=0.1)
        assert len(batch) == 1
    asyncio.run(run())


@pytest.mark.slow
def test_actor_holds_references_not_copies(ray_cluster):
    ray = ray_cluster
    queue = ReplayQueueActor.remote(capacity_groups=4, max_staleness=1)
    payload = np.arange(1_000_000, dtype=np.float32)
    ref = ray.put(payload)
    assert ray.get(queue.put.remote(QueuedGroup(ref=ref, policy_version=0, group_id="g0")))
    [got] = ray.get(queue.get_batch.remote(1, learner_version=0))
    assert isinstance(got.ref, ray.ObjectRef) and got.ref == ref
    np.testing.assert_array_equal(ray.get(got.ref), payload)
    stats = ray.get(queue.stats.remote())
    assert (stats.produced, stats.consumed, stats.depth) == (1, 1, 0)
    assert samples(scrape_ray_metrics("zoomrl_queue_depth"), "zoomrl_queue_depth")
    ray.kill(queue)
