"""The rollout pool under weight updates and failures, on the real vLLM CPU engine (tiny model) in a
local Ray cluster. One pool of one actor for the module; each test leaves it taking requests.

- Weights that reach an actor late still come before the groups requested after them.
- Versions only go up; staged weights do not outlive their load.
- A killed engine core or a killed actor process: the actor is restarted with the current weights
  and its groups come back once, under their ids; a killed actor's engine dies with it.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import psutil
import pytest
import ray
from omegaconf import OmegaConf
from transformers import Qwen2_5_VLForConditionalGeneration

from core.data import read_samples
from core.tensors import pack
from core.types import FinishedGroup
from tests.helpers.pool import call, collect, engine_processes, gone, wait_for_a_group_in_flight
from zoomrl.queue import ReplayQueue
from zoomrl.rollout_pool import RolloutPool


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("staged-weights")


@pytest.fixture(scope="module")
def pool(ray_cluster, tiny_cfg, tiny_model_path, weights_dir):
    cfg = OmegaConf.merge(tiny_cfg, {"rollout": {"n": 4, "max_tokens_per_turn": 128, "seed": 0,
                                                 "engine": {"weights_dir": str(weights_dir)}}})
    pool = RolloutPool(cfg, tiny_model_path, num_workers=1)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def weights(tiny_model_path):
    """The tiny model's weights, packed as the learner publishes them."""
    return pack(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path).state_dict())


@pytest.fixture(scope="module")
def samples(synth_dir):
    return read_samples(str(synth_dir / "train.parquet"))[:3]


@ray.remote(num_cpus=0)
def arrive_late(weights, delay_s: float):
    """The weights, after delay_s: an object an actor call has to wait for, like a large one."""
    time.sleep(delay_s)
    return weights


VERSIONS = itertools.count(1)
"""Policy versions the module's tests publish, in order (the pool starts on version 0)."""


def check_each_once(finished: list[FinishedGroup], group_ids: list[str], version: int) -> None:
    """Every group came back once, under its id, from `version`; the queue takes each once."""
    assert sorted(done.group_id for done in finished) == sorted(group_ids)
    assert [done.policy_version for done in finished] == [version] * len(group_ids)
    assert all(len(ray.get(done.ref).trajectories) == 4 for done in finished)
    queue = ReplayQueue(8, 1)
    for done in finished:
        assert queue.put(done)
    # a duplicate of a group id already queued is refused, never counted twice
    assert not queue.put(finished[0])
    assert queue.stats().produced == len(group_ids)


def test_weights_that_arrive_late_still_come_before_the_groups_requested_after_them(pool, weights, samples):
    # Ray starts update_weights only once its argument is fetched; the generate_group calls sent
    # after it have theirs at once. Each request carries the version it needs, so they wait for it.
    version = next(VERSIONS)
    pool.update_weights(version, arrive_late.remote(weights, 5.0), wait=False)
    for i, sample in enumerate(samples[:2]):
        pool.submit(sample, f"late-{i}")
    finished = collect(pool, 2)
    assert sorted(done.group_id for done in finished) == ["late-0", "late-1"]
    assert [done.policy_version for done in finished] == [version, version]


def test_versions_only_go_up_and_staged_weights_do_not_outlive_their_load(pool, weights, weights_dir):
    version = next(VERSIONS)
    pool.update_weights(version, ray.put(weights))
    assert list(weights_dir.iterdir()) == []  # the staged copy of the model went with its load
    actor = pool.actors[0]
    loading_s = call(actor, lambda worker: worker.occupancy.loading_weights_s)
    assert ray.get(actor.update_weights.remote(version - 1, ray.put(weights))) == version  # late, older
    assert ray.get(actor.update_weights.remote(version, ray.put(weights))) == version  # already held
    assert call(actor, lambda worker: worker.occupancy.loading_weights_s) == loading_s  # nothing loaded


def test_a_killed_engine_core_restarts_the_actor_and_its_groups_come_back_once(pool, weights, samples):
    version = next(VERSIONS)
    pool.update_weights(version, ray.put(weights))
    actor, reissued = pool.actors[0], pool.reissued
    _, engine = engine_processes(actor)
    core = engine["VLLM::EngineCore"]
    group_ids = [f"dead-engine-{i}" for i in range(len(samples))]
    for sample, group_id in zip(samples, group_ids, strict=True):
        pool.submit(sample, group_id)
    wait_for_a_group_in_flight(actor)
    core.send_signal(signal.SIGKILL)
    finished = collect(pool, len(samples))
    check_each_once(finished, group_ids, version)
    assert pool.reissued > reissued
    assert engine_processes(pool.actors[0])[1]["VLLM::EngineCore"].pid != core.pid  # a new engine


def test_a_killed_actor_takes_its_engine_along_and_its_groups_come_back_once(pool, weights, samples):
    version = next(VERSIONS)
    pool.update_weights(version, ray.put(weights))
    actor, reissued = pool.actors[0], pool.reissued
    pid, engine = engine_processes(actor)
    group_ids = [f"dead-actor-{i}" for i in range(len(samples))]
    for sample, group_id in zip(samples, group_ids, strict=True):
        pool.submit(sample, group_id)
    wait_for_a_group_in_flight(actor)
    os.kill(pid, signal.SIGKILL)  # the process dies; Ray starts a new one
    deadline = time.monotonic() + 10
    while not all(gone(process) for process in engine.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {title: gone(process) for title, process in engine.items()} == dict.fromkeys(engine, True)
    finished = collect(pool, len(samples))
    check_each_once(finished, group_ids, version)
    assert pool.reissued > reissued


def test_engines_compute_on_the_cores_the_config_gives_them(ray_cluster, tiny_cfg, tiny_model_path):
    """rollout.engine.cpu_cores ['0', '1']: each actor's engine worker computes on its own core
    (vLLM's own binding would put both on one); a third actor shares the least used entry."""
    cfg = OmegaConf.merge(tiny_cfg, {"rollout": {"engine": {"cpu_cores": ["0", "1"]}}})
    pool = RolloutPool(cfg, tiny_model_path, num_workers=2)
    try:
        assert sorted(pool.cores[actor] for actor in pool.actors) == ["0", "1"]
        for actor in pool.actors:
            _, processes = engine_processes(actor)
            [worker] = [p for title, p in processes.items() if title.startswith("VLLM::Worker")]
            # the worker's compute threads (OpenMP) are bound to the entry's core
            bound = {tuple(thread.cpu_affinity()) for thread in
                     (psutil.Process(t.id) for t in worker.threads())}
            assert (int(pool.cores[actor]),) in bound, bound
        assert pool._free_cores() in ("0", "1")
    finally:
        pool.shutdown()
