"""Packed tensors: exact round trip through Ray's object store, read without copies."""

from __future__ import annotations

import pytest
import torch

from core.tensors import pack, unpack


def test_round_trip_keeps_dtypes_shapes_values_and_aliases():
    embed = torch.randn(8, 4)
    state = {"embed": embed, "lm_head": embed, "bf16": torch.randn(3, 5).to(torch.bfloat16),
             "scalar": torch.tensor(2.5), "ints": torch.arange(6, dtype=torch.int64).reshape(2, 3),
             "strided": torch.randn(4, 6)[:, ::2]}
    packed = pack(state)
    assert packed.aliases == {"lm_head": "embed"}  # a tied tensor travels once
    back = unpack(packed)
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor), name
    assert back["lm_head"] is back["embed"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_empty_and_typed(dtype):
    assert unpack(pack({})) == {}
    assert torch.equal(unpack(pack({"x": torch.ones(3, dtype=dtype)}))["x"], torch.ones(3, dtype=dtype))
