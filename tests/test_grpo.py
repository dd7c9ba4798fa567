"""GRPO math on values computed by hand (learner/grpo.py)."""

import math

import pytest
import torch

from learner.grpo import group_advantages, grpo_loss


def test_advantages_with_and_without_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3); group 1: mean 2, std sqrt(2 / 3)
    std0, std1 = math.sqrt(1 / 3), math.sqrt(2 / 3)
    expected = torch.tensor([[0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0],
                             [1 / std1, -1 / std1, 0.0, 0.0],
                             [0.0, 0.0, 0.0, 0.0]])  # all-equal rewards: nothing to learn
    assert torch.allclose(group_advantages(rewards, norm_by_std=True), expected, atol=1e-5)
    centered = torch.tensor([[0.5, -0.5, -0.5, 0.5], [1.0, -1.0, 0.0, 0.0], [0.0] * 4])
    assert torch.equal(group_advantages(rewards, norm_by_std=False), centered)
    assert torch.equal(group_advantages(torch.tensor([[0.7]]), norm_by_std=True), torch.zeros(1, 1))  # n = 1


# One packed row of two sequences (8 tokens). log r = logprobs - old_logprobs per token:
#   t  seq mask  A    r     unclipped  clipped(0.8..1.3)  PPO max  dual(3.0)  what happens
#   0   0   0    -    -        -          -                -        -         first token: never sampled
#   1   0   1   +1   1.5     -1.5       -1.3             -1.3      -1.3      clipped high
#   2   0   1   +1   0.5     -0.5       -0.8             -0.5      -0.5      low side not clipped for A>0
#   3   1   0    -    -        -          -                -        -         prompt of seq 1
#   4   1   1   -1   0.5      0.5        0.8              0.8       0.8      clipped low
#   5   1   1   -1   5.0      5.0        1.3              5.0       3.0      dual clip
#   6   1   1   -1   2.0      2.0        1.3              2.0       2.0      not clipped
#   7   1   0   -1  100      100        1.3              100        3        masked: ignored
RATIOS = [1.0, 1.5, 0.5, 1.0, 0.5, 5.0, 2.0, 100.0]
ADV = [0.0, 1.0, 1.0, 0.0, -1.0, -1.0, -1.0, -1.0]
MASK = [0, 1, 1, 0, 1, 1, 1, 0]
SEQ = [0, 0, 0, 1, 1, 1, 1, 1]


def _loss(**overrides):
    old = torch.full((1, 8), -2.0)
    logprobs = (old + torch.tensor(RATIOS).log()[None]).requires_grad_(True)
    kwargs = dict(clip_low=0.2, clip_high=0.3, dual_clip=3.0, loss_agg="token-mean", num_tokens=5, num_seqs=2)
    loss, stats = grpo_loss(logprobs, old, torch.tensor([ADV]), torch.tensor([MASK]), torch.tensor([SEQ]),
                            **(kwargs | overrides))
    loss.backward()
    return loss, stats, logprobs.grad[0]


def test_clipping_on_both_sides_dual_clip_and_mask_token_mean():
    loss, stats, grad = _loss()
    assert loss.item() == pytest.approx((-1.3 - 0.5 + 0.8 + 3.0 + 2.0) / 5, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)  # tokens 1 and 4
    assert stats["dual_clip_fraction"].item() == pytest.approx(1 / 5)  # token 5
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 0.5, 5.0, 2.0)]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 5, rel=1e-5)
    # d l_t / d logp_t = -A r where unclipped, 0 where clipped (either clip) or masked; / num_tokens
    expected = torch.tensor([0, 0, -0.5 / 5, 0, 0, 0, 2.0 / 5, 0])
    assert torch.allclose(grad, expected, atol=1e-6)


def test_dual_clip_off_and_global_token_count():
    loss, stats, _ = _loss(dual_clip=0.0)
    assert loss.item() == pytest.approx((-1.3 - 0.5 + 0.8 + 5.0 + 2.0) / 5, abs=1e-6)
    assert stats["dual_clip_fraction"].item() == 0
    # the divisor is the whole batch's count, passed in: with 5 more tokens elsewhere, this
    # micro-batch's share of the loss halves
    assert _loss(num_tokens=10)[0].item() == pytest.approx((-1.3 - 0.5 + 0.8 + 3.0 + 2.0) / 10, abs=1e-6)


def test_seq_mean_token_mean():
    loss, _, grad = _loss(loss_agg="seq-mean-token-mean")
    seq0, seq1 = (-1.3 - 0.5) / 2, (0.8 + 3.0 + 2.0) / 3
    assert loss.item() == pytest.approx((seq0 + seq1) / 2, abs=1e-6)
    # each token weighs 1 / (its sequence's sampled tokens * num_seqs)
    assert grad[2].item() == pytest.approx(-0.5 / (2 * 2)) and grad[6].item() == pytest.approx(2.0 / (3 * 2))


def test_k3_kl_to_reference():
    ref = torch.full((1, 8), -2.0) + torch.tensor(RATIOS).log()[None] + 0.5  # ref - logp = 0.5
    loss_kl, stats, _ = _loss(kl_coef=0.1, ref_logprobs=ref)
    k3 = math.exp(0.5) - 0.5 - 1
    assert stats["kl_ref"].item() == pytest.approx(k3, rel=1e-5)
    assert loss_kl.item() == pytest.approx(_loss()[0].item() + 0.1 * k3, abs=1e-6)


def test_split_over_micro_batches_sums_to_the_whole():
    """Two halves, each divided by the whole batch's count, add up to the whole loss."""
    torch.manual_seed(0)
    logprobs, old = -torch.rand(2, 10), -torch.rand(2, 10)
    adv, mask = torch.randn(2, 1).expand(2, 10), (torch.rand(2, 10) > 0.3).float()
    seq = torch.tensor([[0] * 10, [1] * 10])
    kwargs = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, num_tokens=float(mask.sum()), num_seqs=2)
    for agg in ("token-mean", "seq-mean-token-mean"):
        row = [t.reshape(1, 20) for t in (logprobs, old, adv, mask, seq)]
        whole = grpo_loss(*row, loss_agg=agg, **kwargs)[0]
        first_seq = torch.zeros(1, 10, dtype=torch.long)  # each part holds one sequence
        parts = sum(grpo_loss(logprobs[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], first_seq,
                              loss_agg=agg, **kwargs)[0] for i in range(2))
        assert torch.allclose(whole, parts, atol=1e-6)
