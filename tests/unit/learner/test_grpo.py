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


@pytest.fixture(scope="module")
def policy_and_batch(tiny_model_path, tiny_cfg):
    """The tiny policy as the learner loads it and one packed row of two small trajectories."""
    import numpy as np
    from transformers import AutoImageProcessor, AutoProcessor

    from learner.batching import TrainItem, collate
    from learner.model import load_policy
    from tests.helpers.trajectories import build_trajectory

    processor = AutoProcessor.from_pretrained(tiny_model_path)
    size = {"shortest_edge": tiny_cfg.model.min_pixels, "longest_edge": tiny_cfg.model.max_pixels}
    image_processor = AutoImageProcessor.from_pretrained(tiny_model_path, size=size)
    rng = np.random.default_rng(0)
    trajs = [build_trajectory(processor, rng, image_hw=(56, 84), crop_hw=crop, turn_tokens=(40, 30))
             for crop in ((56, 56), None)]
    model = load_policy(tiny_model_path)
    return model, collate([TrainItem(t, 1.0, str(i)) for i, t in enumerate(trajs)], image_processor, model)


def test_chunked_logprobs_equal_full_vocabulary_ones(policy_and_batch):
    """Chunked log-probs (lm_head on 37 positions at a time, each chunk recomputed in backward):
    the same log-probs, entropies and gradients as the full-vocabulary computation, to 1e-6, at a
    temperature other than 1 (at 1, the division is skipped; every other log-prob test runs there)."""
    temperature = 0.7
    from bench.cases.learner import full_vocabulary_logprobs  # token_logprobs before chunking
    from learner.model import token_logprobs

    model, batch = policy_and_batch
    weights = torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for compute in (lambda: full_vocabulary_logprobs(model, batch, temperature),
                    lambda: token_logprobs(model, batch, temperature, with_entropy=True, chunk_tokens=37)):
        model.zero_grad(set_to_none=True)
        logprobs, entropy = compute()
        (logprobs * weights).sum().backward()
        results.append((logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (want, want_entropy, want_grads), (got, got_entropy, got_grads) = results
    assert batch.input_ids.shape[1] > 3 * 37  # several chunks and a ragged last one
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(got_entropy, want_entropy, atol=1e-6, rtol=0)
    assert not got_entropy.requires_grad
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-6 * float(grad.abs().max()) + 1e-9), name
