"""The policy model: loading it, sharding it with FSDP2 (the one place), and its token log-probs."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from transformers import Qwen2_5_VLForConditionalGeneration

from learner.attention import PACKED_SDPA
from learner.batching import MicroBatch


def load_policy(model_path: str) -> Qwen2_5_VLForConditionalGeneration:
    """The Hugging Face model on CPU in fp32 (the master weights; bf16 compute comes from FSDP),
    with per-sequence attention over packed rows (`learner.attention`).

    It stays on CPU: `fully_shard` moves each unit to the mesh's device as it shards it, so a GPU
    never holds more than one unsharded unit during set-up.
    """
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation=PACKED_SDPA)
    return model.train()  # from_pretrained returns eval mode, which also disables checkpointing


def parallelize(model: Qwen2_5_VLForConditionalGeneration, mesh: DeviceMesh, *,
                activation_checkpointing: bool, bf16: bool) -> Qwen2_5_VLForConditionalGeneration:
    """Apply activation checkpointing, then FSDP2 to the whole model, in torchtitan's order.

    Units, innermost first: each vision block, the patch merger, each decoder layer, then the
    root (embeddings, final norm, tied lm_head). Gradients are SUMMED over ranks, not averaged:
    the loss is already divided by the batch's global token count (see `grpo_loss`). Sum-only
    reductions also work on gloo, which lacks the pre-multiplied sum FSDP uses to divide.
    """
    if activation_checkpointing:  # every vision block and decoder layer recomputes in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 else MixedPrecisionPolicy())
    units = [*model.model.visual.blocks, model.model.visual.merger, *model.model.language_model.layers]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def token_logprobs(model: Qwen2_5_VLForConditionalGeneration, batch: MicroBatch, temperature: float,
                   with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """Log-prob of every token given the ones before it, aligned with input_ids.

    Returns (logprobs, entropy), each (1, L) fp32: index t holds log p(input_ids[t] | < t) and the
    entropy of that next-token distribution (no gradient); index 0 (no prediction) holds 0.
    Logits are divided by the sampling temperature, so logprobs match the behaviour policy's.
    Across a packing boundary the value is meaningless but masked: the first token of a
    sequence is never sampled.
    """
    device = batch.input_ids.device
    logits = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
        use_cache=False,
    ).logits[:, :-1].float() / temperature  # (1, L-1, V)
    targets = batch.input_ids[:, 1:].to(device)  # (1, L-1)
    log_norm = logits.logsumexp(dim=-1)  # (1, L-1)
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = log_norm - (logits.softmax(dim=-1) * logits).sum(dim=-1)
        entropy = torch.nn.functional.pad(entropy, (1, 0))
    return torch.nn.functional.pad(logprobs, (1, 0)), entropy
