"""learner: tokens/s per rank, memory per rank and data preparation vs compute of the FSDP2
learner group, at 1 and 2 ranks (goal: sharded parameter + optimizer bytes per rank within 1.1x of
the 1-rank total / ranks).

The batch is real multi-turn multimodal trajectories built with the model's own processor (the
generator of bench/learner_packing.py: 224-1115 tokens, one image and up to one crop each), in
groups of rollout.n with varied rewards, so `LearnerGroup.train_step` runs exactly as in training
(advantages, checks, split over ranks, packing, FSDP forward/backward, AdamW). Per rank count: one
warm-up update, then --steps timed updates. Figures come from the learner's own metrics
(`learner_seconds`, `learner_prepare_seconds`, `learner_state_bytes`, `learner_peak_memory_bytes`)
and the driver's wall time around `train_step` (the difference is planning plus Ray transfer), and
the bytes per update the driver holds (the groups' summaries) against the groups' own bytes, which
go from the object store straight to the ranks.
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np
from omegaconf import OmegaConf

from bench.common import Result, spread
from zoomrl.cluster import start_ray
from zoomrl.config import Config

NAME = "learner"
GOAL_SHARDING = 1.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (default 1 2)")
    parser.add_argument("--groups", type=int, default=4, help="groups of rollout.n trajectories per update")
    parser.add_argument("--steps", type=int, default=3, help="timed updates per rank count")
    parser.add_argument("--seed", type=int, default=0)


def make_groups(model_path: str, num_groups: int, n: int, seed: int) -> list:
    """num_groups groups of n real trajectories with rewards that differ within each group."""
    from transformers import AutoProcessor

    from bench.learner_packing import make_trajectories
    from zoomrl.types import Group, Sample

    processor = AutoProcessor.from_pretrained(model_path)
    trajectories = make_trajectories(processor, num_groups * n, seed)
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(num_groups):
        members = trajectories[g * n:(g + 1) * n]
        for i, traj in enumerate(members):
            traj.group_id, traj.reward = f"bench-{g}", float(i % 2) + float(rng.random())
        sample = Sample(id=f"bench:{g}", data_source="synth_vstar", messages=[], images=[],
                        question="q", answer="A")
        groups.append(Group(f"bench-{g}", sample, members))
    return groups


def measure_ranks(cfg: Config, model_path: str, groups: list, ranks: int, steps: int) -> dict:
    from learner.group import LearnerGroup

    cfg = OmegaConf.merge(cfg, {"learner": {"num_ranks": ranks}})
    learner = LearnerGroup(cfg, model_path)
    try:
        import ray

        refs, summaries = [ray.put(g) for g in groups], [g.summary() for g in groups]
        plan_start = time.perf_counter()
        learner.plan(summaries)
        plan_s = time.perf_counter() - plan_start
        learner.train_step(refs, summaries)  # warm-up: first-call allocations, gloo connections
        records = []
        for _ in range(steps):
            start = time.perf_counter()
            metrics = learner.train_step(refs, summaries)
            records.append(metrics | {"driver_seconds": time.perf_counter() - start})
    finally:
        learner.shutdown()
    tokens = [r["learner_tokens_per_s"] for r in records]
    return {
        "ranks": ranks, "num_parameters": learner.num_parameters,
        "learner_tokens_per_s": spread(tokens),
        "tokens_per_s_per_rank": spread([t / ranks for t in tokens]),
        "learner_seconds": spread([r["learner_seconds"] for r in records]),
        "prepare_seconds": spread([r["learner_prepare_seconds"] for r in records]),
        "prepare_share": spread([r["learner_prepare_seconds"] / r["learner_seconds"] for r in records]),
        "driver_seconds": spread([r["driver_seconds"] for r in records]),
        "plan_seconds": plan_s,
        "state_bytes_per_rank": records[-1]["learner_state_bytes"],
        "peak_memory_bytes_per_rank": records[-1]["learner_peak_memory_bytes"],
        "micro_batches_per_rank": records[-1]["micro_batches"],
    }


def run(args: argparse.Namespace, cfg: Config) -> Result:
    from zoomrl.tiny import ensure_model

    model_path = ensure_model(cfg.model)
    groups = make_groups(model_path, args.groups, cfg.rollout.n, args.seed)
    start_ray(OmegaConf.merge(cfg, {"learner": {"num_ranks": max(args.ranks)}}))
    per_ranks = [measure_ranks(cfg, model_path, groups, ranks, args.steps) for ranks in args.ranks]
    lengths = [len(t.input_ids) for g in groups for t in g.trajectories]
    figures: dict = {"trajectories": len(lengths), "tokens_per_update": sum(lengths),
                     "length_min": min(lengths), "length_max": max(lengths),
                     "micro_batch_tokens": cfg.learner.micro_batch_tokens, "by_ranks": per_ranks,
                     # what the driver holds per update: the summaries it plans from; the groups
                     # themselves go from the object store to the ranks
                     "driver_bytes_per_update": len(pickle.dumps([g.summary() for g in groups])),
                     "group_bytes_per_update": len(pickle.dumps(groups))}
    single = next((r for r in per_ranks if r["ranks"] == 1), None)
    parts = [f"{r['ranks']} rank(s): {r['tokens_per_s_per_rank']['median']:.0f} tok/s/rank, "
             f"state {r['state_bytes_per_rank'] / 2**20:.1f} MiB/rank, "
             f"peak RSS {r['peak_memory_bytes_per_rank'] / 2**30:.2f} GiB/rank, "
             f"prepare {100 * r['prepare_share']['median']:.0f}%" for r in per_ranks]
    parts.append(f"driver holds {figures['driver_bytes_per_update'] / 2**10:.0f} KiB of the "
                 f"{figures['group_bytes_per_update'] / 2**20:.1f} MiB of groups per update")
    if single is not None:
        for r in per_ranks:
            r["state_vs_ideal"] = r["state_bytes_per_rank"] / (single["state_bytes_per_rank"] / r["ranks"])
        worst = max(per_ranks, key=lambda r: r["state_vs_ideal"])
        figures["sharding_ratio_worst"] = worst["state_vs_ideal"]
        met = "met" if worst["state_vs_ideal"] <= GOAL_SHARDING else "MISSED"
        parts.append(f"sharded state {worst['state_vs_ideal']:.3f}x of total/ranks (goal <= "
                     f"{GOAL_SHARDING}: {met})")
    notes = ["Peak memory on CPU is the process's peak RSS (runtime, libraries and activations "
             "included), so it does not halve with ranks; learner_state_bytes is the sharded part."]
    return Result(figures, "; ".join(parts), notes)
