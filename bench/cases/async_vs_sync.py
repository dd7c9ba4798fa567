"""async_vs_sync: GRPO steps per minute with queue.max_staleness 1 (rollout overlaps training) vs 0
(generate -> train -> sync), goal >= 2x, against the ceiling this machine allows (goal: async
reaches >= 90% of it), plus the pipeline view of every step and the groups each run's queue
dropped as stale (rollout work thrown away).

Both schedules run the real `zoomrl.driver.Driver` (bench/driver_run.py: 1 warm-up step, --steps
measured, 1 final) with the same config; only queue.max_staleness differs. Runs interleave (sync,
async, sync, async, ...) so both see the same background load, and the ratio is given per pair
with its spread. Engine and learner start-up are excluded.

Per measured step, from the spans every process records (core/spans.py): period = wall time since
the previous step ended; rollout busy = the busiest rollout actor's time inside any of its spans
(decode, generate, tool, reward, weights); learner busy = the busiest rank's (check, collate,
forward_backward, optimizer, publish); idle = period - busy, per side; overlap efficiency =
period / max(rollout busy, learner busy) (1.0: the step takes only as long as its slower side;
2.0: the sides ran one after the other, equally long); CPU seconds per role (bench/processes.py).

The ceiling: on a machine whose cores the two sides share, overlapping cannot beat 2x; it can only
fill what the synchronous schedule leaves idle. From each synchronous run's measured figures, the
shortest period any schedule could reach is max(busy core-seconds / cores, the longest side's own
busy time), a side's busy core-seconds being its busy time x the cores it was given (`ceiling`
says why not the CPU seconds its processes spent); ceiling = synchronous period / that. The async
speed-up is reported as a share of the ceiling of its pair.
"""

from __future__ import annotations

import argparse
import os

from bench.cases.anatomy import lane_figures
from bench.common import Result, spread
from bench.driver_run import ScheduleRun, run_schedule
from core.config import Config
from zoomrl.cluster import start_ray

NAME = "async_vs_sync"
GOAL_SPEEDUP = 2.0
GOAL_SHARE_OF_CEILING = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=2, help="sync/async run pairs, interleaved (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run (default 3)")
    parser.add_argument("--staleness", type=int, default=1, help="queue.max_staleness of the async runs")


def _busiest(run: ScheduleRun, prefix: str, start: float, end: float) -> float:
    return max(lane_figures(spans, start, end)["busy_s"] for lane, spans in run.lanes.items()
               if lane.startswith(prefix))


def pipeline(run: ScheduleRun) -> list[dict]:
    """Per measured step: period, busy and idle time of each side, overlap efficiency, CPU seconds."""
    steps = []
    cpu = {role: run.cpu_per_step(role) for role in ("rollout", "learner", "all")}
    for k, period in enumerate(run.periods()):
        start, end = run.ends[k], run.ends[k + 1]
        rollout, learner = _busiest(run, "rollout", start, end), _busiest(run, "learner", start, end)
        steps.append({
            "period_s": period, "rollout_busy_s": rollout, "learner_busy_s": learner,
            "rollout_idle_s": max(period - rollout, 0.0), "learner_idle_s": max(period - learner, 0.0),
            "overlap_efficiency": period / max(rollout, learner, 1e-9),
            "cpu_s": {role: seconds[k] for role, seconds in cpu.items()},
        })
    return steps


def summarize(run: ScheduleRun) -> dict:
    """A run's figures: steps per minute, period and overlap spreads, dropped groups, memory, steps."""
    per_step = pipeline(run)
    return {
        "max_staleness": run.staleness, "startup_s": run.startup_s, "measured_steps": len(per_step),
        "steps_per_minute": 60.0 * len(per_step) / sum(run.periods()),
        "period_s": spread(run.periods()),
        "overlap_efficiency": spread([s["overlap_efficiency"] for s in per_step]),
        "dropped_groups": run.dropped_groups, "memory": run.memory,
        "steps": per_step,
    }


