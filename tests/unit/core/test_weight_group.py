"""The weight-sync group's plan: member ranks and names, and the buckets a policy is sent in; the
group across processes is in tests/integration/test_weight_group.py."""

from __future__ import annotations

import torch

from core.weight_group import (
    ALIGN,
    TensorSpec,
    member_names,
    plan_buckets,
    rank_offsets,
)
from learner.broadcast import wire_specs
from tests.helpers.group_members import small_policy

HOST = "127.0.0.1"
BUCKET_BYTES = 1024


def test_rank_offsets_follow_each_actors_workers():
    assert rank_offsets([1, 2, 1]) == [1, 2, 4]
    assert member_names(["actor 0", "actor 1"], [1, 2]) == (
        "learner rank 0", "actor 0 worker 0", "actor 1 worker 0", "actor 1 worker 1")


def test_buckets_keep_order_alignment_and_the_size_bound():
    specs = wire_specs(small_policy(0), torch.bfloat16)
    buckets = plan_buckets(specs, BUCKET_BYTES)
    assert [spec for bucket in buckets for spec in bucket.specs] == specs
    for bucket in buckets:
        assert all(offset % ALIGN == 0 for offset in bucket.offsets)
        assert bucket.nbytes <= BUCKET_BYTES or len(bucket.specs) == 1  # a larger tensor goes alone
        ends = [offset + spec.nbytes for spec, offset in zip(bucket.specs, bucket.offsets, strict=True)]
        assert ends[-1] == bucket.nbytes
        assert all(end <= start for end, start in zip(ends[:-1], bucket.offsets[1:], strict=True))
    assert buckets[0].specs == (TensorSpec("embed.weight", "bfloat16", (80, 8)),)  # 1280 B: alone
    assert len(buckets) == 3
