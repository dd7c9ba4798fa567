"""Publishing weights to the rollout engines.

Object store (the default, `weight_sync.method: object_store`): NO gather. Each rank converts its
own FSDP2 shard of every tensor (rows of dim 0) to the engine dtype on the CPU and returns it as
`RankShards` (numpy byte arrays, `core.tensors.pack`), so Ray stores each rank's part once in
the object store, in parallel, and every actor on a node reads them without a copy; the actor
writes each part straight to its place in the full tensor, in the buffer its engine loads from
(actors/engine.py). A full gather onto rank 0 would send half the model through gloo's TCP
sockets on two CPU ranks (most of the publish time here), and costs one more copy everywhere.
`LearnerGroup.publish_weights` returns a `WeightsRef` whose `ref` is an ObjectRef of the list of
the ranks' ObjectRefs; passing it as a top-level argument of an actor call makes Ray resolve it
to that list (the parts themselves stay unfetched until the actor awaits them):

    weights = learner.publish_weights(version)
    ray.get([actor.update_weights.remote(weights.version, weights.ref) for actor in actors])

A tensor that is not sharded on dim 0 (a plain tensor, another placement) is gathered with
`full_tensor()`, a collective every rank joins in the same order, and rank 0 sends it whole.

The broadcast from rank 0 to the vLLM workers (`weight_sync.method: nccl | gloo`) is the other
route: learner/broadcast.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor, Shard

from core.tensors import RankShards, pack


def rank_shards(model: nn.Module, dtype: torch.dtype, rank: int, world_size: int) -> RankShards:
    """This rank's part of the full state dict (HF names), in `dtype`, on the CPU. Collective only
    for tensors not sharded on dim 0 (`full_tensor()`, same order on every rank)."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=False))
    rows: dict[str, torch.Tensor] = {}
    full_shapes, row_starts = {}, {}
    for name, tensor in state.items():
        full_shapes[name] = tuple(tensor.shape)
        start = _dim0_shard_start(tensor, rank, world_size)
        if start is None:  # not a plain dim-0 shard: gathered whole, sent by rank 0
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            if rank == 0:
                rows[name], row_starts[name] = full.detach().to("cpu", dtype), 0
        elif tensor.to_local().shape[0] > 0:
            rows[name], row_starts[name] = tensor.to_local().detach().to("cpu", dtype), start
    return RankShards(pack(rows), full_shapes, row_starts)


def _dim0_shard_start(tensor: torch.Tensor, rank: int, world_size: int) -> int | None:
    """First row of this rank's shard when `tensor` is a DTensor sharded on dim 0 over a 1-D mesh
    as FSDP2 shards (torch.chunk: ceil(rows / world) rows per rank, the last ones shorter or
    empty); None for anything else."""
    if not isinstance(tensor, DTensor) or tensor.device_mesh.ndim != 1 or tensor.placements != (Shard(0),):
        return None
    rows = tensor.shape[0]
    chunk = math.ceil(rows / world_size)
    start = min(rank * chunk, rows)
    if tensor.to_local().shape[0] != min(chunk, rows - start):
        return None  # another split than torch.chunk's: gather it rather than misplace rows
    return start
