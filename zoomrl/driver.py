"""The training run: rollout actors fill the replay queue while the learner group trains.

One loop in the driver process, which only hands references around; the work happens in actors:

    prompt stream -> RolloutPool.submit          (rollout actors generate + score, asynchronously)
    RolloutPool.poll -> ReplayQueue.put          (ObjectRefs of scored groups, never the data)
    ReplayQueue.get_batch -> LearnerGroup.train_step -> publish_weights -> RolloutPool.update_weights

While the learner trains, the actors keep generating the groups already requested. Staleness is
bounded twice. Requests: the groups of step k are only requested once the engines were sent
version >= k - max_staleness (so max_staleness 0 is the synchronous generate -> train -> sync
schedule, and 1 generates the next batch while the current one trains). Consumption: the queue
drops any group more than max_staleness versions behind the learner; the driver requests a
replacement for each one dropped.

The number of rollout actors can change while the run goes (`zoomrl scale`, zoomrl/control.py):
the loop reads the wanted number about once a second and resizes the pool without waiting.
`zoomrl stop` ends the run after the step in progress, with a checkpoint to resume from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import ray

from learner.group import LearnerGroup
from zoomrl.cluster import start_ray
from zoomrl.config import Config
from zoomrl.control import PoolStatus, start_control
from zoomrl.data import read_samples
from zoomrl.figures import step_figures
from zoomrl.metrics import METRICS_BY_NAME, DriverMetrics
from zoomrl.queue import QueuedGroup, ReplayQueueActor
from zoomrl.records import trajectory_record
from zoomrl.rollout_pool import RolloutPool
from zoomrl.run_setup import prepare_inputs
from zoomrl.stream import PromptStream, StreamPosition
from zoomrl.types import GroupSummary, Sample

CONTROL_POLL_S = 1.0


class Driver:
    """Owns the actors of one run and the loop that connects them."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        inputs = prepare_inputs(cfg)
        self.samples = {s.id: s for s in read_samples(inputs.train_files, cfg.data.max_decoded_pixels)}
        self.ray_info = start_ray(cfg)
        self.metrics = DriverMetrics(cfg.metrics.host, cfg.metrics.port)
        self.queue = ReplayQueueActor.remote(cfg.queue.capacity_groups, cfg.queue.max_staleness)
        self.learner = LearnerGroup(cfg, inputs.model_path)
        # dropped_groups: groups the queue dropped as too stale, over the whole run (resumes included)
        position, pending, self.dropped_groups = StreamPosition(), [], 0
        if resume:
            state = self.learner.load_latest_checkpoint(self.checkpoint_dir)
            position = StreamPosition(**state.extra["stream"])
            pending = [(self.samples[sample_id], group_id) for sample_id, group_id in state.extra["pending"]]
            self.dropped_groups = state.extra.get("dropped_groups", 0)
        self.step = self.learner.step
        self.stream = PromptStream(list(self.samples.values()), cfg.data.shuffle, cfg.data.seed, position)
        self.retry: list[tuple[Sample, str]] = pending
        """Groups requested before a resume but never trained on: requested again first."""
        self.outstanding: dict[str, str] = {}
        """group id -> sample id of every group requested and not yet trained on (or dropped)."""
        self.summaries: dict[str, GroupSummary] = {}
        """group id -> summary of every finished group not yet trained on (or dropped): the driver
        plans and logs from these and never fetches a whole group (the learner ranks do)."""
        self.pool = RolloutPool(cfg, inputs.model_path, cfg.rollout.num_workers)
        if self.step > 0:  # the engines start from the model path: give them the resumed weights
            weights = self.learner.publish_weights(self.step)
            self.pool.update_weights(weights.version, weights.ref)
        self.sent_version = self.step
        self.control = start_control(self.run_dir.name, cfg.rollout.num_workers)
        self.next_control_poll = 0.0
        self.stop_requested = False
        self.checkpointed_step = self.step
        self.rollout_tokens, self.last_step_time = 0, time.perf_counter()
        self.dropped_logged = 0

    # ---- requests ----
    def _next_request_step(self) -> int:
        return self.step + len(self.outstanding) // self.cfg.learner.prompts_per_step

    def _request_groups(self) -> None:
        """Request groups for the coming steps, as far as the staleness bound allows."""
        while (self._next_request_step() < self.cfg.run.total_steps
               and self._next_request_step() <= self.sent_version + self.cfg.queue.max_staleness):
            sample, group_id = self.retry.pop(0) if self.retry else self.stream.next()
            self.outstanding[group_id] = sample.id
            self.pool.submit(sample, group_id)

    def _collect(self, timeout_s: float) -> None:
        """Move finished groups into the replay queue; forget groups it dropped as too stale (their
        steps get replacements from _request_groups)."""
        for done in self.pool.poll(timeout_s):
            self.rollout_tokens += done.info.response_tokens
            self.summaries[done.info.group_id] = done.info.summary
            queued = QueuedGroup(done.ref, done.info.policy_version, done.info.group_id)
            ray.get(self.queue.put.remote(queued))
        self._forget_dropped()

    def _forget_dropped(self) -> None:
        for group_id in ray.get(self.queue.take_dropped_ids.remote()):
            self.outstanding.pop(group_id, None)
            self.summaries.pop(group_id, None)
            self.dropped_groups += 1

    def _follow_control(self) -> None:
        """Act on `zoomrl scale` / `zoomrl stop` requests, and report what the pool holds."""
        if time.monotonic() < self.next_control_poll:
            return
        self.next_control_poll = time.monotonic() + CONTROL_POLL_S
        wanted, self.stop_requested = ray.get(self.control.requests.remote())
        if wanted != self.pool.size:
            print(f"scaling rollout actors: {self.pool.size} -> {wanted}", flush=True)
            self.pool.resize(wanted)
        pool = self.pool
        self.control.report.remote(PoolStatus(len(pool.actors), len(pool.starting), len(pool.retiring),
                                              self.step))

    # ---- one update ----
    def _train(self, batch: list[QueuedGroup]) -> dict:
        start = time.perf_counter()
        groups = [self.summaries.pop(item.group_id) for item in batch]
        for item in batch:
            self.outstanding.pop(item.group_id, None)
        learner_figures = self.learner.train_step([item.ref for item in batch], groups)
        version = self.learner.step
        sync_start = time.perf_counter()
        if version != self.sent_version:
            weights = self.learner.publish_weights(version)
            self.pool.update_weights(version, weights.ref, wait=False)  # engines load while we go on
            self.sent_version = version
        sync_s = time.perf_counter() - sync_start
        queue_stats = ray.get(self.queue.stats.remote())
        now = time.perf_counter()
        figures = step_figures(groups, self.step, self.cfg.reward)  # staleness against the pre-update version
        figures.update({k: v for k, v in learner_figures.items() if k in METRICS_BY_NAME})
        figures.update(policy_version=version, rollout_workers=len(self.pool.actors),
                       queue_depth=queue_stats.depth, weight_sync_seconds=sync_s, step_seconds=now - start,
                       rollout_tokens_per_s=self.rollout_tokens / max(now - self.last_step_time, 1e-9))
        self.rollout_tokens, self.last_step_time = 0, now
        self.step = version
        self._log(figures, learner_figures, queue_stats, batch, groups)
        every = self.cfg.run.checkpoint_every
        if (every and self.step % every == 0) or self.step == self.cfg.run.total_steps:
            self._checkpoint()
        return figures

    def _log(self, figures: dict, learner_figures: dict, queue_stats, batch: list[QueuedGroup],
             groups: list[GroupSummary]) -> None:
        """The endpoint's metrics, a line of metrics.jsonl, and a few trajectories to read later."""
        dropped_now, self.dropped_logged = queue_stats.dropped - self.dropped_logged, queue_stats.dropped
        self.metrics.record({k: v for k, v in figures.items() if k in METRICS_BY_NAME}
                            | {"dropped_groups": dropped_now})
        record = {"step": self.step, "time": time.time(), **figures, "learner": learner_figures,
                  "queue": asdict(queue_stats), "reissued_groups": self.pool.reissued,
                  "batch": [{"group_id": item.group_id, "policy_version": item.policy_version}
                            for item in batch]}
        with open(self.run_dir / "metrics.jsonl", "a") as sink:
            sink.write(json.dumps(record) + "\n")
        left = self.cfg.metrics.sample_trajectories
        with open(self.run_dir / "trajectories.jsonl", "a") as sink:
            for item, summary in zip(batch, groups, strict=True):
                if left <= 0:
                    break
                group = ray.get(item.ref)  # only the groups shown are fetched here
                for index in range(min(left, len(summary.trajectories))):
                    sink.write(json.dumps({"step": self.step, **trajectory_record(group, index)}) + "\n")
                left -= len(summary.trajectories)

    def _checkpoint(self) -> None:
        """Save the learner with the data position: the stream, and every group requested but not
        trained on (queued, in flight or waiting to be re-requested), which a resume re-requests.
        Every group the stream issued is then trained, dropped as stale, or pending."""
        self._forget_dropped()  # the queue may have dropped groups since the last collect
        pending = [(sample.id, group_id) for sample, group_id in self.retry]
        pending += [(sample_id, group_id) for group_id, sample_id in self.outstanding.items()]
        extra = {"stream": asdict(self.stream.position), "pending": pending,
                 "dropped_groups": self.dropped_groups}
        self.learner.save_checkpoint(self.checkpoint_dir, self.step, extra)
        self.checkpointed_step = self.step

    # ---- the run ----
    def run(self, on_step: Callable[[dict], None] = lambda figures: None) -> dict:
        """Train until run.total_steps policy updates are done (or `zoomrl stop`); on_step sees each
        step's figures."""
        batch_ref = None
        while self.step < self.cfg.run.total_steps and not self.stop_requested:
            self._follow_control()
            self._request_groups()
            self._collect(timeout_s=0.05)
            if batch_ref is None:
                batch_ref = self.queue.get_batch.remote(self.cfg.learner.prompts_per_step, self.step)
            if ray.wait([batch_ref], timeout=0)[0]:
                on_step(self._train(ray.get(batch_ref)))
                batch_ref = None
        if self.checkpointed_step != self.step:
            self._checkpoint()
        return {"steps": self.step, "run_dir": str(self.run_dir), "stopped": self.stop_requested}

    def close(self) -> None:
        ray.kill(self.control)
        self.pool.shutdown()
        self.learner.shutdown()
        self.metrics.close()
