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

from actors import RolloutActor
from zoomrl.cluster import start_ray
from zoomrl.config import Config
from zoomrl.records import trajectory_record
from zoomrl.types import Sample

GROUPS_IN_FLIGHT_PER_ACTOR = 4  # enough for the engine to batch across groups, bounded memory


def run_rollouts(cfg: Config, model_path: str, samples: list[Sample], out: str | Path) -> dict:
    """rollout.n trajectories of each sample over rollout.num_workers actors; writes `out`."""
    start_ray(cfg)
    start = time.perf_counter()
    actor_options = {"num_cpus": cfg.rollout.num_cpus_per_worker, "num_gpus": cfg.rollout.num_gpus_per_worker}
    actors = [RolloutActor.options(**actor_options).remote(cfg, model_path)
              for _ in range(cfg.rollout.num_workers)]
    ray.get([actor.ready.remote() for actor in actors])
    started = time.perf_counter()
    pending = list(enumerate(samples))
    in_flight: dict[ray.ObjectRef, ray.ObjectRef] = {}  # info ref -> group ref
    records = []
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as sink:
        while pending or in_flight:
            while pending and len(in_flight) < GROUPS_IN_FLIGHT_PER_ACTOR * len(actors):
                index, sample = pending.pop(0)
                info_ref, group_ref = actors[index % len(actors)].generate_group.remote(
                    sample, f"rollout-{index}")
                in_flight[info_ref] = group_ref
            done, _ = ray.wait(list(in_flight), num_returns=1)
            group = ray.get(in_flight.pop(done[0]))
            for i in range(len(group.trajectories)):
                record = trajectory_record(group, i)
                sink.write(json.dumps(record) + "\n")
                records.append(record)
    generate_s = time.perf_counter() - started
    for actor in actors:
        ray.get(actor.shutdown.remote())
        ray.kill(actor)
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
