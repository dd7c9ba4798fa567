"""anatomy: where a step's wall time goes, from the spans every process records about its own work.

The real `zoomrl.driver.Driver` trains --steps synchronous steps (queue.max_staleness 0) and then
--steps asynchronous ones (1), each run with a warm-up step before and a final step after
(bench/driver_run.py, shared with async_vs_sync and vs_trl). After every step it takes the spans
(core/spans.py) of the driver, of every rollout actor and of every learner rank; a step is the
wall time from the end of the previous step to the end of this one.

Per measured step and per process (lane), the seconds of each span name inside the step (spans of
one name that overlap, such as the groups or tool calls an actor has in flight at once, count
once: their union), and the lane's busy time (the union of all its spans). The driver's spans
cover its whole loop (control, request, wait for groups, update, publish, log, checkpoint), so
their sum is the step: `explained` is that sum over the step time (goal >= 0.95). The update is
split further: the learner ranks' own spans (check, collate, forward_backward, optimizer) against
the driver's wait for it; what is left is the hop to the ranks and back and the reduction of the
figures (`update_outside_ranks_s`).

Not in the lanes yet: the tool and reward tasks' own processes (an actor's `tool` and `reward`
spans are its waits on them, task start-up and transfer included), and vLLM's engine-core process
(inside an actor's `generate` spans).

Writes the JSON and a PNG timeline (one lane per process, the last measured steps of each
schedule) beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS_DIR, Result, spread
from bench.driver_run import run_schedule
from core.config import Config
from core.spans import Span
from zoomrl.cluster import start_ray

NAME = "anatomy"
GOAL_EXPLAINED = 0.95
SCHEDULES = {"sync": 0, "async": 1}
"""Schedule name -> queue.max_staleness."""
UPDATE_SPANS = ("check", "collate", "forward_backward", "optimizer")
"""A learner rank's spans of one update (learner/worker.py)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=4, help="measured steps per schedule (default 4)")
    parser.add_argument("--timeline-steps", type=int, default=2,
                        help="measured steps drawn per schedule in the PNG (default 2)")


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the intervals (overlaps counted once)."""
    covered, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


def lane_figures(spans: list[Span], start: float, end: float) -> dict:
    """Seconds per span name inside [start, end] (a union per name), and busy: the union of all."""
    inside = [(span.name, max(span.start, start), min(span.end, end)) for span in spans
              if span.end > start and span.start < end]
    names = sorted({name for name, _, _ in inside})
    by_name = {name: union_seconds([(a, b) for n, a, b in inside if n == name]) for name in names}
    return {"seconds": by_name, "busy_s": union_seconds([(a, b) for _, a, b in inside])}


def anatomy(lanes: dict[str, list[Span]], ends: list[float]) -> list[dict]:
    """Per step k >= 1 (the window ends[k-1]..ends[k]): every lane's figures, and the driver's
    explained share and the update's split."""
    steps = []
    for k in range(1, len(ends)):
        start, end = ends[k - 1], ends[k]
        per_lane = {lane: lane_figures(spans, start, end) for lane, spans in lanes.items()}
        driver = per_lane["driver"]
        rank0 = per_lane["learner rank 0"]["seconds"]
        in_ranks = sum(rank0.get(name, 0.0) for name in UPDATE_SPANS)
        update = driver["seconds"].get("update", 0.0)
        steps.append({"step_s": end - start, "explained": sum(driver["seconds"].values()) / (end - start),
                      "update_s": update, "update_in_ranks_s": in_ranks,
                      "update_outside_ranks_s": update - in_ranks, "lanes": per_lane})
    return steps


