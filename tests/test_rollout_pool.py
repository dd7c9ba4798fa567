"""Surviving a rollout actor that dies mid-group: Ray restarts it, the pool reloads the current
weights into it and re-issues its groups under the same ids, and every group comes back once."""

from __future__ import annotations

import time

import pytest
import ray
from omegaconf import OmegaConf
from transformers import Qwen2_5_VLForConditionalGeneration

from zoomrl.data import read_samples
from zoomrl.queue import QueuedGroup, ReplayQueueActor
from zoomrl.rollout_pool import RolloutPool

pytestmark = pytest.mark.slow


def test_killed_actor_is_restarted_and_its_groups_reissued_once(ray_cluster, tiny_cfg, tiny_model_path,
                                                               synth_dir):
    cfg = OmegaConf.merge(tiny_cfg, {"rollout": {"n": 4, "max_tokens_per_turn": 128, "seed": 0}})
    samples = read_samples(str(synth_dir / "train.parquet"))[:3]
    pool = RolloutPool(cfg, tiny_model_path, num_workers=1)
    queue = ReplayQueueActor.remote(8, 1)
    try:
        state = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict()
        pool.update_weights(1, ray.put(state))
        for i, sample in enumerate(samples):
            pool.submit(sample, f"g{i}")
        ray.kill(pool.actors[0], no_restart=False)  # the process dies; Ray starts a new one
        finished, deadline = [], time.time() + 600
        while len(finished) < len(samples) and time.time() < deadline:
            for done in pool.poll(timeout_s=1.0):
                finished.append(done)
                assert ray.get(queue.put.remote(QueuedGroup(done.ref, done.info.policy_version,
                                                            done.info.group_id)))
        assert sorted(done.info.group_id for done in finished) == ["g0", "g1", "g2"]
        assert pool.reissued >= 1
        # the restarted engine was given version 1 before the re-issued groups ran
        assert all(done.info.policy_version == 1 for done in finished)
        assert all(len(ray.get(done.ref).trajectories) == 4 for done in finished)
        # a duplicate of a group id already queued is refused, never counted twice
        duplicate = QueuedGroup(finished[0].ref, 1, finished[0].info.group_id)
        assert not ray.get(queue.put.remote(duplicate))
        assert ray.get(queue.stats.remote()).produced == 3
    finally:
        pool.shutdown()
