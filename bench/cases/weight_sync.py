"""weight_sync: seconds per weight sync vs model bytes, against the machine's measured memcpy
bandwidth (goal: within 2x of bytes / bandwidth), object-store route, at two model sizes.

The route is the one training uses: `LearnerGroup.publish_weights` (every rank joins the gather of
the full state dict onto rank 0, which returns it into the object store) then
`RolloutPool.update_weights` (each actor reads the dict from the object store, stages it as
safetensors in `rollout.engine.weights_dir`, vLLM's worker reloads it in place and the caches are
reset). Sizes: the model as configured ("base", the tiny model on tiny-cpu), and "wide", the same
config with --wide overrides (tiny-cpu: a ~70M-parameter text decoder, 1024 wide, 6 layers).
Bandwidth: best of several single copies of a 256 MiB buffer with torch in this process.
"""

from __future__ import annotations

import argparse
import time

import ray
import torch
from omegaconf import OmegaConf

from bench.common import Result, best_of, spread
from zoomrl.cluster import start_ray
from zoomrl.config import Config

NAME = "weight_sync"
GOAL_VS_MEMCPY = 2.0
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


def measure_size(cfg: Config, repeats: int, bandwidth: float) -> dict:
    from learner.group import LearnerGroup
    from zoomrl.rollout_pool import RolloutPool
    from zoomrl.tensors import unpack
    from zoomrl.tiny import ensure_model

    model_path = ensure_model(cfg.model)
    learner = LearnerGroup(cfg, model_path)
    pool = RolloutPool(cfg, model_path, cfg.rollout.num_workers)
    records = []
    try:
        for version in range(1, repeats + 2):  # version 1 warms up
            start = time.perf_counter()
            weights = learner.publish_weights(version)
            ray.wait([weights.ref], fetch_local=False)  # rank 0's dict is in the object store
            published = time.perf_counter()
            loading_before = ray.get([a.timing.remote() for a in pool.actors])
            pool.update_weights(version, weights.ref)
            done = time.perf_counter()
            loading = [t["loading_weights_s"] for t in ray.get([a.timing.remote() for a in pool.actors])]
            engine_load_s = max(after - before["loading_weights_s"]
                                for after, before in zip(loading, loading_before, strict=True))
            records.append({"publish_s": published - start, "update_s": done - published,
                            "engine_load_s": engine_load_s, "total_s": done - start})
        state = unpack(ray.get(weights.ref))
        model_bytes = sum(t.numel() * t.element_size() for t in state.values())
        params = learner.num_parameters
    finally:
        pool.shutdown()
        learner.shutdown()
    timed = records[1:]
    total = spread([r["total_s"] for r in timed])
    ideal = model_bytes / bandwidth
    return {
        "num_parameters": params, "model_bytes": model_bytes, "dtype": cfg.model.dtype,
        "learner_ranks": cfg.learner.num_ranks, "rollout_actors": cfg.rollout.num_workers,
        "weights_dir": cfg.rollout.engine.weights_dir or "(system temp)",
        "sync_s": total, "publish_s": spread([r["publish_s"] for r in timed]),
        "update_s": spread([r["update_s"] for r in timed]),
        "engine_load_s": spread([r["engine_load_s"] for r in timed]),
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
    figures = {"memcpy_bytes_per_s": bandwidth, "sizes": sizes}
    parts = [f"{name} {s['model_bytes'] / 2**20:.1f} MiB: {s['sync_s']['median']:.2f} s/sync "
             f"(publish {s['publish_s']['median']:.2f}, engine load {s['engine_load_s']['median']:.2f}), "
             f"{s['vs_memcpy']:.0f}x bytes/memcpy bandwidth" for name, s in sizes.items()]
    best = min(s["vs_memcpy"] for s in sizes.values())
    met = "met" if best <= GOAL_VS_MEMCPY else "MISSED"
    summary = "; ".join(parts) + f"; memcpy {bandwidth / 2**30:.1f} GiB/s (goal <= {GOAL_VS_MEMCPY}x: {met})"
    return Result(figures, summary)
