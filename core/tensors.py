"""Named tensors through Ray's object store without copies: as raw-byte numpy arrays.

Ray stores numpy arrays out of band and hands every reader on the node a zero-copy view of
shared memory, while a torch tensor is pickled: one copy into the object store and another out
of it in every reader. For the published weights that was 2.2 of 3.3 s per sync of a 258 MiB
model here (`python -m bench weight_sync`). bfloat16 has no numpy dtype, so each tensor travels as
its bytes plus its dtype and shape; a tensor listed under several names (tied embeddings) travels
once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class PackedTensors:
    """A dict of CPU tensors as numpy byte arrays (`pack`); `unpack` gives the tensors back."""

    arrays: dict[str, np.ndarray]
    """name -> (nbytes,) uint8: the tensor's contiguous bytes."""
    dtypes: dict[str, str]
    """name -> torch dtype name, e.g. 'bfloat16'."""
    shapes: dict[str, tuple[int, ...]]
    """name -> the tensor's shape."""
    aliases: dict[str, str]
    """name -> an earlier name holding the very same tensor (sent once)."""


def pack(state: dict[str, Tensor]) -> PackedTensors:
    """The tensors' bytes as numpy arrays; shares memory with contiguous CPU tensors (no copy)."""
    arrays, dtypes, shapes, aliases = {}, {}, {}, {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        arrays[name] = flat.view(torch.uint8).numpy()
        dtypes[name] = str(tensor.dtype).removeprefix("torch.")
        shapes[name] = tuple(tensor.shape)
    return PackedTensors(arrays, dtypes, shapes, aliases)


def unpack(packed: PackedTensors) -> dict[str, Tensor]:
    """The tensors again. Arrays read from the object store are read-only shared memory, and so
    are these tensors (views of them): read them, never write to them."""
    with warnings.catch_warnings():  # torch warns that the arrays are read-only; see the docstring
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        state = {name: torch.from_numpy(array).view(getattr(torch, packed.dtypes[name]))
                 .reshape(packed.shapes[name]) for name, array in packed.arrays.items()}
    return state | {name: state[original] for name, original in packed.aliases.items()}
