"""From scored groups to the tensors one rank feeds its model.

Three steps. On the driver, from the groups' summaries only: `make_shards` splits one policy
update into per-rank `StepShard`s, each a list of micro-batches under a token budget, keeping a
group's trajectories on one rank. On each rank: `resolve` puts the trajectories of the groups it
fetched in place of their summaries, `check_trajectory` refuses a trajectory whose image tokens
disagree with its images, and `collate` packs one micro-batch into a single row (`MicroBatch`),
rebuilding pixel values, image grids and Qwen2.5-VL's 3-D rotary position ids.

Every micro-batch runs the vision tower: one without an image gets a placeholder (see
`placeholder_image`), so that every rank runs the same FSDP collectives.

Packing, not padding: sequences are concatenated into one row whose text position ids restart
at 0 at each sequence, and attention runs per sequence (`learner.attention`), so a micro-batch
holds no pad tokens at all, the token budget is exact, and no token attends across sequences.
Measured against padding (bench/learner_packing.py) in learner/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor
from transformers import BaseImageProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from core.images import num_image_tokens, smart_resize
from core.types import Group, GroupSummary, Trajectory, TrajectorySummary
from learner.grpo import group_advantages


class BatchError(ValueError):
    """A trajectory cannot be trained on; the message names it and says why."""


@dataclass
class TrainItem:
    """One trajectory as the learner trains on it."""

    trajectory: Trajectory | TrajectorySummary
    """Its summary while the driver plans; the trajectory itself once a rank resolved it."""
    advantage: float
    """Its group-normalized advantage, broadcast to every sampled token."""
    name: str
    """'<group_id>/<index>': how errors and logs refer to it."""
    active: bool = True
    """False for a filler: a copy of a short trajectory with its loss mask zeroed, run so that
    every rank does the same number of forward/backward passes (FSDP's collectives need it)."""


@dataclass
class StepShard:
    """One rank's share of one optimizer step."""

    micro_batches: list[list[TrainItem]]
    """Gradients accumulate over these, in order; every rank holds the same number."""
    num_tokens: int
    """Sampled tokens in the whole step over all ranks: the token-mean divisor (at least 1)."""
    num_seqs: int
    """Active trajectories in the whole step over all ranks: the seq-mean divisor."""


@dataclass
class MicroBatch:
    """Several trajectories packed into one row of length L (no padding)."""

    input_ids: Tensor
    """(1, L) token ids, image pads expanded."""
    position_ids: Tensor
    """(4, 1, L) text positions restarting at 0 per sequence (the packing boundary), then the
    temporal/height/width rotary positions of Qwen2.5-VL."""
    pixel_values: Tensor
    """(P, 3*2*14*14) patches of every image in order (the placeholder's when none)."""
    image_grid_thw: Tensor
    """(I, 3) patch grid of every image in order."""
    loss_mask: Tensor
    """(1, L) 1.0 on sampled tokens of active trajectories."""
    old_logprobs: Tensor
    """(1, L) logprob of token t under the behaviour policy (0 where not sampled)."""
    advantages: Tensor
    """(1, L) each token's trajectory advantage."""
    seq_index: Tensor
    """(1, L) which trajectory of this micro-batch each token belongs to."""
    placeholder_tokens: int = 0
    """Tokens of the placeholder image sequence at the end of the row (0 when the micro-batch
    has images of its own): run, never trained on, not counted as throughput."""

    @property
    def num_tokens(self) -> int:
        """Tokens of the trajectories (the placeholder excluded)."""
        return self.input_ids.shape[1] - self.placeholder_tokens

    def to(self, device: torch.device) -> MicroBatch:
        """The same batch with every tensor on device."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return MicroBatch(**{name: value.to(device) if isinstance(value, Tensor) else value
                             for name, value in values.items()})


def score_groups(groups: list[Group] | list[GroupSummary], norm_by_std: bool,
                 filter_zero_adv: bool) -> list[list[TrainItem]]:
    """Each group's TrainItems, with its GRPO advantages (`group_advantages`).

    With filter_zero_adv, groups whose rewards are all equal are dropped: their advantages are
    all zero, so they add no gradient, yet under token-mean they would dilute everyone else's.
    """
    scored = []
    for group in groups:
        if filter_zero_adv and np.ptp(group.rewards) == 0:
            continue
        advantages = group_advantages(torch.as_tensor(group.rewards)[None], norm_by_std)[0]  # (n,)
        scored.append([TrainItem(traj, float(adv), f"{group.group_id}/{i}")
                       for i, (traj, adv) in enumerate(zip(group.trajectories, advantages, strict=True))])
    return scored


def image_spans(input_ids: np.ndarray, image_token_id: int) -> list[int]:
    """Lengths of the runs of image pad tokens, in order (one run per image)."""
    is_pad = np.concatenate([[0], (input_ids == image_token_id).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(is_pad))  # run starts and ends alternate
    return (edges[1::2] - edges[0::2]).tolist()


def check_trajectory(item: TrainItem, image_token_id: int, min_pixels: int, max_pixels: int) -> None:
    """Refuse (BatchError naming the trajectory) what the learner cannot reproduce exactly.

    The rollout engine saw each image at its stored size and spent one token per 28x28 patch
    on it; the learner must spend the same, or the model silently mis-aligns image features.
    """
    traj = item.trajectory
    where = f"trajectory {item.name} (sample {traj.sample_id})"
    length = len(traj.input_ids)
    if not len(traj.loss_mask) == len(traj.behavior_logprobs) == length:
        raise BatchError(f"{where}: input_ids, loss_mask and behavior_logprobs lengths differ "
                         f"({length}, {len(traj.loss_mask)}, {len(traj.behavior_logprobs)})")
    if length < 2 or traj.loss_mask[0]:
        raise BatchError(f"{where}: the first token cannot be sampled (loss_mask[0] must be 0)")
    if np.any((traj.input_ids == image_token_id) & (traj.loss_mask != 0)):
        raise BatchError(f"{where}: image pad tokens are marked as sampled (loss_mask 1)")
    for i, image in enumerate(traj.images):
        height, width = image.shape[:2]
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BatchError(f"{where}: image {i} must be (H, W, 3) uint8, got {image.shape} "
                             f"{image.dtype}")
        if smart_resize(height, width, min_pixels, max_pixels) != (height, width):
            raise BatchError(f"{where}: image {i} is {width}x{height}, a size the processor would "
                             "change; images must be stored already resized")
    spans = image_spans(traj.input_ids, image_token_id)
    expected = [num_image_tokens(*image.shape[:2]) for image in traj.images]
    if spans != expected:
        raise BatchError(f"{where}: image token runs {spans} disagree with its {len(expected)} "
                         f"images, which need {expected} tokens")


def plan_micro_batches(lengths: list[int], num_ranks: int, token_budget: int,
                       owners: list | None = None) -> list[list[list[int]]]:
    """Assign sequences to ranks and pack each rank's share into micro-batches.

    Sequences with the same owner (default: each its own) go to one rank. Ranks get owners with
    the most tokens first, each to the rank with the fewest tokens so far (balances compute);
    each rank then packs its sequences first-fit-decreasing into bins of at most token_budget
    tokens (a longer sequence gets a bin of its own). Ranks with fewer bins get empty ones
    appended: every rank must run the same number of forward/backward passes.

    Returns plan[rank][micro_batch] = indices into lengths.
    """
    owners = list(range(len(lengths))) if owners is None else owners
    totals: dict = {}
    for owner, length in zip(owners, lengths, strict=True):
        totals[owner] = totals.get(owner, 0) + length
    rank_of, load = {}, [0] * num_ranks
    for owner in sorted(totals, key=lambda o: -totals[o]):
        rank_of[owner] = min(range(num_ranks), key=lambda r: load[r])
        load[rank_of[owner]] += totals[owner]
    per_rank: list[list[int]] = [[] for _ in range(num_ranks)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        per_rank[rank_of[owners[i]]].append(i)
    plan = []
    for indices in per_rank:
        bins: list[list[int]] = []
        room: list[int] = []
        for i in indices:  # already longest first
            fit = next((b for b, free in enumerate(room) if lengths[i] <= free), None)
            if fit is None:
                bins.append([i])
                room.append(token_budget - lengths[i])
            else:
                bins[fit].append(i)
                room[fit] -= lengths[i]
        plan.append(bins)
    most = max(len(bins) for bins in plan)
    return [bins + [[] for _ in range(most - len(bins))] for bins in plan]


def make_shards(items: list[TrainItem], num_ranks: int, token_budget: int) -> list[StepShard]:
    """Split one optimizer step's items into one StepShard per rank, a group's items on one rank
    (so each rank fetches only its own groups from the object store) while there are at least as
    many groups as ranks; with fewer, items spread one by one (the ranks then fetch a group each
    of them trains on): a step of one group on two ranks trained on one while the other ran
    fillers (`python -m bench vs_trl`, wide job: 18.9 s of a 23.9 s step).

    Empty micro-batches are filled with an inactive copy of the shortest item, so each rank
    runs the same passes; fillers add nothing to the loss, the gradients or the counts.
    """
    lengths = [item.trajectory.num_tokens for item in items]
    groups = [item.trajectory.group_id for item in items]
    owners = groups if len(set(groups)) >= num_ranks else None
    plan = plan_micro_batches(lengths, num_ranks, token_budget, owners)
    shortest = items[min(range(len(items)), key=lambda i: lengths[i])]
    filler = TrainItem(shortest.trajectory, 0.0, shortest.name, active=False)
    num_tokens = max(1, sum(item.trajectory.num_sampled_tokens for item in items))
    return [StepShard([[items[i] for i in mb] if mb else [filler] for mb in bins],
                      num_tokens=num_tokens, num_seqs=len(items))
            for bins in plan]


def resolve(shard: StepShard, groups: dict[str, Group]) -> StepShard:
    """The shard with every item's summary replaced by its trajectory, from the fetched groups."""
    def trajectory(item: TrainItem) -> Trajectory:
        summary = item.trajectory
        return groups[summary.group_id].trajectories[summary.index]
    return replace(shard, micro_batches=[[replace(item, trajectory=trajectory(item)) for item in items]
                                         for items in shard.micro_batches])


def placeholder_image(config: Qwen2_5_VLConfig) -> tuple[np.ndarray, Tensor, Tensor]:
    """A sequence holding one image and nothing else, for a micro-batch without images:
    (token ids <|vision_start|><|image_pad|><|vision_end|>, pixel values (4, 3*2*14*14) of zeros,
    image grid (1, 3): one merged 28x28 patch, the smallest image the vision tower takes).

    Why: the vision tower's blocks and merger are FSDP units, whose forward all-gathers and
    backward reduce-scatters are collectives every rank must run, in the same order. Qwen2.5-VL
    skips the tower when a batch has no image, so a rank whose micro-batch is text only would
    skip them while another waits in them (gloo aborts on the size mismatch, NCCL hangs). Packed
    into the row, the placeholder runs through the same code path as a real image (same modules,
    same order, forward and backward, activation checkpointing and the KL reference model
    included), which a separate `visual(...)` call added to the loss would not: it would run its
    collectives before or after the decoder's, not between them as a real image does. Its loss
    mask is 0 and per-sequence attention keeps other sequences from seeing it, so it adds exactly
    zero to the loss and to every gradient; it costs 3 tokens and a 4-patch tower pass.
    """
    vision = config.vision_config
    merge = vision.spatial_merge_size
    ids = np.array([config.vision_start_token_id, config.image_token_id, config.vision_end_token_id])
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    return ids, torch.zeros(merge * merge, patch), torch.tensor([[1, merge, merge]])


def collate(items: list[TrainItem], image_processor: BaseImageProcessor,
            model: Qwen2_5_VLForConditionalGeneration) -> MicroBatch:
    """Pack items into one MicroBatch: pixels, image grids and 3-D rotary positions rebuilt.

    image_processor is the Qwen2-VL image processor (it keeps the stored sizes, which
    `check_trajectory` verified); model is the Qwen2.5-VL model, whose `get_rope_index` gives
    the rotary positions of each whole multi-turn sequence (it reads only the config).
    """
    ids, positions, text_positions, pixels, grids = [], [], [], [], []
    mask, old, adv, seq = [], [], [], []

    def add(token_ids: np.ndarray, grid: Tensor | None, loss_mask: Tensor, behavior_logprobs: np.ndarray,
            advantage: float) -> None:
        seq_ids = torch.tensor(token_ids, dtype=torch.long)[None]  # (1, T); copies (read-only arrays)
        is_image = (seq_ids == model.config.image_token_id).int()
        rope, _ = model.model.get_rope_index(seq_ids, mm_token_type_ids=is_image, image_grid_thw=grid)
        seq.append(torch.full_like(seq_ids[0], len(ids)))
        ids.append(seq_ids)
        positions.append(rope)  # (3, 1, T)
        text_positions.append(torch.arange(seq_ids.shape[1]))
        mask.append(loss_mask)
        old.append(torch.tensor(behavior_logprobs, dtype=torch.float32))
        adv.append(torch.full_like(loss_mask, advantage))

    for item in items:
        traj = item.trajectory
        grid = None
        if traj.images:
            vision = image_processor(images=list(traj.images), return_tensors="pt")
            pixels.append(vision["pixel_values"])
            grid = vision["image_grid_thw"]
            grids.append(grid)
        add(traj.input_ids, grid, torch.tensor(traj.loss_mask, dtype=torch.float32) * float(item.active),
            traj.behavior_logprobs, item.advantage)
    placeholder_tokens = 0
    if not pixels:  # every micro-batch runs the vision tower (see `placeholder_image`)
        token_ids, pixel_values, grid = placeholder_image(model.config)
        pixels.append(pixel_values)
        grids.append(grid)
        placeholder_tokens = len(token_ids)
        add(token_ids, grid, torch.zeros(placeholder_tokens), np.zeros(placeholder_tokens), 0.0)
    return MicroBatch(
        input_ids=torch.cat(ids, dim=1),
        position_ids=torch.cat([torch.cat(text_positions)[None, None], torch.cat(positions, dim=2)]),
        pixel_values=torch.cat(pixels),
        image_grid_thw=torch.cat(grids),
        loss_mask=torch.cat(mask)[None],
        old_logprobs=torch.cat(old)[None],
        advantages=torch.cat(adv)[None],
        seq_index=torch.cat(seq)[None],
        placeholder_tokens=placeholder_tokens,
    )
