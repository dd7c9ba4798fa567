"""Packed tensors read from Ray's object store share its memory (no copy)."""

from __future__ import annotations

import torch

from core.tensors import pack, unpack


def test_object_store_reads_share_memory(ray_cluster):
    ray = ray_cluster
    state = {"w": torch.randn(256, 256)}
    ref = ray.put(pack(state))
    first, second = ray.get(ref), ray.get(ref)
    assert first.arrays["w"].ctypes.data == second.arrays["w"].ctypes.data  # one copy in shared memory
    assert not first.arrays["w"].flags.writeable
    assert torch.equal(unpack(first)["w"], state["w"])
