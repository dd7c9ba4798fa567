"""The replay queue holds references to groups in Ray's object store, not copies."""

from __future__ import annotations

import numpy as np

from tests.helpers.records import finished_group
from zoomrl.queue import ReplayQueue


def test_the_queue_holds_references_not_copies(ray_cluster):
    ray = ray_cluster
    queue = ReplayQueue(capacity_groups=4, max_staleness=1)
    payload = np.arange(1_000_000, dtype=np.float32)
    ref = ray.put(payload)
    assert queue.put(finished_group(0, 0, ref))
    [got] = queue.take(1, learner_version=0)
    assert isinstance(got.ref, ray.ObjectRef) and got.ref == ref
    np.testing.assert_array_equal(ray.get(got.ref), payload)
