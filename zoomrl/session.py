"""Rollouts without training: `zoomrl rollout`, and the batch jobs built on it (`eval`, `curate`).

`RolloutSession` owns the rollout actors of one batch job: it starts them on first use (so a job
with nothing left to do never starts an engine), feeds them lists of samples and hands back each
scored group as it finishes. `run_rollouts` is `zoomrl rollout`: every trajectory goes to a
JSON-lines file (text, tool calls with boxes in original pixels, reward parts, end reason; its
images in images/ beside it: `zoomrl view`), and a summary of the whole set is returned.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import ray

from actors.rollout import Sampling
from core.config import Config
from core.types import FinishedGroup, Group, Sample
from zoomrl.cluster import start_ray
from zoomrl.records import ImageStore, reward_parts, trajectory_record
from zoomrl.rollout_pool import RolloutPool

GROUPS_IN_FLIGHT_PER_ACTOR = 4  # enough for the engine to batch across groups, bounded memory


class RolloutSession:
    """rollout.num_workers actors (one engine each) for a batch job; a context manager."""

    def __init__(self, cfg: Config, model_path: str) -> None:
        self.cfg, self.model_path = cfg, model_path
        self._pool: RolloutPool | None = None
        self.startup_s = 0.0
        """Seconds spent starting Ray and the engines."""
        self.generate_s = 0.0
        """Seconds spent generating, summed over `groups` calls."""
        self.response_tokens = 0
        """Tokens the policy sampled, over every trajectory handed back."""

    @property
    def pool(self) -> RolloutPool:
        """The actors, started on first use."""
        if self._pool is None:
            start = time.perf_counter()
            start_ray(self.cfg)
            self._pool = RolloutPool(self.cfg, self.model_path, self.cfg.rollout.num_workers)
            self.startup_s = time.perf_counter() - start  # the pool returns once every engine is up
        return self._pool

    def groups(self, samples: list[Sample], group_prefix: str) -> Iterator[Group]:
        """rollout.n scored trajectories of each sample, as groups in the order they finish.

        Group ids are '<group_prefix>-<index in samples>'.
        """
        if not samples:
            return
        pool = self.pool
        start = time.perf_counter()
        try:
            for group in pool_groups(pool, samples, group_prefix):
                self.response_tokens += sum(t.num_sampled_tokens for t in group.trajectories)
                yield group
        finally:
            self.generate_s += time.perf_counter() - start

    @property
    def tokens_per_s(self) -> float:
        """Sampled tokens per second of generation (engine start-up excluded)."""
        return self.response_tokens / self.generate_s if self.generate_s > 0 else 0.0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> RolloutSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pool_groups(pool: RolloutPool, samples: list[Sample], group_prefix: str,
                sampling: Sampling | None = None,
                others: Callable[[FinishedGroup], None] | None = None) -> Iterator[Group]:
    """Each sample's scored group from `pool`, in the order they finish; ids '<group_prefix>-<index>'.

    A pool that also generates other groups (a training run validating) hands each of those that
    finishes meanwhile to `others`, and keeps their judge failures for their owner. sampling: these
    groups' n and temperature, None = the config's.
    """
    pending, mine = list(enumerate(samples)), set()
    try:
        while pending or mine:
            while pending and len(mine) < GROUPS_IN_FLIGHT_PER_ACTOR * len(pool.actors):
                index, sample = pending.pop(0)
                mine.add(f"{group_prefix}-{index}")
                pool.submit(sample, f"{group_prefix}-{index}", sampling)
            for done in pool.poll(timeout_s=1.0):
                if done.group_id not in mine:
                    if others is None:
                        raise RuntimeError(f"group {done.group_id} is not one of {group_prefix}-*")
                    others(done)
                    continue
                mine.remove(done.group_id)
                yield ray.get(done.ref)
            failed = [error for request, error in pool.judge_failures if request.group_id in mine]
            if failed:  # only training requests such groups again (driver.py): these end the job
                raise failed[0]
    finally:  # stopped early (an error, a consumer that stopped reading): the rest is no one's
        pool.discard(mine)


def run_rollouts(cfg: Config, model_path: str, samples: list[Sample], out: str | Path) -> dict:
    """rollout.n trajectories of each sample over rollout.num_workers actors; writes `out`."""
    records, images = [], ImageStore(Path(out).parent)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with RolloutSession(cfg, model_path) as session, open(out, "w") as sink:
        for group in session.groups(samples, "rollout"):
            for i in range(len(group.trajectories)):
                record = trajectory_record(group, i, images)
                sink.write(json.dumps(record) + "\n")
                records.append(record)
    return summarize(records, session.generate_s, session.startup_s)


def summarize(records: list[dict], generate_s: float, startup_s: float) -> dict:
    """Figures over all trajectories written."""
    def mean(key_of) -> float:
        return float(np.mean([key_of(r) for r in records])) if records else 0.0

    tokens = sum(r["response_tokens"] for r in records)
    return {
        "trajectories": len(records),
        "groups": len({r["group_id"] for r in records}),
        "accuracy": mean(lambda r: reward_parts(r).acc),
        "reward_mean": mean(lambda r: r["reward"]),
        "tool_calls_per_trajectory": mean(lambda r: len(r["tool_calls"])),
        "zoom_share": mean(lambda r: any(not c["error"] for c in r["tool_calls"])),
        "response_tokens_mean": mean(lambda r: r["response_tokens"]),
        "end_reasons": dict(Counter(r["end_reason"] for r in records)),
        "rollout_tokens_per_s": tokens / generate_s if generate_s > 0 else 0.0,
        "engine_startup_s": startup_s,
        "generate_s": generate_s,
    }
