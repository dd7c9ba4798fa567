"""The policy model: loading it, sharding it with FSDP2 (the one place), and its token log-probs."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.utils.checkpoint import checkpoint
from transformers import Qwen2_5_VLForConditionalGeneration

from learner.attention import PACKED_ATTENTION, packed_kwargs
from learner.batching import MicroBatch

LOGPROB_CHUNK_TOKENS = 512
"""Positions per chunk of the vocabulary projection in `token_logprobs`. With Qwen's 152,064-token
vocabulary one fp32 (512, V) tensor is 297 MiB, and a chunk's backward holds about five at once
(1.6 GiB measured, bench/README.md); the matmul of 512 rows still runs at full speed on a GPU."""


def load_policy(model_path: str) -> Qwen2_5_VLForConditionalGeneration:
    """The Hugging Face model on CPU in fp32 (the master weights; bf16 compute comes from FSDP),
    with packed-row attention in the decoder and the vision tower (`learner.attention`).

    It stays on CPU: `fully_shard` moves each unit to the mesh's device as it shards it, so a GPU
    never holds more than one unsharded unit during set-up.
    """
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation="sdpa")
    model.model.visual.patch_embed = MatmulPatchEmbed(model.model.visual.patch_embed)
    return with_packed_attention(model).train()  # from_pretrained returns eval mode (no checkpointing)


class MatmulPatchEmbed(nn.Module):
    """The vision tower's patch embedding as one matmul, with the same weight (so the same state dict).

    transformers applies a Conv3d whose kernel equals its stride and its input (one patch of
    channels x frames x 14 x 14), which is a matmul of each flattened patch with the flattened
    kernel; CPU's convolution path took 28 ms forward and 18 ms backward for the 4,096 patches of
    four 448 px images, 15% of a tiny-model update (the matmul: under 2 ms).
    """

    def __init__(self, embed: nn.Module) -> None:
        super().__init__()
        self.proj = embed.proj  # the Conv3d: its weight (E, C, T, P, P) is the parameter

    def forward(self, hidden_states: Tensor) -> Tensor:
        weight = self.proj.weight
        return nn.functional.linear(hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype),
                                    weight.flatten(1))


def with_packed_attention(model: Qwen2_5_VLForConditionalGeneration) -> Qwen2_5_VLForConditionalGeneration:
    """model, its decoder and vision tower switched to `learner.attention` (the config setter
    reaches the sub-configs; the name cannot go through from_pretrained, see `PACKED_ATTENTION`)."""
    model.config._attn_implementation = PACKED_ATTENTION
    return model


def parallelize(model: Qwen2_5_VLForConditionalGeneration, mesh: DeviceMesh, *,
                activation_checkpointing: bool, bf16: bool, offload: bool = False
                ) -> Qwen2_5_VLForConditionalGeneration:
    """Apply activation checkpointing, then FSDP2 to the whole model, in torchtitan's order.

    Units, innermost first: each vision block, the patch merger, each decoder layer, then the
    root (embeddings, final norm, lm_head). Gradients are SUMMED over ranks, not averaged:
    the loss is already divided by the batch's global token count (see `grpo_loss`). Sum-only
    reductions also work on gloo, which lacks the pre-multiplied sum FSDP uses to divide.

    The root keeps its parameters gathered from forward to the end of backward
    (`reshard_after_forward=False`, FSDP's own default for a root, stated here because
    `token_logprobs` relies on it: it applies lm_head in chunks after the forward returned).
    With `offload` (GPU only), parameter shards, gradients and AdamW state live in pinned CPU
    memory (`CPUOffloadPolicy`): each unit is copied to the GPU for its all-gather, gradients come
    back after the reduce-scatter, and the optimizer steps on CPU.
    """
    if offload and mesh.device_type == "cpu":
        raise ValueError("offload moves parameters and optimizer state off the GPU; this mesh is on CPU")
    if activation_checkpointing:  # every vision block and decoder layer recomputes in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 else MixedPrecisionPolicy())
    offload_policy = CPUOffloadPolicy() if offload else OffloadPolicy()
    units = [*model.model.visual.blocks, model.model.visual.merger, *model.model.language_model.layers]
    options = {"mesh": mesh, "mp_policy": policy, "offload_policy": offload_policy}
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options, reshard_after_forward=False)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def token_logprobs(model: Qwen2_5_VLForConditionalGeneration, batch: MicroBatch, temperature: float,
                   with_entropy: bool, chunk_tokens: int = LOGPROB_CHUNK_TOKENS
                   ) -> tuple[Tensor, Tensor | None]:
    """Log-prob of every token given the ones before it, aligned with input_ids.

    Returns (logprobs, entropy), each (1, L) fp32: index t holds log p(input_ids[t] | < t) and the
    entropy of that next-token distribution (no gradient); index 0 (no prediction) holds 0.
    Logits are divided by the sampling temperature, so logprobs match the behaviour policy's.
    Across a packing boundary the value is meaningless but masked: the first token of a
    sequence is never sampled.

    Memory: the model returns no logits; lm_head runs on `chunk_tokens` positions at a time
    (`_chunk_logprobs`), each chunk checkpointed, so (chunk, V) fp32 tensors of one chunk only
    exist at a time, in forward and again in its backward, never (L, V): at 32k tokens and
    Qwen's 152k vocabulary one (L, V) fp32 tensor would be 18.6 GiB.
    """
    device = batch.input_ids.device
    hidden = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
        use_cache=False,
        # only the last layer's, which transformers replaces by the final norm's output (lm_head's
        # input); all of them would hand FSDP the embedding output too, a view it warns about
        output_hidden_states=[model.config.text_config.num_hidden_layers - 1],
        logits_to_keep=torch.empty(0, dtype=torch.long, device=device),  # no logits at all
        **packed_kwargs(batch.position_ids),
    ).hidden_states[-1][0, :-1]  # (L-1, H)
    targets = batch.input_ids[0, 1:].to(device)  # (L-1,)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        args = (model.lm_head, hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens],
                temperature, with_entropy)
        # checkpointed: backward recomputes the chunk's logits instead of keeping them all (no
        # randomness in it, so no RNG state to save per chunk)
        parts.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False, preserve_rng_state=False)
                     if recompute else _chunk_logprobs(*args))
    logprobs = torch.cat([p[0] for p in parts])[None]  # (1, L-1)
    entropy = torch.cat([p[1] for p in parts])[None] if with_entropy else None
    pad = torch.nn.functional.pad
    return pad(logprobs, (1, 0)), None if entropy is None else pad(entropy, (1, 0))


def _chunk_logprobs(lm_head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float,
                    with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """hidden (C, H), targets (C,) -> log p(target) (C,) and, with_entropy, the entropy (C,)
    (no gradient), of softmax(lm_head(hidden) / temperature) in fp32."""
    logits = lm_head(hidden).float()  # (C, V); no copy when already fp32
    if temperature != 1:
        logits = logits / temperature
    log_norm = logits.logsumexp(dim=-1)  # (C,)
    logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - log_norm
    if not with_entropy:
        return logprobs, None
    # saves nothing for backward, so the chunk's recomputation in backward, which stops once it
    # has every saved tensor back (torch's non-reentrant checkpoint), never reaches it
    with torch.no_grad():
        entropy = log_norm - (logits.softmax(dim=-1) * logits).sum(dim=-1)
    return logprobs, entropy
