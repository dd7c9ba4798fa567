"""From scored groups to packed micro-batches (learner/batching.py), on real tiny-model trajectories."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from learner.attention import packed_sdpa_attention
from learner.batching import (
    BatchError,
    TrainItem,
    check_trajectory,
    collate,
    make_shards,
    plan_micro_batches,
    resolve,
    score_groups,
)
from learner.model import load_policy, token_logprobs
from tests.helpers.learner import advantages, reference_logprobs, without_images
from tests.helpers.trajectories import hf_logprobs


@pytest.fixture(scope="module")
def model(tiny_model_path):
    """The plain transformers model (its own "sdpa" attention): the reference."""
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


def _items(groups) -> list[TrainItem]:
    return [item for group in score_groups(groups, True, False) for item in group]


def _check(item: TrainItem, model, tiny_cfg) -> None:
    check_trajectory(item, model.config.image_token_id, tiny_cfg.model.min_pixels, tiny_cfg.model.max_pixels)


def test_score_groups_advantages_and_filter(groups):
    items = score_groups(groups, norm_by_std=True, filter_zero_adv=False)
    for group, scored in zip(groups, items, strict=True):
        expected = advantages(np.array([t.reward for t in group.trajectories]), True)
        assert [i.advantage for i in scored] == pytest.approx(expected.tolist(), abs=1e-5)
        assert [i.name for i in scored] == [f"{group.group_id}/{k}" for k in range(len(scored))]
    flat = copy.deepcopy(groups[0])
    for traj in flat.trajectories:
        traj.reward = 1.0
    kept = score_groups([flat, groups[1]], norm_by_std=True, filter_zero_adv=True)
    assert [g[0].trajectory.group_id for g in kept] == [groups[1].group_id]
    assert all(i.advantage == 0 for i in score_groups([flat], True, False)[0])


def test_check_accepts_real_trajectories(groups, model, tiny_cfg):
    for item in _items(groups):
        _check(item, model, tiny_cfg)


def test_check_refuses_image_token_mismatch_naming_the_trajectory(groups, model, tiny_cfg):
    item = _items(groups)[0]
    assert len(item.trajectory.images) == 2
    pad = model.config.image_token_id

    one_pad_less = copy.deepcopy(item)
    traj = one_pad_less.trajectory
    drop = int(np.flatnonzero(traj.input_ids == pad)[-1])
    traj.input_ids, traj.loss_mask, traj.behavior_logprobs = (
        np.delete(a, drop) for a in (traj.input_ids, traj.loss_mask, traj.behavior_logprobs))
    with pytest.raises(BatchError, match=rf"trajectory {item.name} .*image token runs"):
        _check(one_pad_less, model, tiny_cfg)

    image_missing = copy.deepcopy(item)
    image_missing.trajectory.images.pop()
    with pytest.raises(BatchError, match=rf"trajectory {item.name} .*1 images"):
        _check(image_missing, model, tiny_cfg)

    wrong_size = copy.deepcopy(item)  # a crop that would have been resized differently
    wrong_size.trajectory.images[1] = np.zeros((100, 100, 3), dtype=np.uint8)
    with pytest.raises(BatchError, match=rf"trajectory {item.name} .*100x100"):
        _check(wrong_size, model, tiny_cfg)

    pad_sampled = copy.deepcopy(item)
    pad_sampled.trajectory.loss_mask[np.flatnonzero(pad_sampled.trajectory.input_ids == pad)[0]] = 1
    with pytest.raises(BatchError, match="image pad tokens are marked as sampled"):
        _check(pad_sampled, model, tiny_cfg)


def test_plan_micro_batches_respects_budget_and_balances_ranks():
    rng = np.random.default_rng(1)
    lengths = rng.integers(50, 400, 37).tolist() + [900]  # one longer than the budget
    plan = plan_micro_batches(lengths, num_ranks=3, token_budget=600)
    assert len({len(bins) for bins in plan}) == 1  # same number of passes on every rank
    placed = sorted(i for bins in plan for mb in bins for i in mb)
    assert placed == list(range(len(lengths)))  # every sequence exactly once
    for mb in (mb for bins in plan for mb in bins):
        assert sum(lengths[i] for i in mb) <= 600 or len(mb) == 1
    loads = [sum(lengths[i] for mb in bins for i in mb) for bins in plan]
    assert max(loads) - min(loads) <= max(lengths)  # greedy balance bound


def test_make_shards_fillers_and_global_counts(groups):
    items = _items(groups)[:3]
    assert len({i.trajectory.group_id for i in items}) == 1
    shards = make_shards(items, num_ranks=4, token_budget=10_000)  # more ranks than groups
    assert all(len(s.micro_batches) == 1 for s in shards)
    active = [i for s in shards for mb in s.micro_batches for i in mb if i.active]
    assert sorted(i.name for i in active) == sorted(i.name for i in items)
    # fewer groups than ranks: the group's items spread over 3 ranks, the 4th runs a filler
    assert sum(any(i.active for mb in s.micro_batches for i in mb) for s in shards) == 3
    fillers = [i for s in shards for mb in s.micro_batches for i in mb if not i.active]
    assert len(fillers) == 1 and all(f.advantage == 0 for f in fillers)
    assert {s.num_tokens for s in shards} == {sum(i.trajectory.num_sampled_tokens for i in items)}
    assert {s.num_seqs for s in shards} == {3}


def test_a_group_stays_on_one_rank_while_there_are_enough_groups(groups):
    items = _items(groups)
    assert len({i.trajectory.group_id for i in items}) == 2
    shards = make_shards(items, num_ranks=2, token_budget=10_000)
    assert [len({i.trajectory.group_id for mb in s.micro_batches for i in mb}) for s in shards] == [1, 1]


def test_shards_planned_from_summaries_resolve_to_the_same_update(groups):
    """The driver plans from Group.summary() alone; a rank resolving the plan with the groups it
    fetched holds exactly the items a plan from the whole groups would give it."""
    summaries = [g.summary() for g in groups]
    assert len(pickle.dumps(summaries)) * 20 < len(pickle.dumps(groups))  # no tokens, no images
    from_groups = make_shards(_items(groups), num_ranks=2, token_budget=600)
    from_summaries = make_shards(_items(summaries), num_ranks=2, token_budget=600)
    by_id = {g.group_id: g for g in groups}
    for full, planned in zip(from_groups, from_summaries, strict=True):
        resolved = resolve(planned, by_id)
        assert (resolved.num_tokens, resolved.num_seqs) == (full.num_tokens, full.num_seqs)
        assert ([[(i.name, i.advantage, i.active, i.trajectory) for i in mb] for mb in resolved.micro_batches]
                == [[(i.name, i.advantage, i.active, i.trajectory) for i in mb] for mb in full.micro_batches])


def test_collate_packs_and_matches_unpacked_forward(groups, model, tiny_model_path, tiny_cfg):
    """Packed row (positions, pixels, grids rebuilt by collate) = each trajectory run alone by
    transformers (which computes its own 3-D positions): same log-prob on every sampled token."""
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    size = {"shortest_edge": tiny_cfg.model.min_pixels, "longest_edge": tiny_cfg.model.max_pixels}
    image_processor = AutoImageProcessor.from_pretrained(tiny_model_path, size=size)
    items = _items(groups)[:4]
    items[1] = TrainItem(items[1].trajectory, 0.5, items[1].name, active=False)
    batch = collate(items, image_processor, model)
    total = sum(len(i.trajectory.input_ids) for i in items)
    num_images = sum(len(i.trajectory.images) for i in items)
    assert batch.input_ids.shape == (1, total) and batch.position_ids.shape == (4, 1, total)
    assert batch.image_grid_thw.shape == (num_images, 3)
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(-1).sum())
    starts = np.cumsum([0] + [len(i.trajectory.input_ids) for i in items[:-1]])
    assert (batch.position_ids[0, 0, starts] == 0).all()  # text positions restart per sequence
    with torch.no_grad():  # the model as the learner loads it (per-sequence attention)
        packed, entropy = token_logprobs(load_policy(tiny_model_path).eval(), batch, 1.0, with_entropy=True)
    alone = torch.cat([hf_logprobs(model, processor, i.trajectory) for i in items])
    sampled = torch.cat([torch.tensor(i.trajectory.loss_mask) for i in items]).bool()
    assert torch.allclose(packed[0][sampled], alone[sampled], atol=1e-5)
    assert (entropy[0][sampled] > 0).all()
    # the behaviour log-probs and advantages ride along; the inactive item's mask is zero
    expected_mask = torch.cat([torch.tensor(i.trajectory.loss_mask, dtype=torch.float32) * i.active
                               for i in items])
    assert torch.equal(batch.loss_mask[0], expected_mask)
    assert torch.equal(batch.old_logprobs[0], torch.cat([torch.tensor(i.trajectory.behavior_logprobs)
                                                         for i in items]))
    assert batch.advantages[0, starts[1]] == 0.5 and batch.seq_index[0, -1] == 3


def test_a_micro_batch_without_images_runs_the_vision_tower_on_a_placeholder(groups, model, tiny_model_path,
                                                                             tiny_cfg):
    """Text-only trajectories (rows without images) are packed with a placeholder image, so the
    vision tower runs once per micro-batch, forward and backward, as FSDP's collectives need on
    every rank (tests/integration/test_ranks.py runs it on 2 ranks). The placeholder changes no log-prob
    and adds exactly zero to every gradient."""
    size = {"shortest_edge": tiny_cfg.model.min_pixels, "longest_edge": tiny_cfg.model.max_pixels}
    image_processor = AutoImageProcessor.from_pretrained(tiny_model_path, size=size)
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    items = _items([without_images(groups[0], model.config)])
    batch = collate(items, image_processor, model)
    lengths = [len(i.trajectory.input_ids) for i in items]
    assert batch.placeholder_tokens == 3 and batch.num_tokens == sum(lengths) == batch.input_ids.shape[1] - 3
    assert batch.image_grid_thw.tolist() == [[1, 2, 2]] and batch.pixel_values.shape[0] == 4
    assert not batch.loss_mask[0, -3:].any() and (batch.seq_index[0, -3:] == len(items)).all()
    policy = load_policy(tiny_model_path)
    tower_calls = []
    policy.model.visual.register_forward_hook(lambda *args: tower_calls.append(1))
    logprobs, _ = token_logprobs(policy, batch, 1.0, with_entropy=False)
    (logprobs * batch.loss_mask).sum().backward()
    assert tower_calls == [1]
    with torch.no_grad():
        alone = torch.cat([reference_logprobs(model, processor, i.trajectory, 1.0) for i in items])
    sampled = batch.loss_mask[0, :-3].bool()
    assert torch.allclose(logprobs[0, :-3][sampled], alone[sampled], atol=1e-5)
    visual = dict(policy.model.visual.named_parameters())
    assert all(p.grad is not None and not p.grad.any() for p in visual.values())  # ran, added 0
    assert policy.model.language_model.layers[0].mlp.up_proj.weight.grad.any()


def test_packed_attention_equals_block_diagonal_mask():
    """Per-sequence SDPA over a packed row = one SDPA with the block-diagonal causal mask."""
    torch.manual_seed(0)
    lengths = [5, 1, 9, 3]
    query, key, value = torch.randn(1, 4, 18, 8), torch.randn(1, 2, 18, 8), torch.randn(1, 2, 18, 8)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]  # (1, 18)
    seq = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))
    allowed = (seq[:, None] == seq[None, :]) & torch.ones(18, 18, dtype=torch.bool).tril()
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    got, _ = packed_sdpa_attention(module, query, key, value, None, position_ids=positions, scaling=0.3)
    want = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=allowed, scale=0.3)
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-6)
    with pytest.raises(ValueError, match="one packed row"):
        packed_sdpa_attention(module, query.expand(2, -1, -1, -1), key.expand(2, -1, -1, -1),
                              value.expand(2, -1, -1, -1), None, position_ids=positions.expand(2, -1))


@pytest.mark.parametrize("causal", [True, False])
def test_packed_attention_batches_runs_of_equal_length(causal, monkeypatch):
    """Consecutive sequences of one length (a vision tower's windows) take one SDPA call as a batch;
    output and gradients equal one SDPA over the row with the block-diagonal mask."""
    import learner.attention

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1].shape[0])  # the batch: sequences in the call
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(learner.attention, "sdpa_attention_forward", counted)
    torch.manual_seed(0)
    lengths = [4, 4, 4, 2, 6, 6, 4]
    total = sum(lengths)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    allowed = seq[:, None] == seq[None, :]
    if causal:
        allowed &= torch.ones(total, total, dtype=torch.bool).tril()
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = causal, 2
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    bounds = ({"position_ids": torch.cat([torch.arange(n) for n in lengths])[None]} if causal
              else {"cu_seq_lens_q": cu_seqlens, "max_length_q": 6})
    base = [torch.randn(1, heads, total, 8) for heads in (4, 2, 2)]
    got_inputs = [t.clone().requires_grad_() for t in base]
    got, _ = packed_sdpa_attention(module, *got_inputs, None, scaling=0.3, **bounds)
    assert calls == [3, 1, 2, 1]
    want_inputs = [t.clone().requires_grad_() for t in base]
    query, key, value = want_inputs
    want = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=allowed, scale=0.3)
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-6)
    got.square().sum().backward()
    want.transpose(1, 2).square().sum().backward()
    for g, w in zip(got_inputs, want_inputs, strict=True):
        assert torch.allclose(g.grad, w.grad, atol=1e-5)
