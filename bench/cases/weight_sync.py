"""weight_sync: seconds per weight sync vs model bytes, against the machine's measured memcpy
bandwidth (goal: within 4x of bytes / bandwidth), at two model sizes, phase by phase, on the route
the config names (`weight_sync.method`), as training drives it.

object_store (the default): `LearnerGroup.publish_weights` (every rank puts its own rows of every
tensor into the object store, in parallel: "gather") then `RolloutPool.update_weights` (each actor
reads the parts from the object store: "fetch"; writes them into the shared buffer its vLLM worker
maps: "hand_off"; the worker loads them in place through vLLM's weight-transfer API:
"engine_load"; the prefix, multimodal and encoder caches are dropped: "cache_reset").
gloo (`weight_sync.method=gloo`, the CPU twin of nccl): `RolloutPool.broadcast_weights` (learner
rank 0 broadcasts the buckets to every engine's workers, which load them layer by layer:
"engine_load", the actor's receive; then "cache_reset"); "gather" is 0, the whole sync is "update".
Sizes: the model as configured ("base", the tiny model on tiny-cpu), and "wide", the same config
with --wide overrides (tiny-cpu: a ~70M-parameter text decoder, 1024 wide, 6 layers).
Bandwidth: best of several single copies of a 256 MiB buffer with torch in this process.
"""

from __future__ import annotations

import argparse
import time

import ray
import torch
from omegaconf import OmegaConf

from bench.common import Result, best_of, spread
from core.config import Config
from zoomrl.cluster import start_ray

NAME = "weight_sync"
GOAL_VS_MEMCPY = 4.0
WIDE_TINY = ["model.tiny.hidden_size=1024", "model.tiny.intermediate_size=2816",
             "model.tiny.num_hidden_layers=6", "model.tiny.num_attention_heads=16",
             "model.tiny.num_key_value_heads=2"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="timed syncs per size (after one warm-up)")
    parser.add_argument("--wide", nargs="*", default=WIDE_TINY, metavar="key=value",
                        help="overrides of the second, larger model (default: a ~70M tiny model); "
                             "give none to measure only the configured model; put config overrides "
                             "before --wide")
    parser.add_argument("--memcpy-mib", type=int, default=256, help="buffer size of the bandwidth test")


def memcpy_bandwidth(mib: int) -> float:
    """Bytes per second of one tensor copy in this process (best of 5)."""
    src = torch.ones(mib * 2**20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return src.numel() / best_of(5, lambda: dst.copy_(src))


def wide_config(cfg: Config, wide: list[str]) -> Config:
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(wide)) if wide else cfg


ACTOR_PHASES = ("weights_fetch_s", "weights_hand_off_s", "weights_engine_load_s", "weights_cache_reset_s")


def measure_size(cfg: Config, repeats: int, bandwidth: float) -> dict:
    from learner.ranks import LearnerGroup
    from zoomrl.broadcast_sync import broadcast_sync
    from zoomrl.rollout_pool import RolloutPool
    from zoomrl.run_setup import ensure_model

    model_path = ensure_model(cfg.model)
    learner = LearnerGroup(cfg, model_path)
    broadcast = broadcast_sync(cfg, learner)
    pool = RolloutPool(cfg, model_path, cfg.rollout.num_workers, broadcast=broadcast)
    records = []
    try:
        for version in range(1, repeats + 2):  # version 1 warms up (buffers, the group)
            before = ray.get([a.timing.remote() for a in pool.actors])
            start = time.perf_counter()
            if broadcast is None:
                weights = learner.publish_weights(version)  # returns once every rank's part is stored
                published = time.perf_counter()
                pool.update_weights(version, weights.ref)
            else:
                published = start
                pool.broadcast_weights(version)
            done = time.perf_counter()
            after = ray.get([a.timing.remote() for a in pool.actors])
            record = {"gather_s": published - start, "update_s": done - published, "total_s": done - start}
            for phase in ("loading_weights_s", *ACTOR_PHASES):  # the slowest actor's; 0: not on this route
                record[phase.removeprefix("weights_")] = max(a.get(phase, 0.0) - b.get(phase, 0.0)
                                                             for a, b in zip(after, before, strict=True))
            records.append(record)
        # every tensor once (tied embeddings: one tensor, two names), in the engine dtype
        params = learner.num_parameters
        model_bytes = params * torch.empty((), dtype=getattr(torch, cfg.model.dtype)).element_size()
    finally:
        pool.shutdown()
        learner.shutdown()
    timed = records[1:]
    total = spread([r["total_s"] for r in timed])
    ideal = model_bytes / bandwidth
    phases = {key: spread([r[key] for r in timed]) for key in timed[0] if key != "total_s"}
    return {
        "route": cfg.weight_sync.method, "num_parameters": params, "model_bytes": model_bytes,
        "dtype": cfg.model.dtype,
        "learner_ranks": cfg.learner.num_ranks, "rollout_actors": cfg.rollout.num_workers,
        "sync_s": total, "phases_s": phases,
        "phases_vs_memcpy": {key: value["median"] / ideal for key, value in phases.items()},
        "ideal_s": ideal, "vs_memcpy": total["median"] / ideal,
        "effective_bytes_per_s": model_bytes / total["median"],
    }


def run(args: argparse.Namespace, cfg: Config) -> Result:
    bandwidth = memcpy_bandwidth(args.memcpy_mib)
    configs = {"base": cfg}
    if args.wide:
        configs["wide"] = wide_config(cfg, list(args.wide))
    start_ray(cfg)
    sizes = {name: measure_size(c, args.repeats, bandwidth) for name, c in configs.items()}
    # again at the end: other work on the machine changes it (the ratios use the first figure)
    figures = {"memcpy_bytes_per_s": bandwidth,
               "memcpy_bytes_per_s_at_end": memcpy_bandwidth(args.memcpy_mib), "sizes": sizes}
    parts = [f"{name} {s['model_bytes'] / 2**20:.1f} MiB: {s['sync_s']['median'] * 1e3:.0f} ms/sync ("
             + ", ".join(f"{key.removesuffix('_s')} {value['median'] * 1e3:.0f}"
                         for key, value in s["phases_s"].items() if key != "loading_weights_s")
             + f"), {s['vs_memcpy']:.1f}x bytes/memcpy bandwidth" for name, s in sizes.items()]
    judged = sizes.get("wide", sizes["base"])  # the goal is about the larger model
    met = "met" if judged["vs_memcpy"] <= GOAL_VS_MEMCPY else "MISSED"
    summary = "; ".join(parts) + f"; memcpy {bandwidth / 2**30:.1f} GiB/s (goal <= {GOAL_VS_MEMCPY}x: {met})"
    return Result(figures, summary)