def ceiling(sync: dict, cores: int, role_cores: dict[str, float]) -> dict:
    """The most an overlapping schedule could gain over this synchronous run on `cores` cores.

    A role's core-seconds per step: its busy time x the cores it was given (Ray's CPU reservation:
    rollout.num_workers x num_cpus_per_worker, learner.num_ranks x num_cpus_per_rank). Not the
    CPU seconds the processes spent: vLLM's engine-core and worker processes poll each other in a
    loop that yields the core (shm_broadcast's SpinCondition, 1 s after each message, no setting),
    so the rollout side spends about 2 CPU seconds per busy second here whether or not another
    role needs that core; the ceiling those seconds would give is reported beside it
    (`speedup_from_cpu_s`: period / max(CPU seconds / cores, the longest side)).
    """
    def median(key: str, role: str = "") -> float:
        return spread([s[key][role] if role else s[key] for s in sync["steps"]])["median"]

    period = median("period_s")
    busy = {role: median(f"{role}_busy_s") for role in role_cores}
    core_seconds = sum(busy[role] * role_cores[role] for role in role_cores)
    longest = max(busy.values())
    best = max(core_seconds / cores, longest)
    cpu = median("cpu_s", "all")
    return {"sync_period_s": period, "busy_s": busy, "role_cores": role_cores,
            "busy_core_seconds": core_seconds, "cpu_s": cpu, "cores": cores,
            "longest_side_s": longest, "best_period_s": best,
            "bound_by": "cores" if core_seconds / cores >= longest else "the longest side",
            "speedup": period / best, "speedup_from_cpu_s": period / max(cpu / cores, longest)}


def run(args: argparse.Namespace, cfg: Config) -> Result:
    start_ray(cfg)
    cores = len(os.sched_getaffinity(0))
    role_cores = {"rollout": cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker,
                  "learner": cfg.learner.num_ranks * cfg.learner.num_cpus_per_rank}
    runs = []
    for _ in range(args.pairs):
        for staleness in (0, args.staleness):
            runs.append(summarize(run_schedule(cfg, staleness, args.steps)))
            print(f"  max_staleness {staleness}: {runs[-1]['steps_per_minute']:.1f} steps/min, "
                  f"{runs[-1]['dropped_groups']} groups dropped as stale", flush=True)
    pairs = []
    for sync, async_ in zip(runs[0::2], runs[1::2], strict=True):
        speedup = async_["steps_per_minute"] / sync["steps_per_minute"]
        bound = ceiling(sync, cores, role_cores)
        pairs.append({"speedup": speedup, "ceiling": bound, "share_of_ceiling": speedup / bound["speedup"]})
    by_mode = {mode: [r for r in runs if r["max_staleness"] == staleness]
               for mode, staleness in (("sync", 0), ("async", args.staleness))}
    figures = {
        "ratio_async_over_sync": spread([p["speedup"] for p in pairs]),
        "ceiling": spread([p["ceiling"]["speedup"] for p in pairs]),
        "share_of_ceiling": spread([p["share_of_ceiling"] for p in pairs]),
        "pairs": pairs,
        "steps_per_minute": {mode: spread([r["steps_per_minute"] for r in rs])
                             for mode, rs in by_mode.items()},
        "overlap_efficiency": {mode: spread([s["overlap_efficiency"] for r in rs for s in r["steps"]])
                               for mode, rs in by_mode.items()},
        "cpu_s_per_step": {mode: {role: spread([s["cpu_s"][role] for r in rs for s in r["steps"]])
                                  for role in ("rollout", "learner", "all")} for mode, rs in by_mode.items()},
        "dropped_groups": {mode: sum(r["dropped_groups"] for r in rs) for mode, rs in by_mode.items()},
        "runs": runs,
    }
    ratio, share = figures["ratio_async_over_sync"], figures["share_of_ceiling"]
    eff, spm = figures["overlap_efficiency"], figures["steps_per_minute"]
    met = "met" if ratio["median"] >= GOAL_SPEEDUP else "MISSED"
    met_share = "met" if share["median"] >= GOAL_SHARE_OF_CEILING else "MISSED"
    summary = (f"steps/min sync {spm['sync']['median']:.1f}, async {spm['async']['median']:.1f}; "
               f"async/sync {ratio['median']:.2f}x (min {ratio['min']:.2f}, max {ratio['max']:.2f}, "
               f"{len(pairs)} pairs; goal >= {GOAL_SPEEDUP}: {met}); ceiling on {cores} cores "
               f"{figures['ceiling']['median']:.2f}x, async reached {100 * share['median']:.0f}% of it "
               f"(goal >= {100 * GOAL_SHARE_OF_CEILING:.0f}%: {met_share}); overlap efficiency sync "
               f"{eff['sync']['median']:.2f}, async {eff['async']['median']:.2f}; groups dropped as stale "
               f"sync {figures['dropped_groups']['sync']}, async {figures['dropped_groups']['async']}")
    notes = [f"rollout actors {cfg.rollout.num_workers} x {cfg.rollout.num_cpus_per_worker} CPU, learner "
             f"ranks {cfg.learner.num_ranks} x {cfg.learner.num_cpus_per_rank} CPU, {cores} cores"]
    return Result(figures, summary, notes)
