"""Packing vs padding for the learner's micro-batches: forward+backward tokens/s on the tiny model.

    .venv/bin/python bench/learner_packing.py [--trajectories 24] [--budget 2048] [--repeats 3]

Builds real multi-turn multimodal trajectories (tests/helpers/trajectories.py) with widely varied
lengths, then runs the same forward + backward (token log-probs of every sequence, summed) four
ways under one token budget per micro-batch, and prints JSON:

- packed: as the learner runs it (`learner.batching.collate`, `learner.model.load_policy`):
  sequences concatenated into one row, first-fit-decreasing into bins of at most `budget`
  tokens, no pad token at all, attention per sequence (`learner.attention`);
- packed_block_mask: the same rows with transformers' own "sdpa", which masks the packed row
  with a block-diagonal (L, L) mask;
- padded_sorted: rows padded to the longest row of their micro-batch, sequences sorted by
  length first (padding's best case), rows * longest <= budget;
- padded_arrival: the same in arrival order (what a queue of finished groups gives).

tokens_per_s counts real tokens only (prompt, images and responses; no pads), over the best of
`repeats` timed passes after one warm-up. The other runs check their log-probs against the
packed ones (max_abs_diff_vs_packed), so all compute the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoProcessor, Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, run as a script

from core.config import load_config  # noqa: E402
from core.types import Trajectory  # noqa: E402
from learner.batching import TrainItem, collate, plan_micro_batches  # noqa: E402
from learner.model import load_policy, token_logprobs  # noqa: E402
from tests.helpers.trajectories import build_trajectory  # noqa: E402  (real trajectories)
from zoomrl.run_setup import ensure_model  # noqa: E402


def make_trajectories(processor, count: int, seed: int) -> list[Trajectory]:
    """Lengths spread like RL rollouts: short answers, long ones, with and without a zoom."""
    rng = np.random.default_rng(seed)
    crops = [None, (112, 168), (168, 224), (224, 280)]
    return [build_trajectory(processor, rng, image_hw=(280, 336), crop_hw=crops[i % 4],
                             turn_tokens=(int(rng.integers(8, 600)), int(rng.integers(8, 300))))
            for i in range(count)]


def padded_micro_batches(lengths: list[int], order: list[int], budget: int) -> list[list[int]]:
    """Consecutive sequences of `order` while rows * longest row <= budget."""
    batches, current = [], []
    for i in order:
        longest = max([lengths[j] for j in current] + [lengths[i]])
        if current and (len(current) + 1) * longest > budget:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current]


def padded_logprobs(model, image_processor, trajs: list[Trajectory], pad_id: int) -> torch.Tensor:
    """(B, Lmax) log-probs of right-padded rows, 3-D positions per row from get_rope_index."""
    longest = max(len(t.input_ids) for t in trajs)
    ids = torch.full((len(trajs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(trajs), longest, dtype=torch.long)
    for row, traj in enumerate(trajs):
        ids[row, :len(traj.input_ids)] = torch.tensor(traj.input_ids)
        mask[row, :len(traj.input_ids)] = 1
    vision = image_processor(images=[im for t in trajs for im in t.images], return_tensors="pt")
    is_image = (ids == model.config.image_token_id).int()
    positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=is_image,
                                              image_grid_thw=vision["image_grid_thw"], attention_mask=mask)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"],
                   use_cache=False).logits[:, :-1].float()
    logprobs = logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)  # (B, L-1)
    return torch.nn.functional.pad(logprobs, (1, 0)) * mask


def run_packed(model, image_processor, trajs, plan) -> tuple[float, list[torch.Tensor]]:
    start, per_seq = time.perf_counter(), {}
    for members in plan:
        batch = collate([TrainItem(trajs[i], 1.0, str(i)) for i in members], image_processor, model)
        logprobs, _ = token_logprobs(model, batch, 1.0, with_entropy=False)
        (logprobs * batch.loss_mask).sum().backward()
        bounds = np.cumsum([0] + [len(trajs[i].input_ids) for i in members])
        for k, i in enumerate(members):
            per_seq[i] = logprobs[0, bounds[k]:bounds[k + 1]].detach()
    return time.perf_counter() - start, [per_seq[i] for i in range(len(trajs))]


def run_padded(model, image_processor, trajs, batches, pad_id) -> tuple[float, list[torch.Tensor], int]:
    start, per_seq, slots = time.perf_counter(), {}, 0
    for members in batches:
        rows = [trajs[i] for i in members]
        logprobs = padded_logprobs(model, image_processor, rows, pad_id)
        loss_mask = torch.zeros_like(logprobs)
        for row, traj in enumerate(rows):
            loss_mask[row, :len(traj.loss_mask)] = torch.tensor(traj.loss_mask, dtype=torch.float32)
        (logprobs * loss_mask).sum().backward()
        slots += logprobs.numel()
        for row, i in enumerate(members):
            per_seq[i] = logprobs[row, :len(trajs[i].input_ids)].detach()
    return time.perf_counter() - start, [per_seq[i] for i in range(len(trajs))], slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=24)
    parser.add_argument("--budget", type=int, default=2048,
                        help="tokens per micro-batch (padded: pads included)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = load_config("tiny-cpu")
    path = ensure_model(cfg.model)
    processor = AutoProcessor.from_pretrained(path)
    size = {"shortest_edge": cfg.model.min_pixels, "longest_edge": cfg.model.max_pixels}
    image_processor = AutoImageProcessor.from_pretrained(path, size=size)
    packed_model = load_policy(path)
    sdpa_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32,
                                                                    attn_implementation="sdpa").train()
    trajs = make_trajectories(processor, args.trajectories, args.seed)
    lengths = [len(t.input_ids) for t in trajs]
    real_tokens = sum(lengths)
    pad_id = processor.tokenizer.pad_token_id or 0

    plan = plan_micro_batches(lengths, num_ranks=1, token_budget=args.budget)[0]
    by_length = sorted(range(len(trajs)), key=lengths.__getitem__)
    padded = {"padded_sorted": padded_micro_batches(lengths, by_length, args.budget),
              "padded_arrival": padded_micro_batches(lengths, list(range(len(trajs))), args.budget)}
    best: dict[str, float] = {}
    results: dict[str, dict] = {}

    def record(name: str, repeat: int, seconds: float, logprobs, reference, micro_batches: int,
               pad_fraction: float) -> None:
        if repeat:  # repeat 0 warms up
            best[name] = min(best.get(name, float("inf")), seconds)
        # index 0 of a packed sequence holds a cross-boundary value (masked in training)
        diff = max(float((a[1:] - b[1:]).abs().max()) for a, b in zip(logprobs, reference, strict=True))
        results[name] = {"micro_batches": micro_batches, "pad_fraction": round(pad_fraction, 3),
                         "max_abs_diff_vs_packed": diff}

    for repeat in range(args.repeats + 1):  # the runs interleave, so they share the machine's noise
        seconds, reference = run_packed(packed_model, image_processor, trajs, plan)
        record("packed", repeat, seconds, reference, reference, len(plan), 0.0)
        seconds, logprobs = run_packed(sdpa_model, image_processor, trajs, plan)
        record("packed_block_mask", repeat, seconds, logprobs, reference, len(plan), 0.0)
        for name, batches in padded.items():
            seconds, logprobs, slots = run_padded(sdpa_model, image_processor, trajs, batches, pad_id)
            record(name, repeat, seconds, logprobs, reference, len(batches), 1 - real_tokens / slots)
        packed_model.zero_grad(set_to_none=True)
        sdpa_model.zero_grad(set_to_none=True)
    for name in results:
        results[name]["seconds"] = round(best[name], 3)
        results[name]["tokens_per_s"] = round(real_tokens / best[name], 1)
    report = {
        "trajectories": len(trajs), "real_tokens": real_tokens, "length_min": min(lengths),
        "length_max": max(lengths), "budget": args.budget, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(), **results,
        **{f"ratio_packed_over_{name}": round(best[name] / best["packed"], 2) for name in results
           if name != "packed"},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
