"""The broadcast weight sync's CPU twin (`weight_sync.method: gloo`), driven as a run drives it:
two learner ranks (Ray actors, FSDP2 over gloo), a rollout pool of real vLLM CPU engines, and a
resize in the middle, then a restart. The pool broadcasts each version to every engine; an
actor that comes up (or back) is sent the current version at once (a new generation of the group,
every engine receiving it again) before it takes a request; requests carry the version only and
start on it. After each sync every engine serves the learner's weights: its log-probs are
transformers' with the learner's full state dict, and not the version before's."""

from __future__ import annotations

import os
import signal

import numpy as np
import ray

from core.config import load_config
from core.data import read_samples
from learner.ranks import LearnerGroup
from tests.helpers.hf import hf_logprobs, hf_model
from tests.helpers.learner import full_state, on_ranks
from tests.helpers.pool import collect, engine_processes, wait_for_a_group_in_flight
from tests.helpers.trajectories import make_groups
from zoomrl.broadcast_sync import BroadcastSync
from zoomrl.rollout_pool import RolloutPool

OVERRIDES = [
    "learner.num_ranks=2", "learner.num_gpus_per_rank=0", "learner.num_cpus_per_rank=1",
    "learner.lr=0.02",  # a first AdamW step moves every weight by about lr: versions far apart
    "weight_sync.method=gloo", "weight_sync.bucket_mib=1", "weight_sync.timeout_s=300",
    # half a CPU per actor: two learner ranks and two actors leave one of the cluster's 4 to the
    # tool and reward tasks the actors start
    "rollout.num_cpus_per_worker=0.5", "rollout.n=2", "rollout.seed=0", "rollout.max_tokens_per_turn=24",
]


def served_groups(pool: RolloutPool, sample, version: int) -> list:
    """One group per actor (the pool sends each request to the least busy one), on `version`."""
    for index in range(len(pool.actors)):
        pool.submit(sample, f"v{version}-{index}")
    finished = []
    while len(finished) < len(pool.actors):
        finished += pool.poll(timeout_s=60)
    assert {f.policy_version for f in finished} == {version}
    return [ray.get(f.ref) for f in finished]


def test_every_engine_serves_the_learners_weights_through_a_resize(ray_cluster, tiny_model_path, synth_dir):
    cfg = load_config("tiny-cpu", OVERRIDES)
    sample = read_samples(str(synth_dir / "train.parquet"))[0]
    groups = make_groups(tiny_model_path, num_groups=2, n=4, seed=0)
    learner = LearnerGroup(cfg, tiny_model_path)
    sync = BroadcastSync(cfg, learner)
    pool = RolloutPool(cfg, tiny_model_path, 1, broadcast=sync)
    before = hf_model(tiny_model_path)  # what the engines start with
    try:
        for version in (1, 2, 3):
            if version == 2:  # the resize: the newcomer gets version 1 before any request
                pool.resize(2)
                pool.wait_started()
                assert sync.generation == 2
                assert ray.get([actor.ready.remote() for actor in pool.actors]) == [1, 1]
            learner.train_step([ray.put(g) for g in groups], [g.summary() for g in groups])
            pool.broadcast_weights(version)
            assert sync.generation == min(version, 2)  # a new group when the actors changed, only then
            weights = on_ranks(learner.workers, full_state)[0][0]  # collective
            served = hf_model(tiny_model_path, weights)
            assert ray.get([actor.ready.remote() for actor in pool.actors]) == [version] * len(pool.actors)
            for group in served_groups(pool, sample, version):
                for traj in group.trajectories:
                    sampled = np.flatnonzero(traj.loss_mask == 1)
                    engine = traj.behavior_logprobs[sampled]
                    error = np.abs(engine - hf_logprobs(tiny_model_path, cfg, traj, served)[sampled])
                    stale = np.abs(engine - hf_logprobs(tiny_model_path, cfg, traj, before)[sampled])
                    # Measured (lr 0.02: versions 0.6 nats apart): version 1 within the bound of
                    # test_rollout_vllm (mean < 0.2 x stale, max < 0.2); version 2: 0.068 mean, 0.33
                    # max against 0.60 stale. The residual on image prompts that grows with the
                    # weights' distance from the start-up ones, the object-store route's too
                    # (docs/cluster.md), not explained yet; text-only prompts are exact
                    # (tests/integration/test_collective_transfer.py).
                    assert error.mean() < 0.2 * stale.mean() and error.max() < 0.5, (
                        version, group.group_id, error.mean(), error.max(), stale.mean())
            before = served

        # A restart: an actor's process dies with groups in flight. The pool waits for Ray to
        # start it again, forms a new generation with it, broadcasts version 3 once more, and
        # requests its groups again, under the same ids, on version 3.
        victim = pool.actors[1]
        pid, _ = engine_processes(victim)
        group_ids = [f"restart-{i}" for i in range(4)]  # two per actor
        for group_id in group_ids:
            pool.submit(sample, group_id)
        wait_for_a_group_in_flight(victim)
        os.kill(pid, signal.SIGKILL)
        finished = collect(pool, len(group_ids))
        assert sorted(f.group_id for f in finished) == group_ids
        assert {f.policy_version for f in finished} == {3}
        assert pool.reissued >= 1 and sync.generation == 3
        assert ray.get([actor.ready.remote() for actor in pool.actors]) == [3, 3]
    finally:
        pool.shutdown()
        learner.shutdown()
