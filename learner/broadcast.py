"""The learner's side of the broadcast weight sync (`core.weight_group`): every rank gathers
each tensor of the policy with `full_tensor()` (FSDP2's all-gather, which every rank must join,
in the same order), and rank 0 writes it, cast to the engine dtype, into a bucket that it
broadcasts to the engines' workers once full. Peak extra memory on rank 0: one bucket and one
full tensor; on the other ranks one full tensor.

Rank 0 is the only one in the weight-sync group, so only rank 0 can meet a missing or failed
receiver. The ranks therefore agree after rank 0's arrival check and after every bucket (one
one-element broadcast over the learner's own group): a failure on rank 0 stops every rank at the
same point with an error, instead of leaving the others in an all-gather rank 0 never joins.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from core.weight_group import TensorSpec, WeightGroup, plan_buckets


def policy_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's state dict (HF names, FSDP2 shards as DTensors, nothing gathered), every name,
    a tied lm_head included although it shares the embeddings' tensor: vLLM's CPU build gives the
    lm_head its own packed copy of the weight, and a layerwise reload repacks only the layers it
    loads weights into (see `core.weight_transfer.Layout.aliases`). Sending the shared tensor
    twice costs one embedding matrix per sync, for tied models only (Qwen2.5-VL-7B is untied)."""
    return list(get_model_state_dict(model, options=StateDictOptions(full_state_dict=False)).items())


def wire_specs(tensors: list[tuple[str, torch.Tensor]], dtype: torch.dtype) -> list[TensorSpec]:
    """What the receivers are told to expect: every tensor's full shape, in `dtype`."""
    dtype_name = str(dtype).removeprefix("torch.")
    return [TensorSpec(name, dtype_name, tuple(tensor.shape)) for name, tensor in tensors]


def send_weights(tensors: list[tuple[str, torch.Tensor]], dtype: torch.dtype, version: int,
                 bucket_bytes: int, group: WeightGroup | None, device: torch.device) -> None:
    """Send policy `version` (`tensors` as `policy_tensors` gives them) to the weight-sync group.
    Called on every learner rank together; `group` on rank 0 only (None elsewhere). The
    receivers run `core.weight_group.receive_buckets` with `wire_specs(tensors, dtype)`.
    device: the learner process group's (its agreement broadcasts); buckets live on group.device."""
    error: BaseException | None = None
    if group is not None:
        try:
            group.begin(version)
        except Exception as failure:  # a missing receiver: no rank gathers anything
            error = failure
    _agree(error, device)
    buckets = plan_buckets(wire_specs(tensors, dtype), bucket_bytes)
    packed = None
    if group is not None:
        packed = torch.empty(max(bucket.nbytes for bucket in buckets), dtype=torch.uint8, device=group.device)
    remaining = iter(tensors)
    for bucket in buckets:
        views = bucket.views(packed) if packed is not None else None
        for index in range(len(bucket.specs)):
            _, tensor = next(remaining)
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # collective
            if views is not None:
                views[index][1].copy_(full.detach())  # cast to the wire dtype on the way
            del full
        if group is not None:
            try:
                group.broadcast(packed[:bucket.nbytes])
            except Exception as failure:
                error = failure
        _agree(error, device)


def _agree(error: BaseException | None, device: torch.device) -> None:
    """Rank 0's outcome to every learner rank; all raise if it failed (rank 0 with its error)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        failed = torch.tensor([error is not None], dtype=torch.int32, device=device)
        dist.broadcast(failed, src=0)
        if failed.item() and error is None:
            raise RuntimeError("weight sync failed on learner rank 0 (its error says why)")
    if error is not None:
        raise error
