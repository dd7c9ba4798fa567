"""async_vs_sync: GRPO steps per minute with queue.max_staleness 1 (rollout overlaps training) vs 0
(generate -> train -> sync), goal >= 2x, plus the pipeline view of every step and the groups each
run's queue dropped as stale (rollout work thrown away).

Both schedules run the real `zoomrl.driver.Driver` with the same config (batch, prompts, token
budgets, rollout actors and learner ranks); only queue.max_staleness differs. Runs interleave
(sync, async, sync, async, ...) so both see the same background load, and the ratio is given per
pair with its spread. Each run trains 1 warm-up step, --steps measured steps and 1 final step (its
tail has nothing to overlap with, and the run ends with a checkpoint), so a measured step is
always in steady state. Engine and learner start-up are excluded.

Per measured step (from the run's metrics.jsonl and `RolloutWorker.timing()` of every actor):
period = wall time since the previous step ended; learner busy = the update's wall time
(`learner_seconds`); rollout busy = time the busiest actor had trajectories in flight or was
loading weights; weight sync = publish + load in every engine (both sides wait on it); idle =
period - busy, per side; overlap efficiency = period / max(rollout busy, learner busy) (1.0: the
step takes only as long as its slower side; 2.0: the sides ran one after the other, equally long).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import ray
from omegaconf import OmegaConf

from bench.common import Result, spread
from core.config import Config
from zoomrl.cluster import start_ray

NAME = "async_vs_sync"
GOAL_SPEEDUP = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=2, help="sync/async run pairs, interleaved (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run (default 3)")
    parser.add_argument("--staleness", type=int, default=1, help="queue.max_staleness of the async runs")


def run_config(cfg: Config, staleness: int, steps: int, runs_dir: str) -> Config:
    """The run's config: the schedule, 1 + steps + 1 steps, a free metrics port, a scratch run dir."""
    in_flight = cfg.learner.prompts_per_step * (staleness + 1)
    return OmegaConf.merge(cfg, {
        "queue": {"max_staleness": staleness, "capacity_groups": max(cfg.queue.capacity_groups, in_flight)},
        "run": {"total_steps": steps + 2, "checkpoint_every": 0, "runs_dir": runs_dir,
                "name": f"bench-staleness{staleness}", "eval_every": 0},  # the schedule alone
        "metrics": {"port": 0}})


def _occupied(timing: dict) -> float:
    return timing["busy_s"] + timing["loading_weights_s"]


def pipeline(records: list[dict], samples: list[tuple[float, list[dict]]]) -> list[dict]:
    """Per measured step: period, busy and idle time of each side, overlap efficiency.

    records: metrics.jsonl lines; samples: (time, timing() of every actor) right after each step.
    """
    steps = []
    for k in range(1, len(records) - 1):  # records[0] is the warm-up, records[-1] the final step
        period = records[k]["time"] - records[k - 1]["time"]
        rollout = max(_occupied(after) - _occupied(before)
                      for after, before in zip(samples[k][1], samples[k - 1][1], strict=True))
        learner = records[k]["learner"]["learner_seconds"]
        steps.append({
            "step": records[k]["step"], "period_s": period, "rollout_busy_s": rollout,
            "learner_busy_s": learner, "weight_sync_s": records[k]["weight_sync_seconds"],
            "rollout_idle_s": max(period - rollout, 0.0), "learner_idle_s": max(period - learner, 0.0),
            "overlap_efficiency": period / max(rollout, learner, 1e-9),
            "policy_staleness": records[k]["policy_staleness"],
        })
    return steps


def one_run(cfg: Config, staleness: int, steps: int) -> dict:
    from zoomrl.driver import Driver
    from zoomrl.run_setup import new_run_dir

    runs_dir = tempfile.mkdtemp(prefix="zoomrl-bench-")
    cfg = run_config(cfg, staleness, steps, runs_dir)
    started = time.perf_counter()
    driver = Driver(cfg, new_run_dir(cfg))
    startup_s = time.perf_counter() - started
    samples: list[tuple[float, list[dict]]] = []

    def on_step(figures: dict) -> None:
        samples.append((time.perf_counter(), ray.get([a.timing.remote() for a in driver.pool.actors])))

    try:
        driver.run(on_step=on_step)
        lines = (driver.run_dir / "metrics.jsonl").read_text().splitlines()
        dropped = driver.dropped_groups
    finally:
        driver.close()
        shutil.rmtree(runs_dir, ignore_errors=True)
    records = [json.loads(line) for line in lines]
    per_step = pipeline(records, samples)
    measured_s = records[-2]["time"] - records[0]["time"]
    return {
        "max_staleness": staleness, "startup_s": startup_s, "measured_steps": len(per_step),
        "steps_per_minute": 60.0 * len(per_step) / measured_s,
        "rollout_tokens_per_s": spread([r["rollout_tokens_per_s"] for r in records[1:-1]]),
        "learner_tokens_per_s": spread([r["learner"]["learner_tokens_per_s"] for r in records[1:-1]]),
        "response_tokens": spread([r["response_tokens"] for r in records[1:-1]]),
        "overlap_efficiency": spread([s["overlap_efficiency"] for s in per_step]),
        "dropped_groups": dropped,
        "steps": per_step,
    }


def run(args: argparse.Namespace, cfg: Config) -> Result:
    start_ray(cfg)
    runs = []
    for _ in range(args.pairs):
        for staleness in (0, args.staleness):
            runs.append(one_run(cfg, staleness, args.steps))
            print(f"  max_staleness {staleness}: {runs[-1]['steps_per_minute']:.1f} steps/min, "
                  f"{runs[-1]['dropped_groups']} groups dropped as stale", flush=True)
    ratios = [a["steps_per_minute"] / s["steps_per_minute"]
              for s, a in zip(runs[0::2], runs[1::2], strict=True)]
    by_mode = {mode: [r for r in runs if r["max_staleness"] == staleness]
               for mode, staleness in (("sync", 0), ("async", args.staleness))}
    figures = {
        "ratio_async_over_sync": spread(ratios), "ratios": ratios,
        "steps_per_minute": {mode: spread([r["steps_per_minute"] for r in rs])
                             for mode, rs in by_mode.items()},
        "overlap_efficiency": {mode: spread([s["overlap_efficiency"] for r in rs for s in r["steps"]])
                               for mode, rs in by_mode.items()},
        "dropped_groups": {mode: sum(r["dropped_groups"] for r in rs) for mode, rs in by_mode.items()},
        "runs": runs,
    }
    ratio = figures["ratio_async_over_sync"]
    eff = figures["overlap_efficiency"]
    spm = figures["steps_per_minute"]
    met = "met" if ratio["median"] >= GOAL_SPEEDUP else "MISSED"
    summary = (f"steps/min sync {spm['sync']['median']:.1f}, async {spm['async']['median']:.1f}; "
               f"async/sync {ratio['median']:.2f}x (min {ratio['min']:.2f}, max {ratio['max']:.2f}, "
               f"{len(ratios)} pairs; goal >= {GOAL_SPEEDUP}: {met}); overlap efficiency sync "
               f"{eff['sync']['median']:.2f}, async {eff['async']['median']:.2f}; groups dropped as stale "
               f"sync {figures['dropped_groups']['sync']}, async {figures['dropped_groups']['async']}")
    notes = [f"rollout actors {cfg.rollout.num_workers} x {cfg.rollout.num_cpus_per_worker} CPU, learner "
             f"ranks {cfg.learner.num_ranks} x {cfg.learner.num_cpus_per_rank} CPU"]
    return Result(figures, summary, notes)
