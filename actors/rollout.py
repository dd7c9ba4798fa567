"""The rollout worker: one engine, turning prompts into scored groups, and taking new weights.

`RolloutWorker` is a plain class (tests drive it directly); `RolloutActor` is the same class as
an async Ray actor. All trajectories of all groups an actor was given are in flight at once:
Ray runs each `generate_group` call as a coroutine, each starts `rollout.n` trajectory
coroutines, and the engine batches their turns.

Weight updates and in-flight work: trajectories FINISH ON THE OLD WEIGHTS. A load stops new
groups from starting, waits until the groups in flight are done, loads the weights, then lets
the waiting groups start on the new version. Every token of a trajectory therefore comes from
the one `policy_version` it is stamped with, which keeps behaviour log-probs and staleness exact;
the price is that an update waits for the longest group in flight.

Versions only go up, and a group request carries the version it needs. Ray starts an async
actor's call only once its arguments are fetched, so an `update_weights(version, weights)` whose
weights are still on their way starts AFTER `generate_group` calls sent behind it; those groups
would run on the old weights and be dropped as stale. So each request carries the policy the
pool last sent (`PolicyWeights`: the version and a reference to its weights, which Ray passes on
unfetched), and a group starts only on that version or a newer one: the actor loads it from the
reference itself when no load got there first. An `update_weights` of a version the actor
already holds or has passed is ignored. This also covers an actor that Ray restarted while it
held no group: its first request brings it the current weights.

Under the broadcast weight sync (`weight_sync.method: nccl | gloo`) a request carries the version
only (`PolicyWeights.ref` None): the weights come in `receive_weights`, sent to every engine at
once, and the group waits until the actor holds that version.

A dead engine ends the actor's process as a crash (exit status 1), so Ray restarts it
(max_restarts) and the pool re-issues its groups; see `_engine_death_is_fatal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np
import ray
import torch
from omegaconf import OmegaConf

from actors.engine import VLLMEngine
from actors.imcot import Engine, run_trajectory
from core.config import Config
from core.images import decode_image
from core.metrics import RayMetrics
from core.spans import Span, SpanLog
from core.tensors import PackedTensors, unpack
from core.types import Group, GroupSummary, Sample, Trajectory
from core.weight_group import GroupSpec, TensorSpec
from rewards import score_group, score_group_task
from tools import ImageView, ToolCall, ToolOutcome, execute_tool, execute_tool_task, initial_view

# Figures each rollout actor reports per group through ray.util.metrics (tagged with the actor).
ACTOR_METRICS = ["rollout_tokens_per_s", "accuracy", "reward_mean", "response_tokens",
                 "tool_calls_per_trajectory"]


@dataclass(frozen=True)
class PolicyWeights:
    """A policy version and where its weights are: the least a group request needs."""

    version: int
    ref: ray.ObjectRef | None
    """ObjectRef of the weights (`core.tensors.WeightsRef.ref`: the list of the ranks' parts'
    ObjectRefs). Inside this record Ray passes it on unfetched: the call does not wait for it, and
    the actor fetches it only to load it itself. None under the broadcast weight sync: the version
    comes through `receive_weights`, and the group waits for it."""


@dataclass(frozen=True)
class Sampling:
    """How a request samples, when not as the actor's config says: `zoomrl eval`'s greedy single
    answers for validation requests while training requests of the same actors keep rollout.n and
    rollout.temperature."""

    n: int
    """Trajectories of the group (replaces rollout.n)."""
    temperature: float
    """Sampling temperature (replaces rollout.temperature); 0 = greedy."""

    def apply(self, cfg: Config) -> Config:
        """`cfg` with rollout.n and rollout.temperature replaced."""
        return OmegaConf.merge(cfg, {"rollout": {"n": self.n, "temperature": self.temperature}})


class Occupancy:
    """Where a rollout actor's time went, for the pipeline figures (cumulative seconds).

    busy: at least one trajectory in flight. all_in_tools: trajectories in flight, and every one
    of them waiting on a tool task, so the engine had nothing to generate. loading_weights: loading
    new weights, after the groups in flight finished; weights_fetch: reading them from the object
    store before that; weights_<phase>: the engine's phases of the load (see
    VLLMEngine.load_weights). One event loop runs the actor's coroutines, so plain counters suffice.
    """

    def __init__(self) -> None:
        self.live = self.in_tools = self.tool_calls = 0
        self.busy_s = self.all_in_tools_s = self.tool_s = self.loading_weights_s = 0.0
        self.weights_fetch_s = 0.0
        self.weights_phases_s: dict[str, float] = {}
        self._since = time.perf_counter()

    def change(self, live: int = 0, in_tools: int = 0) -> None:
        """Account the time since the last change, then apply this one."""
        now = time.perf_counter()
        if self.live:
            self.busy_s += now - self._since
            if self.in_tools == self.live:
                self.all_in_tools_s += now - self._since
        self.tool_s += self.in_tools * (now - self._since)
        self.tool_calls += max(in_tools, 0)
        self.live, self.in_tools, self._since = self.live + live, self.in_tools + in_tools, now

    def figures(self) -> dict[str, float]:
        self.change()
        return {"busy_s": self.busy_s, "all_in_tools_s": self.all_in_tools_s, "tool_s": self.tool_s,
                "tool_calls": float(self.tool_calls), "loading_weights_s": self.loading_weights_s,
                "weights_fetch_s": self.weights_fetch_s} | {
                    f"weights_{phase}": seconds for phase, seconds in self.weights_phases_s.items()}


class RolloutWorker:
    """One generation engine and the iMCoT loop over it.

    use_ray_tasks: run tools, and rewards that ask the judge, as Ray tasks (the design); False runs
    them in-process. Rewards by rules alone are always scored in-process.
    """

    def __init__(self, cfg: Config, model_path: str, engine: Engine | None = None,
                 use_ray_tasks: bool = True, cpu_cores: str = "") -> None:
        """engine: None starts a VLLMEngine (on `cpu_cores`, see rollout.engine.cpu_cores)."""
        self.cfg = cfg
        self.engine = engine if engine is not None else VLLMEngine(model_path, cfg, cpu_cores)
        self.use_ray_tasks = use_ray_tasks
        self.policy_version = 0
        self._groups_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = asyncio.Event()
        self._accepting.set()
        self._update_lock = asyncio.Lock()
        self._version_loaded = asyncio.Condition()
        """Notified each time policy_version goes up (groups waiting for a broadcast version)."""
        self._metrics = RayMetrics(ACTOR_METRICS, tag_keys=("actor",)) if use_ray_tasks else None
        self.occupancy = Occupancy()
        self.spans = SpanLog()
        """decode images / generate / tool / reward per group and call, the weight loads' phases
        (bench anatomy)."""

    # Two results: the small GroupSummary the driver reads, and the Group, which stays in the object
    # store (owned by the caller, so it outlives this actor) until the learner fetches it.
    @ray.method(num_returns=2)
    async def generate_group(self, sample: Sample, group_id: str, policy: PolicyWeights | None = None,
                             sampling: Sampling | None = None) -> tuple[GroupSummary, Group]:
        """rollout.n trajectories of one prompt, scored as a group (by a reward task when a judge
        may be asked).

        policy: the group runs on this version or a newer one (loaded from `policy.ref` if no
        update brought it yet, waited for if the ref is None: a broadcast brings it); None runs it
        on whatever is loaded. The images are decoded first, while the weights load: decoding needs
        none. sampling: this group's n and temperature, None = the config's.
        """
        with self._engine_death_is_fatal():
            with self.spans.span("decode images"):  # in a thread: the loop goes on feeding the engine
                views = await asyncio.to_thread(self._initial_views, sample)
            if policy is not None and policy.ref is None:
                async with self._version_loaded:
                    await self._version_loaded.wait_for(lambda: self.policy_version >= policy.version)
            elif policy is not None:
                await self._load(policy.version, policy.ref)
            await self._accepting.wait()
            self._groups_in_flight += 1
            self._idle.clear()
            try:
                return await self._generate_group(sample, views, group_id, sampling)
            finally:
                self._groups_in_flight -= 1
                if self._groups_in_flight == 0:
                    self._idle.set()

    async def update_weights(self, version: int,
                             weights: list[ray.ObjectRef] | PackedTensors | dict[str, torch.Tensor]) -> int:
        """Load weights of policy `version` (HF names) unless this version or a newer one is loaded
        already; returns the version now loaded. weights: as the learner publishes them (the
        ObjectRefs of every rank's part, `core.tensors.RankShards`; read from the object store without a
        copy), packed, or a plain state dict."""
        with self._engine_death_is_fatal():
            await self._load(version, weights)
        return self.policy_version

    async def _load(self, version: int, weights: ray.ObjectRef | list[ray.ObjectRef] | PackedTensors
                    | dict[str, torch.Tensor]) -> None:
        """Hold `version` or a newer one when this returns; groups in flight finish first."""
        async with self._update_lock:  # a load in progress may be this version: wait for it
            if version <= self.policy_version:
                return
            start = time.perf_counter()
            with self.spans.span("weights fetch"):
                if isinstance(weights, ray.ObjectRef):  # a published WeightsRef.ref: the parts' refs
                    weights = await weights
                if isinstance(weights, list):
                    weights = list(await asyncio.gather(*weights))
                if isinstance(weights, PackedTensors):
                    weights = unpack(weights)
            self.occupancy.weights_fetch_s += time.perf_counter() - start
            await self._between_groups(lambda: self.engine.load_weights(weights))
            await self._now_holds(version)

    async def join_weight_group(self, spec: GroupSpec, rank_offset: int) -> None:
        """Join one generation of the broadcast weight-sync group (`weight_sync.method: nccl |
        gloo`, zoomrl/broadcast_sync.py) as ranks rank_offset.. (one per engine worker)."""
        with self._engine_death_is_fatal():
            await self.engine.join_weight_group(spec, rank_offset)

    async def receive_weights(self, version: int, generation: int, specs: list[TensorSpec]) -> int:
        """Take part in the broadcast of policy `version` (`specs`: what learner rank 0 sends):
        the groups in flight finish on the old weights, then the engine receives the new ones. A
        broadcast needs every member, so a version loaded already is received again (sent anew
        after the group changed); returns the version now loaded."""
        with self._engine_death_is_fatal():
            async with self._update_lock:
                await self._between_groups(lambda: self.engine.receive_weights(generation, version, specs))
                await self._now_holds(max(self.policy_version, version))
        return self.policy_version

    async def _now_holds(self, version: int) -> None:
        async with self._version_loaded:
            self.policy_version = version
            self._version_loaded.notify_all()

    async def _between_groups(self, load: Callable[[], Awaitable[dict[str, float] | None]]) -> None:
        """Run `load` once the groups in flight have finished, starting no group until it is done."""
        self._accepting.clear()
        try:
            with self.spans.span("weights wait for groups"):
                await self._idle.wait()
            start = time.perf_counter()
            with self.spans.span("weights load"):
                phases = await load()
            self.occupancy.loading_weights_s += time.perf_counter() - start
            totals = self.occupancy.weights_phases_s
            for phase, seconds in (phases or {}).items():  # a test's engine may report none
                totals[phase] = totals.get(phase, 0.0) + seconds
        finally:
            self._accepting.set()

    @contextlib.contextmanager
    def _engine_death_is_fatal(self) -> Iterator[None]:
        """A dead vLLM engine (its engine-core or worker process gone) never comes back in this
        process, and every later call would fail with EngineDeadError. As a Ray actor, end the
        process as a crash: Ray restarts an actor that dies unexpectedly (os._exit), not one that
        exits on purpose (ray.actor.exit_actor), and the pool then reloads the current weights and
        re-issues this actor's groups under the same ids. Outside Ray the error goes to the caller."""
        try:
            yield
        except Exception:
            if self.engine.dead and ray.is_initialized() and ray.get_runtime_context().get_actor_id():
                print("rollout actor: its vLLM engine died; exiting so that Ray restarts the actor",
                      file=sys.stderr, flush=True)
                try:
                    self.engine.shutdown()  # the engine's staged weights and remaining processes
                finally:
                    os._exit(1)
            raise

    def ready(self) -> int:
        """The loaded policy version (callers wait on this to know the engine is up)."""
        return self.policy_version

    def timing(self) -> dict[str, float]:
        """Cumulative `Occupancy` figures of this actor (benchmarks diff them per step)."""
        return self.occupancy.figures()

    def take_spans(self) -> list[Span]:
        """The spans recorded since the last call (`core.spans`)."""
        return self.spans.take()

    def shutdown(self) -> None:
        self.engine.shutdown()

    async def _generate_group(self, sample: Sample, views: list[ImageView], group_id: str,
                              sampling: Sampling | None) -> tuple[GroupSummary, Group]:
        start = time.perf_counter()
        version = self.policy_version
        cfg = self.cfg if sampling is None else sampling.apply(self.cfg)
        with self.spans.span("generate"):
            trajectories = await asyncio.gather(*(
                self._occupied(run_trajectory(sample, views, self.engine, self._run_tool, cfg,
                                              group_id=group_id, index=index, policy_version=version))
                for index in range(cfg.rollout.n)))
        group = Group(group_id=group_id, sample=sample, trajectories=list(trajectories))
        with self.spans.span("reward"):
            # the judge's requests wait on the network: a task of their own; rules alone take well
            # under a millisecond, less than sending the group to a task and back (30 ms on tiny-cpu)
            if self.use_ray_tasks and self.cfg.reward.judge.base_url:
                group = await score_group_task.remote(group, self.cfg.reward)
            else:
                group = score_group(group, self.cfg.reward)
        summary = group.summary()
        if self._metrics is not None:
            self._metrics.record({
                "rollout_tokens_per_s": summary.response_tokens / (time.perf_counter() - start),
                "accuracy": float(np.mean([t.reward_parts.acc for t in group.trajectories])),
                "reward_mean": float(np.mean(group.rewards)),
                "response_tokens": summary.response_tokens / len(trajectories),
                "tool_calls_per_trajectory": float(np.mean([len(t.tool_calls) for t in trajectories]))},
                tags={"actor": ray.get_runtime_context().get_actor_id() or "driver"})
        return summary, group

    def _initial_views(self, sample: Sample) -> list[ImageView]:
        """The sample's images as the model first sees them. Each original is decoded once for the
        whole group, and with Ray its pixels go into the object store, where tool tasks read them."""
        max_pixels = self.cfg.data.max_decoded_pixels
        originals = [np.asarray(decode_image(data, max_pixels)) for data in sample.images]
        sources = [ray.put(pixels) for pixels in originals] if self.use_ray_tasks else originals
        return [initial_view(source, self.cfg.model, max_pixels) for source in sources]

    async def _occupied(self, trajectory: Awaitable[Trajectory]) -> Trajectory:
        self.occupancy.change(live=1)
        try:
            return await trajectory
        finally:
            self.occupancy.change(live=-1)

    async def _run_tool(self, call: ToolCall, view: ImageView) -> ToolOutcome:
        self.occupancy.change(in_tools=1)
        try:
            with self.spans.span("tool"):
                if self.use_ray_tasks:
                    return await execute_tool_task.remote(call, [view], self.cfg.tools, self.cfg.model)
                return execute_tool(call, [view], self.cfg.tools, self.cfg.model)
        finally:
            self.occupancy.change(in_tools=-1)


RolloutActor = ray.remote(RolloutWorker)  # async methods: an async actor, many calls in flight
