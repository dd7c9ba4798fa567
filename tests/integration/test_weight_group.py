"""The weight-sync group across processes, over gloo (the CPU twin of the NCCL route): a sender and two
receiver processes, members that never come (errors name them), and the learner's real FSDP2
shards sent by two ranks to one receiver process."""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import time

import pytest
import torch

from core.weight_group import (
    GroupSpec,
    WeightGroup,
    WeightGroupTimeout,
    member_names,
    serve_store,
)
from learner.broadcast import policy_tensors, send_weights, wire_specs
from learner.ranks import free_port
from tests.helpers.group_members import fsdp_sender, receiver, scaled, small_policy

HOST = "127.0.0.1"
BUCKET_BYTES = 1024


def test_a_sender_and_two_receivers_end_with_the_senders_weights():
    store = serve_store(HOST, timeout_s=60)
    spec = GroupSpec(HOST, store.port, generation=1, members=member_names(["actor 0", "actor 1"], [1, 1]),
                     communicator="gloo", timeout_s=60)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    versions = [1, 2]
    specs = wire_specs(small_policy(0), torch.bfloat16)
    processes = [context.Process(target=receiver, args=(spec, rank, specs, BUCKET_BYTES, versions, results))
                 for rank in (1, 2)]
    for process in processes:
        process.start()
    group = WeightGroup(spec, 0, store)
    for version in versions:
        send_weights(small_policy(version), torch.bfloat16, version, BUCKET_BYTES, group, torch.device("cpu"))
    got = [results.get(timeout=60) for _ in range(len(processes) * len(versions))]
    for process in processes:
        process.join(timeout=60)
    group.close()
    assert sorted((rank, version) for rank, version, _, _ in got) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for _, version, blob, sizes in got:
        received = pickle.loads(blob)
        sent = small_policy(version)
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


def test_two_fsdp2_ranks_send_the_full_tied_policy(tiny_model_path):
    """The learner's side as a run has it: the tiny model sharded over two gloo ranks by
    learner.model.parallelize (every tensor a DTensor, its rows split between the ranks), both ranks
    joining each full_tensor(), rank 0 broadcasting. The receiver gets every tensor of the state
    dict, the tied lm_head included, equal to the same model unsharded and moved alike."""
    from transformers import Qwen2_5_VLForConditionalGeneration  # slow to import: here only

    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path, dtype=torch.float32)
    specs = wire_specs(policy_tensors(reference), torch.float32)
    assert "lm_head.weight" in {spec.name for spec in specs}  # tied to the embeddings, sent as well
    store = serve_store(HOST, timeout_s=120)
    spec = GroupSpec(HOST, store.port, generation=1, members=member_names(["actor 0"], [1]),
                     communicator="gloo", timeout_s=120)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    versions, bucket_bytes = [1, 2], 1 << 18
    learner_port = free_port(HOST)
    processes = [context.Process(target=fsdp_sender, args=(rank, 2, learner_port, spec, tiny_model_path,
                                                           versions, bucket_bytes)) for rank in (0, 1)]
    processes.append(context.Process(target=receiver, args=(spec, 1, specs, bucket_bytes, versions, results)))
    for process in processes:
        process.start()
    got = [results.get(timeout=120) for _ in versions]
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    for (_, version, blob, _), expected_version in zip(got, versions, strict=True):
        received = pickle.loads(blob)
        assert version == expected_version
        scaled(reference, version)
        expected = reference.state_dict()
        assert list(received) == [spec.name for spec in specs]
        for name, tensor in received.items():
            torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)