def summarize(steps: list[dict]) -> dict:
    """Over the measured steps (the final one left out: it ends the run with a checkpoint): step
    time, explained share, the update outside the ranks, and each lane's busy time and span
    seconds (a span name absent from a step counts 0 there)."""
    measured = steps[:-1]
    lanes = {}
    for lane in sorted({lane for step in measured for lane in step["lanes"]}):
        figures = [step["lanes"][lane] for step in measured]
        names = sorted({name for f in figures for name in f["seconds"]})
        lanes[lane] = {"busy_s": spread([f["busy_s"] for f in figures]),
                       "seconds": {name: spread([f["seconds"].get(name, 0.0) for f in figures])
                                   for name in names}}
    return {"step_s": spread([s["step_s"] for s in measured]),
            "explained": spread([s["explained"] for s in measured]),
            "update_outside_ranks_s": spread([s["update_outside_ranks_s"] for s in measured]),
            "lanes": lanes}


def draw(path: Path, runs: dict[str, tuple[dict[str, list[Span]], list[float]]], last: int) -> None:
    """One panel per schedule: the last `last` measured steps, one lane per process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({s.name for lanes, _ in runs.values() for spans in lanes.values() for s in spans})
    colour = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    rows = max(len(lanes) for lanes, _ in runs.values())
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 1.5 + 0.8 * rows * len(runs)), squeeze=False)
    for ax, (schedule, (lanes, ends)) in zip(axes[:, 0], runs.items(), strict=True):
        start, end = ends[-2 - last], ends[-2]  # the final step is left out
        order = sorted(lanes, key=lambda lane: (lane != "driver", lane))
        for row, lane in enumerate(order):
            for span in lanes[lane]:
                left, right = max(span.start, start), min(span.end, end)
                if right > left:
                    ax.broken_barh([(left - start, right - left)], (row - 0.4, 0.8), color=colour[span.name],
                                   alpha=0.6, linewidth=0)
        for step_end in ends:
            if start < step_end <= end:
                ax.axvline(step_end - start, color="black", linewidth=0.8, linestyle="--")
        ax.set_yticks(range(len(order)), order)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title(f"{schedule} (queue.max_staleness {SCHEDULES[schedule]}), {last} steps, ends dashed")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[name], alpha=0.6) for name in names]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace, cfg: Config) -> Result:
    start_ray(cfg)
    out = Path(args.out or RESULTS_DIR / f"{NAME}.json")
    runs, figures = {}, {}
    for schedule, staleness in SCHEDULES.items():
        measured = run_schedule(cfg, staleness, args.steps)
        runs[schedule] = (measured.lanes, measured.ends)
        steps = anatomy(measured.lanes, measured.ends)
        figures[schedule] = summarize(steps) | {"steps": steps}
        print(f"  {schedule}: step {figures[schedule]['step_s']['median']:.2f}s, explained "
              f"{figures[schedule]['explained']['min']:.3f} (min)", flush=True)
    figure = out.with_suffix(".png")
    draw(figure, runs, min(args.timeline_steps, args.steps))
    figures["figure"] = str(figure)
    worst = min(figures[s]["explained"]["min"] for s in SCHEDULES)
    parts = []
    for schedule in SCHEDULES:
        driver = figures[schedule]["lanes"]["driver"]["seconds"]
        top = sorted(driver, key=lambda n: -driver[n]["median"])[:3]
        parts.append(f"{schedule} step {figures[schedule]['step_s']['median']:.2f}s = "
                     + " + ".join(f"{name} {driver[name]['median']:.2f}" for name in top) + " + ...")
    met = "met" if worst >= GOAL_EXPLAINED else "MISSED"
    summary = "; ".join(parts) + (f"; the driver's spans explain >= {100 * worst:.1f}% of every step "
                                  f"(goal >= {100 * GOAL_EXPLAINED:.0f}%: {met})")
    notes = ["lanes: the driver, each rollout actor, each learner rank; tool/reward task processes and "
             "vLLM's engine-core process are inside the actors' tool/reward/generate spans",
             json.dumps({"rollout_actors": cfg.rollout.num_workers, "learner_ranks": cfg.learner.num_ranks})]
    return Result(figures, summary, notes)
