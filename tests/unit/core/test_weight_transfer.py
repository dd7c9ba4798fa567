"""Weight sync pieces without an engine: the learner's per-rank parts, and the shared buffer a
rollout engine writes them into (the worker side reads the same `Layout`; the whole route with a
vLLM engine runs in tests/integration/test_rollout_vllm.py and tests/integration/test_rollout_pool.py)."""

from __future__ import annotations

import pytest
import torch

from actors.engine import _layout, _WeightsBuffer
from core.tensors import assemble
from core.weight_transfer import ALIGN
from tests.helpers.weights import split


def state_dict() -> dict[str, torch.Tensor]:
    """Odd sizes (rows that do not split evenly, a vector, a scalar) and tied embeddings."""
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(7, 3, generator=gen)
    return {"embed.weight": embed, "layer.weight": torch.randn(5, 4, generator=gen),
            "layer.bias": torch.randn(5, generator=gen).to(torch.bfloat16),
            "scale": torch.tensor(2.0), "lm_head.weight": embed}


@pytest.mark.parametrize("world_size", [1, 3])
def test_parts_assemble_to_the_state_dict(world_size):
    state = state_dict()
    full = assemble(split(state, world_size))
    assert full.keys() == state.keys()
    assert all(torch.equal(full[name], tensor) and full[name].dtype == tensor.dtype
               for name, tensor in state.items())
    assert full["lm_head.weight"] is full["embed.weight"]


def test_layout_aligns_every_tensor_and_names_the_tied_head_without_its_bytes():
    layout = _layout(state_dict())
    assert layout.names == ["embed.weight", "layer.weight", "layer.bias", "scale"]  # tied head's bytes once
    assert layout.aliases == {"lm_head.weight": "embed.weight"}  # but loaded under its own name too
    views = layout.views(torch.zeros(layout.nbytes, dtype=torch.uint8))
    assert views["lm_head.weight"].data_ptr() == views["embed.weight"].data_ptr()
    assert all(offset % ALIGN == 0 for offset in layout.offsets)
    assert layout.nbytes % ALIGN == 0 and layout.nbytes >= layout.offsets[-1] + 4


@pytest.mark.parametrize("world_size", [1, 3])
def test_the_buffer_holds_the_full_tensors_from_parts_or_a_state_dict(tmp_path, world_size):
    state = state_dict()
    parts = split(state, world_size)
    layout = _layout(parts)
    assert layout == _layout(state)
    buffer = _WeightsBuffer(tmp_path, layout)
    buffer.write(parts)
    assert all(torch.equal(buffer.views[name], state[name]) for name in layout.names)
    buffer.write({name: tensor * 2 for name, tensor in state.items()})  # the same pages, a new version
    assert all(torch.equal(buffer.views[name], state[name] * 2) for name in layout.names)
    assert buffer.path.exists()
    buffer.unlink()  # the mapping outlives the file: the engine writes every later version into it
    assert list(tmp_path.iterdir()) == []
    buffer.write(parts)
    assert torch.equal(buffer.views["layer.weight"], state["layer.weight"])
