"""GRPO as two pure functions: group-normalized advantages, and the clipped policy loss.

Read beside the papers: GRPO (DeepSeekMath, arXiv 2402.03300, eq. 3 with outcome supervision),
PPO's clipped objective (arXiv 1707.06347), dual clip (Ye et al., arXiv 1912.09729), and the
DeepEyes recipe (arXiv 2505.14362: clip 0.2 both sides, dual clip 3.0, token-mean, KL 0).
"""

from __future__ import annotations

import typing

import torch
from torch import Tensor

from core.config import LossAggregation


def group_advantages(rewards: Tensor, norm_by_std: bool, eps: float = 1e-6) -> Tensor:
    """Outcome advantages of GRPO: each rollout's reward relative to its group.

        A_i = (r_i - mean(r)) / (std(r) + eps)     (norm_by_std, the paper)
        A_i =  r_i - mean(r)                       (otherwise; "Dr. GRPO", arXiv 2503.20783)

    std is the unbiased sample std of the group, as in the reference implementation. A group
    whose rewards are all equal gets all-zero advantages (nothing to learn from it).

    rewards: (G, n) one row per group of n rollouts of one prompt. Returns (G, n).
    """
    centered = rewards - rewards.mean(dim=-1, keepdim=True)  # (G, n)
    if not norm_by_std:
        return centered
    std = rewards.std(dim=-1, keepdim=True, correction=1 if rewards.shape[-1] > 1 else 0)
    return centered / (std + eps)


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    seq_index: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
    loss_agg: LossAggregation,
    num_tokens: float,
    num_seqs: float,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO policy loss of one micro-batch, normalized by counts over the WHOLE batch.

    With r_t = exp(logp_t - old_logp_t) and A_t the advantage of token t's rollout:

        l_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high))      PPO clip
        l_t = min(l_t, -A_t * dual_clip)              if A_t < 0 and dual_clip > 0 (dual clip)
        l_t += kl_coef * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)     k3 KL, if kl_coef > 0

        token-mean:           L = sum_t m_t l_t / num_tokens
        seq-mean-token-mean:  L = sum_i (sum_{t in i} m_t l_t / sum_{t in i} m_t) / num_seqs

    m is the loss mask (1 on tokens the policy sampled). num_tokens / num_seqs count sampled
    tokens / sequences over every micro-batch of every rank for this optimizer step, so summing
    the losses (and gradients) of all micro-batches and ranks gives the loss of the whole batch.

    Departures from the GRPO paper: KL is 0 by default (DeepEyes), so no reference model; the
    loss is token-mean (DAPO) rather than the paper's per-sequence mean; the log-ratio is clamped
    to +-20 before exp so a stale behaviour logprob cannot overflow.

    Shapes: every tensor argument is (B, T) (T the packed length); seq_index holds each token's
    sequence number 0..S-1 within the micro-batch (read only by seq-mean-token-mean).
    Returns the scalar loss and detached statistics normalized like the loss (so they sum
    over micro-batches and ranks to batch means): clip_fraction (PPO clip active),
    dual_clip_fraction, approx_kl (k3 estimate of KL(old || new)), and kl_ref when used.
    """
    mask = loss_mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(mask, dtype=torch.bool)
    if dual_clip > 0:
        bound = -advantages * dual_clip
        dual_active = (advantages < 0) & (per_token > bound)
        per_token = torch.where(dual_active, bound, per_token)
    stats = {}
    if kl_coef > 0:
        ref_log_ratio = ref_logprobs - logprobs
        kl = torch.exp(ref_log_ratio) - ref_log_ratio - 1
        per_token = per_token + kl_coef * kl
        stats["kl_ref"] = (kl * mask).sum().detach() / num_tokens
    if loss_agg == "token-mean":
        loss = (per_token * mask).sum() / num_tokens
    elif loss_agg == "seq-mean-token-mean":
        num_local = int(seq_index.max()) + 1
        index = seq_index.flatten()
        seq_sum = per_token.new_zeros(num_local).index_add(0, index, (per_token * mask).flatten())  # (S,)
        seq_len = mask.new_zeros(num_local).index_add(0, index, mask.flatten())  # (S,)
        loss = (seq_sum / seq_len.clamp(min=1)).sum() / num_seqs
    else:
        raise ValueError(f"loss_agg={loss_agg!r} is not one of {', '.join(typing.get_args(LossAggregation))}")
    with torch.no_grad():
        stats["clip_fraction"] = ((clipped > unclipped) & ~dual_active).float().mul(mask).sum() / num_tokens
        stats["dual_clip_fraction"] = dual_active.float().mul(mask).sum() / num_tokens
        stats["approx_kl"] = ((ratio - 1) - log_ratio).mul(mask).sum() / num_tokens
    return loss, stats
