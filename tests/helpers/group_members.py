"""Processes that join a weight-sync group as rollout workers would, for tests: they import only
`core.weight_group` (torch), so a spawned one starts in about the time torch takes to import."""

from __future__ import annotations

import pickle

import torch

from core.weight_group import GroupSpec, TensorSpec, WeightGroup, receive_buckets


def receiver(spec: GroupSpec, rank: int, specs: list[TensorSpec], bucket_bytes: int, versions: list[int],
             results) -> None:
    """Receive every version as `rank`; put (rank, version, state dict, bytes of each bucket) on
    the `results` queue, the state dict pickled to bytes: a tensor put as it is travels as a file
    descriptor this process must still serve when the test reads it, and it may have ended."""
    group = WeightGroup(spec, rank)
    for version in versions:
        received, sizes = {}, []

        def load(pairs, received=received, sizes=sizes):
            sizes.append(sum(tensor.nbytes for _, tensor in pairs))
            received.update((name, tensor.clone()) for name, tensor in pairs)

        receive_buckets(group, version, specs, bucket_bytes, load)
        results.put((rank, version, pickle.dumps(received), sizes))
    group.close()


def moved(model, version: int) -> None:
    """Version `version` of a test policy: every floating-point parameter moved in place by
    0.02 x N(0, 1) noise seeded by the version (applied in order, as optimizer steps are)."""
    import torch

    generator = torch.Generator().manual_seed(version)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))


def policy_sender(spec: GroupSpec, model_path: str, versions: list[int], bucket_bytes: int) -> None:
    """Learner rank 0 alone: the tiny model moved to each version, sent in float32."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from learner.broadcast import policy_tensors, send_weights

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)
    group = WeightGroup(spec, 0)
    for version in versions:
        moved(model, version)
        send_weights(policy_tensors(model), torch.float32, version, bucket_bytes, group, torch.device("cpu"))
    group.close()


def scaled(model, version: int) -> None:
    """Version `version` of an FSDP2-sharded test policy: every parameter multiplied in place by
    1 + version / 10 (pointwise, so each rank scales its own shard; `moved` would need the full
    tensors)."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1 + version / 10)


def fsdp_sender(rank: int, world_size: int, learner_port: int, spec: GroupSpec, model_path: str,
                versions: list[int], bucket_bytes: int) -> None:
    """One of `world_size` learner ranks holding the tiny model through zoomrl's FSDP2 set-up
    (learner.model.parallelize, gloo); rank 0 is also the weight-sync group's sender. Sends
    each version `scaled`, in float32."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from learner.broadcast import policy_tensors, send_weights
    from learner.model import load_policy, parallelize
    from learner.worker import keep_gloo_on_loopback

    keep_gloo_on_loopback("127.0.0.1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{learner_port}", rank=rank,
                            world_size=world_size)
    model = parallelize(load_policy(model_path), init_device_mesh("cpu", (world_size,)),
                        activation_checkpointing=False, bf16=False)
    group = WeightGroup(spec, 0) if rank == 0 else None
    for version in versions:
        scaled(model, version)
        send_weights(policy_tensors(model), torch.float32, version, bucket_bytes, group, torch.device("cpu"))
    if group is not None:
        group.close()
    dist.destroy_process_group()


def small_policy(version: int) -> list[tuple[str, torch.Tensor]]:
    """A stand-in policy of version `version`: odd sizes (a bias, a scalar), one tensor larger than a
    bucket, float32 as the learner keeps it."""
    gen = torch.Generator().manual_seed(version)
    shapes = {"embed.weight": (80, 8), "layers.0.weight": (16, 16), "layers.0.bias": (7,), "scale": (),
              "layers.1.weight": (16, 16), "head.weight": (3, 8)}
    return [(name, torch.randn(shape, generator=gen)) for name, shape in shapes.items()]
