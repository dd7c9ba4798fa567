"""rollout: tokens/s and trajectories/s of the iMCoT loop with 1 and 2 rollout actors (goal: >= 1.7x
with 2), time in tool tasks vs generation, and the share of engine time lost waiting on tools.

Real rollout actors (vLLM engine, iMCoT loop, tools and rewards as Ray tasks) through
`RolloutSession` (what `zoomrl rollout` and `zoomrl eval` use) on the first --prompts rows of
the training set, GROUPS_IN_FLIGHT_PER_ACTOR groups in flight per actor. A random policy almost
never writes a valid tool call, so by default the first turn of every trajectory is scripted to
zoom (`actors.forcing`, the engine still computes every token): each trajectory makes at least one
real crop, then samples freely. Engine start-up and one warm-up group per actor are excluded; the
clock runs from the first request to the last group. Per actor, `RolloutWorker.timing()` says how
long it had trajectories in flight (busy), and how long every one of them waited on a tool task
at once (all_in_tools: the engine had nothing to generate); lost share = all_in_tools / busy.

Each engine computes on a core of its own (rollout.engine.cpu_cores = one core per actor, unless
the config sets it; --no-pin leaves vLLM's own binding, which puts every engine on the same core).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import ray
from omegaconf import OmegaConf

from bench.common import Result
from core.config import Config
from zoomrl.cluster import start_ray

NAME = "rollout"
GOAL_SCALING = 1.7
FORCED_ZOOM = ('<think>The target is small; zoom in.</think><tool_call>{"name": "image_zoom_in_tool", '
               '"arguments": {"bbox_2d": [112, 112, 336, 336]}}</tool_call>')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="actor counts (default 1 2)")
    parser.add_argument("--prompts", type=int, default=8,
                        help="prompts (groups of rollout.n) per actor count")
    parser.add_argument("--free", action="store_true",
                        help="do not script the first turn to zoom (the policy decides alone)")
    parser.add_argument("--no-pin", action="store_true",
                        help="leave the engines on vLLM's own CPU binding (all on the same cores)")


def scripted(cfg: Config) -> Config:
    """The config with every trajectory's first turn forced to a zoom call."""
    return OmegaConf.merge(cfg, {"rollout": {
        "engine": {"logits_processors": ["actors.forcing:ForcedTurnsLogitsProcessor"]},
        "sampling_extra_args": {"forced_turns": [FORCED_ZOOM]}}})


def generate(cfg: Config, model_path: str, samples: list, workers: int) -> dict:
    from zoomrl.session import RolloutSession

    cfg = OmegaConf.merge(cfg, {"rollout": {"num_workers": workers}})
    with RolloutSession(cfg, model_path) as session:
        actors = session.pool.actors  # returns once every engine is up
        # one untimed group per actor first: warm engine paths and start the tool-task workers,
        # so neither actor count pays Ray's worker start-up inside the clock
        list(session.groups([samples[i % len(samples)] for i in range(workers)], f"warmup-{workers}"))
        before = ray.get([actor.timing.remote() for actor in actors])
        start = time.perf_counter()
        groups = list(session.groups(samples, f"bench-{workers}"))
        seconds = time.perf_counter() - start
        after = ray.get([actor.timing.remote() for actor in actors])
        startup_s = session.startup_s
    occupancy = {key: sum(a[key] - b[key] for a, b in zip(after, before, strict=True)) for key in after[0]}
    trajectories = [t for g in groups for t in g.trajectories]
    tokens = sum(t.num_sampled_tokens for t in trajectories)
    generate_s = sum(t.timing["generate"] for t in trajectories)
    tools_s = sum(t.timing["tools"] for t in trajectories)
    return {
        "workers": workers, "engine_startup_s": startup_s, "seconds": seconds,
        "trajectories": len(trajectories), "response_tokens": tokens,
        "tokens_per_s": tokens / seconds, "trajectories_per_s": len(trajectories) / seconds,
        "tool_calls_per_trajectory": float(np.mean([len(t.tool_calls) for t in trajectories])),
        "tool_errors": sum(not c.ok for t in trajectories for c in t.tool_calls),
        "end_reasons": {r: sum(t.end_reason == r for t in trajectories) for r in
                        sorted({t.end_reason for t in trajectories})},
        # per trajectory, summed: time awaiting the engine vs awaiting tool tasks
        "trajectory_generate_s": generate_s, "trajectory_tools_s": tools_s,
        "tools_share_of_trajectory_time": tools_s / max(generate_s + tools_s, 1e-9),
        "tool_task_s_per_call": occupancy["tool_s"] / max(occupancy["tool_calls"], 1),
        "actor_occupancy": occupancy,
        "engine_lost_to_tools_share": occupancy["all_in_tools_s"] / max(occupancy["busy_s"], 1e-9),
    }


def run(args: argparse.Namespace, cfg: Config) -> Result:
    from core.data import read_samples
    from zoomrl.run_setup import prepare_inputs

    if not args.free:
        cfg = scripted(cfg)
    if not args.no_pin and not cfg.rollout.engine.cpu_cores:
        cores = sorted(os.sched_getaffinity(0))
        cfg = OmegaConf.merge(cfg, {"rollout": {"engine": {"cpu_cores": [
            str(cores[i % len(cores)]) for i in range(max(args.workers))]}}})
    inputs = prepare_inputs(cfg)
    samples = read_samples(inputs.train_files, cfg.data.max_decoded_pixels)[: args.prompts]
    start_ray(OmegaConf.merge(cfg, {"rollout": {"num_workers": max(args.workers)}}))
    per_workers = [generate(cfg, inputs.model_path, samples, workers) for workers in args.workers]
    figures: dict = {"prompts": len(samples), "n": cfg.rollout.n, "scripted_first_zoom": not args.free,
                     "engine_cores": list(cfg.rollout.engine.cpu_cores), "by_workers": per_workers}
    parts = [f"{r['workers']} actor(s): {r['tokens_per_s']:.0f} tok/s, {r['trajectories_per_s']:.2f} traj/s, "
             f"tools {100 * r['tools_share_of_trajectory_time']:.0f}% of trajectory time, engine lost "
             f"{100 * r['engine_lost_to_tools_share']:.1f}%" for r in per_workers]
    by = {r["workers"]: r for r in per_workers}
    if 1 in by and 2 in by:
        figures["scaling_2_over_1"] = by[2]["tokens_per_s"] / by[1]["tokens_per_s"]
        met = "met" if figures["scaling_2_over_1"] >= GOAL_SCALING else "MISSED"
        parts.append(f"2/1 = {figures['scaling_2_over_1']:.2f}x (goal >= {GOAL_SCALING}: {met})")
    return Result(figures, "; ".join(parts))
