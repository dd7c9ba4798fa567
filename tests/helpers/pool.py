"""Reading a rollout pool and its actors' engines from a test."""

from __future__ import annotations

import os
import time

import psutil
import ray

from core.types import FinishedGroup
from zoomrl.rollout_pool import RolloutPool


def collect(pool: RolloutPool, count: int, timeout_s: float = 600.0) -> list[FinishedGroup]:
    finished, deadline = [], time.monotonic() + timeout_s
    while len(finished) < count and time.monotonic() < deadline:
        finished += pool.poll(timeout_s=1.0)
    return finished


def call(actor, fn):
    """fn(the actor's RolloutWorker), run in the actor."""
    return ray.get(actor.__ray_call__.remote(fn))


def engine_processes(actor) -> tuple[int, dict[str, psutil.Process]]:
    """The actor's PID and its vLLM processes by title (VLLM::EngineCore, VLLM::Worker...)."""
    pid = call(actor, lambda worker: os.getpid())
    titles = {}
    for child in psutil.Process(pid).children(recursive=True):
        title = " ".join(child.cmdline()).strip()
        if title.startswith("VLLM::"):
            titles[title] = child
    assert "VLLM::EngineCore" in titles, (pid, [(c.pid, c.cmdline()) for c in psutil.Process(pid).children()])
    return pid, titles


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for_a_group_in_flight(actor) -> None:
    deadline = time.monotonic() + 120
    while call(actor, lambda worker: worker.occupancy.live) == 0:
        assert time.monotonic() < deadline, "no trajectory started"
        time.sleep(0.2)
