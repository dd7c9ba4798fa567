"""`zoomrl rollout`: run the rollout actors on prompts without training, and write what they did.

For looking at a policy's behaviour (a checkpoint export, the base model, the tiny one): every
trajectory goes to a JSON-lines file (text, tool calls with boxes in original pixels, reward
parts, end reason), and a summary of the whole set is returned.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray

from zoomrl.cluster import start_ray
from zoomrl.config import Config
from zoomrl.records import trajectory_record
from zoomrl.rollout_pool import RolloutPool
from zoomrl.types import Sample

GROUPS_IN_FLIGHT_PER_ACTOR = 4  # enough for the engine to batch across groups, bounded memory


def run_rollouts(cfg: Config, model_path: str, samples: list[Sample], out: str | Path) -> dict:
    """rollout.n trajectories of each sample over rollout.num_workers actors; writes `out`."""
    start_ray(cfg)
    start = time.perf_counter()
    pool = RolloutPool(cfg, model_path, cfg.rollout.num_workers)  # returns once every engine is up
    started = time.perf_counter()
    pending = list(enumerate(samples))
    records = []
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as sink:
        while pending or pool.in_flight:
            while pending and len(pool.in_flight) < GROUPS_IN_FLIGHT_PER_ACTOR * len(pool.actors):
                index, sample = pending.pop(0)
                pool.submit(sample, f"rollout-{index}")
            for done in pool.poll(timeout_s=1.0):
                group = ray.get(done.ref)
                for i in range(len(group.trajectories)):
                    record = trajectory_record(group, i)
                    sink.write(json.dumps(record) + "\n")
                    records.append(record)
    generate_s = time.perf_counter() - started
    pool.shutdown()
    return summarize(records, generate_s, started - start)


def summarize(records: list[dict], generate_s: float, startup_s: float) -> dict:
    """Figures over all trajectories written."""
    def mean(key_of) -> float:
        return float(np.mean([key_of(r) for r in records])) if records else 0.0

    tokens = sum(r["response_tokens"] for r in records)
    return {
        "trajectories": len(records),
        "groups": len({r["group_id"] for r in records}),
        "accuracy": mean(lambda r: r["reward_parts"].get("acc", 0.0)),
        "reward_mean": mean(lambda r: r["reward"]),
        "tool_calls_per_trajectory": mean(lambda r: len(r["tool_calls"])),
        "zoom_share": mean(lambda r: any(not c["error"] for c in r["tool_calls"])),
        "response_tokens_mean": mean(lambda r: r["response_tokens"]),
        "end_reasons": dict(Counter(r["end_reason"] for r in records)),
        "rollout_tokens_per_s": tokens / generate_s if generate_s > 0 else 0.0,
        "engine_startup_s": startup_s,
        "generate_s": generate_s,
    }
