"""A state dict cut as FSDP2's dim-0 sharding leaves it on each learner rank."""

from __future__ import annotations

import math

import torch

from core.tensors import RankShards, pack


def split(state: dict[str, torch.Tensor], world_size: int) -> list[RankShards]:
    """What `learner.weights.rank_shards` returns on each rank of FSDP2's dim-0 sharding."""
    parts = []
    for rank in range(world_size):
        rows, starts = {}, {}
        for name, tensor in state.items():
            if tensor.ndim == 0:
                if rank == 0:
                    rows[name], starts[name] = tensor, 0
                continue
            chunk = math.ceil(tensor.shape[0] / world_size)
            start = min(rank * chunk, tensor.shape[0])
            if tensor[start:start + chunk].shape[0]:
                rows[name], starts[name] = tensor[start:start + chunk], start
        parts.append(RankShards(pack(rows), {n: tuple(t.shape) for n, t in state.items()}, starts))
    return parts
