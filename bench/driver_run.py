"""The training run the anatomy, async_vs_sync and vs_trl cases measure: the real
`zoomrl.driver.Driver` on one schedule for a few steps, with every process's spans, the end of
each step and the CPU seconds of each role, taken after every step.

A run trains 1 warm-up step, `steps` measured steps and 1 final step (its tail has nothing to
overlap with, and it ends with a checkpoint), so a measured step is always in steady state;
start-up (engines, ranks) is timed apart. The spans (core/spans.py) of the driver, of each rollout
actor and of each learner rank are taken after every step; the bench's own call for them is a
driver span ("bench: take spans") in the next step.

Memory: `bench.processes.tree_memory` of the whole tree after the last step. CPU seconds (user +
system, bench/processes.py) per role: "rollout" is every rollout actor's
process with its vLLM engine-core processes, "learner" every learner rank's, "all" the whole
process tree of this process: the driver, Ray's own processes, the actors, the ranks and the tool
and reward task workers (Ray was started by this process, so all of them descend from it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import ray
from omegaconf import OmegaConf

from bench.processes import cpu_seconds, tree_memory
from core.config import Config
from core.spans import Span


@dataclass
class ScheduleRun:
    """One run of the Driver on one schedule, as measured."""

    staleness: int
    startup_s: float
    lanes: dict[str, list[Span]] = field(default_factory=dict)
    """Spans by process: 'driver', 'rollout i', 'learner rank r'."""
    ends: list[float] = field(default_factory=list)
    """time.time() at the end of each step: the warm-up first, the final step last."""
    cpu: list[dict[str, float]] = field(default_factory=list)
    """CPU seconds so far per role ('rollout', 'learner', 'all') at each step's end."""
    dropped_groups: int = 0
    memory: dict = field(default_factory=dict)
    """bench.processes.tree_memory of this process's tree after the last step (every role alive)."""

    def periods(self) -> list[float]:
        """Wall seconds of each measured step (the final step left out)."""
        return [b - a for a, b in zip(self.ends[:-2], self.ends[1:-1], strict=True)]

    def cpu_per_step(self, role: str) -> list[float]:
        """CPU seconds of a role in each measured step."""
        return [b[role] - a[role] for a, b in zip(self.cpu[:-2], self.cpu[1:-1], strict=True)]


def run_config(cfg: Config, staleness: int, steps: int, runs_dir: str) -> Config:
    """The run's config: the schedule, 1 + steps + 1 steps, a free metrics port, a scratch run dir."""
    in_flight = cfg.learner.prompts_per_step * (staleness + 1)
    return OmegaConf.merge(cfg, {
        "queue": {"max_staleness": staleness, "capacity_groups": max(cfg.queue.capacity_groups, in_flight)},
        "run": {"total_steps": steps + 2, "checkpoint_every": 0, "runs_dir": runs_dir,
                "name": f"bench-staleness{staleness}", "eval_every": 0},  # the schedule alone
        "metrics": {"port": 0}})


def _pid(actor: ray.actor.ActorHandle) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def run_schedule(cfg: Config, staleness: int, steps: int) -> ScheduleRun:
    """Train 1 + steps + 1 steps at queue.max_staleness `staleness`, measuring after every step."""
    from zoomrl.driver import Driver
    from zoomrl.run_setup import new_run_dir

    runs_dir = tempfile.mkdtemp(prefix="zoomrl-bench-")
    cfg = run_config(cfg, staleness, steps, runs_dir)
    started = time.perf_counter()
    driver = Driver(cfg, new_run_dir(cfg))
    run = ScheduleRun(staleness, startup_s=time.perf_counter() - started, lanes={"driver": []})
    actors, ranks = driver.pool.actors, driver.learner.workers
    pids = {"rollout": [_pid(a) for a in actors], "learner": [_pid(w) for w in ranks]}

    def measure(figures: dict) -> None:
        run.ends.append(time.time())
        with driver.spans.span("bench: take spans"):
            taken = ray.get([a.take_spans.remote() for a in actors] + [w.take_spans.remote() for w in ranks])
            run.cpu.append({role: sum(cpu_seconds(pid) for pid in found) for role, found in pids.items()}
                           | {"all": cpu_seconds(os.getpid())})
        run.lanes["driver"] += driver.spans.take()
        for i, spans in enumerate(taken[:len(actors)]):
            run.lanes.setdefault(f"rollout {i}", []).extend(spans)
        for rank, spans in enumerate(taken[len(actors):]):
            run.lanes.setdefault(f"learner rank {rank}", []).extend(spans)

    try:
        driver.spans.take()  # start-up is not a step
        driver.run(on_step=measure)
        run.dropped_groups = driver.queue.dropped
        run.memory = tree_memory(os.getpid())
    finally:
        driver.close()
        shutil.rmtree(runs_dir, ignore_errors=True)
    return run
