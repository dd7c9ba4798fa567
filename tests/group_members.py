"""Processes that join a weight-sync group as rollout workers would, for tests: they import only
`zoomrl.weight_group` (torch), so a spawned one starts in about the time torch takes to import."""

from __future__ import annotations

from zoomrl.weight_group import GroupSpec, TensorSpec, WeightGroup, receive_buckets


def receiver(spec: GroupSpec, rank: int, specs: list[TensorSpec], bucket_bytes: int, versions: list[int],
             results) -> None:
    """Receive every version as `rank`; put (rank, version, state dict, bytes of each bucket) on
    the `results` queue."""
    group = WeightGroup(spec, rank)
    for version in versions:
        received, sizes = {}, []

        def load(pairs, received=received, sizes=sizes):
            sizes.append(sum(tensor.nbytes for _, tensor in pairs))
            received.update((name, tensor.clone()) for name, tensor in pairs)

        receive_buckets(group, version, specs, bucket_bytes, load)
        results.put((rank, version, received, sizes))
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
