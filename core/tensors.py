"""Named tensors through Ray's object store without copies: as raw-byte numpy arrays.

Ray stores numpy arrays out of band and hands every reader on the node a zero-copy view of
shared memory, while a torch tensor is pickled: one copy into the object store and another out
of it in every reader. For the published weights that was 2.2 of 3.3 s per sync of a 258 MiB
model here (`python -m bench weight_sync`). bfloat16 has no numpy dtype, so each tensor travels as
its bytes plus its dtype and shape; a tensor listed under several names (tied embeddings) travels
once.

The published weights are one `RankShards` per learner rank (its FSDP2 rows of every tensor,
learner/weights.py makes them), named by a `WeightsRef`; `assemble` puts the full state dict
together. The learner writes these records and the rollout engines read them, so they live here.
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


@dataclass(frozen=True)
class WeightsRef:
    """One published policy version."""

    version: int
    """Policy version (updates done) these weights are."""
    ref: object
    """ray.ObjectRef of the list of every rank's ray.ObjectRef of its `RankShards` (CPU, engine
    dtype, HF names); `assemble` gives the full state dict."""


@dataclass(frozen=True)
class RankShards:
    """One learner rank's rows of every tensor of the policy, for the object store."""

    packed: PackedTensors
    """name -> this rank's rows (contiguous, engine dtype); a name this rank holds no rows of is
    absent. Shapes are the rows' own."""
    full_shapes: dict[str, tuple[int, ...]]
    """name -> the full tensor's shape, for every name of the state dict (on every rank)."""
    row_starts: dict[str, int]
    """name -> index along dim 0 of this rank's first row in the full tensor."""

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.packed.arrays.values())


def assemble(parts: list[RankShards]) -> dict[str, torch.Tensor]:
    """The full state dict from every rank's parts (new tensors; for tests and tools: the rollout
    engines write the parts straight into their load buffer instead)."""
    dtypes = {name: dtype for part in parts for name, dtype in part.packed.dtypes.items()}
    full = {name: torch.empty(shape, dtype=getattr(torch, dtypes[name]))
            for name, shape in parts[0].full_shapes.items() if name in dtypes}
    for part in parts:
        for name, array in part.packed.arrays.items():
            rows = unpack(PackedTensors({name: array}, part.packed.dtypes, part.packed.shapes, {}))[name]
            start = part.row_starts[name]
            target = full[name][start:start + rows.shape[0]] if rows.ndim else full[name]  # a scalar: whole
            target.copy_(rows)
    aliases = {alias: original for part in parts for alias, original in part.packed.aliases.items()}
    return full | {alias: full[original] for alias, original in aliases.items()}
