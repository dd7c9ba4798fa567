"""Publishing weights to the rollout engines.

Object store (the default, `weight_sync.method: object_store`): every rank joins one gather of
the full state dict onto rank 0 (CPU, engine dtype, names exactly as
`Qwen2_5_VLForConditionalGeneration.state_dict()` gives them, which vLLM's `load_weights` and
`reload_weights` take); rank 0's method returns it packed as numpy byte arrays
(`zoomrl.tensors.pack`), so Ray stores it once in the object store, hands the caller a reference,
and every actor on the node reads it without a copy (a pickled torch tensor is copied in and
out). The driver gives rollout actors a `WeightsRef`; passing `ref` as a top-level argument of an
actor call makes Ray resolve it to the packed dict on their node:

    weights = learner.publish_weights(version)
    ray.get([actor.update_weights.remote(weights.version, weights.ref) for actor in actors])

An NCCL broadcast from rank 0 to the vLLM workers (`weight_sync.method: nccl`) is not built:
`LearnerGroup` refuses it at start-up (see learner/README.md for what it needs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict


@dataclass(frozen=True)
class WeightsRef:
    """One published policy version."""

    version: int
    """Policy version (updates done) these weights are."""
    ref: object
    """ray.ObjectRef of a zoomrl.tensors.PackedTensors: full HF state dict, CPU, engine dtype
    (`zoomrl.tensors.unpack` gives the dict[str, torch.Tensor])."""


def full_state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Gather the full state dict onto rank 0 (CPU, in dtype); other ranks get {}. Collective."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: tensor.to(dtype) for name, tensor in state.items()}
