"""The weight-sync group without vLLM: the bucket plan, a sender and two receiver processes over
gloo (the CPU twin of the NCCL route), and members that never come (errors name them)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time

import pytest
import torch
from group_members import receiver

from learner.broadcast import send_weights, wire_specs
from zoomrl.weight_group import (
    ALIGN,
    GroupSpec,
    TensorSpec,
    WeightGroup,
    WeightGroupTimeout,
    member_names,
    plan_buckets,
    rank_offsets,
    serve_store,
)

HOST = "127.0.0.1"
BUCKET_BYTES = 1024


def policy(version: int) -> list[tuple[str, torch.Tensor]]:
    """Odd sizes (a bias, a scalar), one tensor larger than a bucket, float32 as the learner keeps it."""
    gen = torch.Generator().manual_seed(version)
    shapes = {"embed.weight": (80, 8), "layers.0.weight": (16, 16), "layers.0.bias": (7,), "scale": (),
              "layers.1.weight": (16, 16), "head.weight": (3, 8)}
    return [(name, torch.randn(shape, generator=gen)) for name, shape in shapes.items()]


def test_rank_offsets_follow_each_actors_workers():
    assert rank_offsets([1, 2, 1]) == [1, 2, 4]
    assert member_names(["actor 0", "actor 1"], [1, 2]) == (
        "learner rank 0", "actor 0 worker 0", "actor 1 worker 0", "actor 1 worker 1")


def test_buckets_keep_order_alignment_and_the_size_bound():
    specs = wire_specs(policy(0), torch.bfloat16)
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


def test_a_sender_and_two_receivers_end_with_the_senders_weights():
    store = serve_store(HOST, timeout_s=60)
    spec = GroupSpec(HOST, store.port, generation=1, members=member_names(["actor 0", "actor 1"], [1, 1]),
                     communicator="gloo", timeout_s=60)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    versions = [1, 2]
    specs = wire_specs(policy(0), torch.bfloat16)
    processes = [context.Process(target=receiver, args=(spec, rank, specs, BUCKET_BYTES, versions, results))
                 for rank in (1, 2)]
    for process in processes:
        process.start()
    group = WeightGroup(spec, 0, store)
    for version in versions:
        send_weights(policy(version), torch.bfloat16, version, BUCKET_BYTES, group, torch.device("cpu"))
    got = [results.get(timeout=60) for _ in range(len(processes) * len(versions))]
    for process in processes:
        process.join(timeout=60)
    group.close()
    assert sorted((rank, version) for rank, version, _, _ in got) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for _, version, received, sizes in got:
        sent = policy(version)
        assert list(received) == [name for name, _ in sent]
        assert all(torch.equal(received[name], tensor.to(torch.bfloat16)) for name, tensor in sent)
        assert len(sizes) == 3 and max(sizes[1:]) <= BUCKET_BYTES  # the plan's; the first: the embedding


def test_a_member_that_never_joins_is_named():
    store = serve_store(HOST, timeout_s=1)
    spec = GroupSpec(HOST, store.port, generation=7, members=member_names(["rollout actor 3"], [1]),
                     communicator="gloo", timeout_s=1)
    start = time.monotonic()
    with pytest.raises(WeightGroupTimeout, match=r"generation 7 \(joined\): rollout actor 3 worker 0 did no"):
        WeightGroup(spec, 0, store)
    assert time.monotonic() - start < 30
    with pytest.raises(WeightGroupTimeout, match="learner rank 0 did not arrive"):  # a receiver alone
        WeightGroup(dataclasses.replace(spec, generation=8), 1)
