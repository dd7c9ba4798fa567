"""The training run: rollout actors fill the replay queue while the learner group trains.

One loop in the driver process, which only hands references around; the work happens in actors:

    prompt stream -> RolloutPool.submit          (rollout actors generate + score, asynchronously)
    RolloutPool.poll -> ReplayQueue.put          (ObjectRefs of scored groups, never the data)
    ReplayQueue.take -> LearnerGroup.train_step  -> the weights to the engines
                                 (publish_weights -> RolloutPool.update_weights: object store;
                                  RolloutPool.broadcast_weights: nccl | gloo)

Every run.eval_every steps, a validation branch (zoomrl/validate.py): once the step's weights are
published, the same actors answer the held-out run.eval_files as `zoomrl eval` does (eval.n at
eval.temperature), their requests carrying the new version; training groups finishing meanwhile
go to the queue as always, validation groups never do (nor count in it). The val/... figures join
the step's figures; the learner waits for the validation, the actors do not.

While the learner trains, the actors keep generating the groups already requested. Staleness is
bounded twice. Requests: the groups of step k are only requested once the engines were sent
version >= k - max_staleness (so max_staleness 0 is the synchronous generate -> train -> sync
schedule, and 1 generates the next batch while the current one trains). Consumption: the queue
(zoomrl/queue.py, a plain object of this process) drops any group more than max_staleness
versions behind the learner; the driver requests a replacement for each one dropped.

The number of rollout actors can change while the run goes (`zoomrl scale`, zoomrl/control.py):
the loop reads the wanted number about once a second and resizes the pool without waiting.
`zoomrl stop` ends the run after the step in progress, with a checkpoint to resume from.

A judge outage: a group whose reward task failed on the LLM judge after all its retries is
requested again under the same id, after reward.judge.group_backoff_s (doubled each time), at
most reward.judge.group_retries times; past that the run saves a checkpoint and ends with a
JudgeError naming the judge (`zoomrl train --resume` continues once it answers).

A resume continues the run's logs: rows of metrics.jsonl and trajectories.jsonl past the resumed
step (written after the last checkpoint by the run that died) move to
`<log>.before-resume-<step>`, and the counters (queue, dropped and re-requested groups) go on
from the checkpoint's values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from core.config import Config, save_config
from core.data import read_samples
from core.metrics import METRICS_BY_NAME, DriverMetrics
from core.progress import Say, StartupLog
from core.spans import SpanLog
from core.stream import PromptStream, StreamPosition
from core.types import FinishedGroup, GroupSummary, Sample
from learner.checkpoint import remove_old_checkpoints
from learner.ranks import LearnerGroup
from rewards import JudgeError
from zoomrl.broadcast_sync import broadcast_sync
from zoomrl.cluster import start_ray
from zoomrl.control import PoolStatus, start_control
from zoomrl.dynamics import step_figures
from zoomrl.queue import QueueStats, ReplayQueue
from zoomrl.records import ImageStore, trajectory_record
from zoomrl.rollout_pool import RolloutPool
from zoomrl.run_setup import new_run_dir, prepare_inputs, set_aside_rows_after
from zoomrl.trackers import check_trackers, open_trackers
from zoomrl.validate import validate, validation_questions

CONTROL_POLL_S = 1.0


@dataclass
class JudgeWait:
    """A group whose reward task failed on the judge, waiting to be requested again."""

    sample: Sample
    group_id: str
    due: float
    """time.monotonic() from which it is requested again."""


class Driver:
    """Owns the actors of one run and the loop that connects them."""

    def __init__(self, cfg: Config, run_dir: Path | None = None, resume: bool = False,
                 say: Say | None = None) -> None:
        """run_dir None: a new run directory, made only once the model, the data (every row
        checked) and the metrics port are in hand, so a refused start leaves nothing behind.
        resume: continue the run in run_dir from its latest checkpoint. say: where each start-up
        stage reports (default: `[start 12.3s] ...` lines on stdout, timed from here)."""
        self.cfg = cfg
        self.say = say = say or StartupLog()
        inputs = prepare_inputs(cfg, say)
        self.samples = {s.id: s for s in read_samples(inputs.train_files, cfg.data.max_decoded_pixels)}
        say(f"data read: {len(self.samples)} training rows")
        self.val_questions = validation_questions(cfg, inputs.test_files) if cfg.run.eval_every else []
        """Held-out questions asked every run.eval_every steps (zoomrl/validate.py)."""
        check_trackers(cfg)  # a missing tracker package refuses the start before anything is made
        self.metrics = DriverMetrics(cfg.metrics.host, cfg.metrics.port)
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.images = ImageStore(self.run_dir)
        self.ray_info = start_ray(cfg, say)
        self.learner = LearnerGroup(cfg, inputs.model_path, say)
        # Counters over the whole run, resumes included: the queue's (trained, dropped as too
        # stale) and the groups requested again after a judge failure.
        position, pending, self.judge_reissued, queue_carried = StreamPosition(), [], 0, None
        if resume:
            state = self.learner.load_latest_checkpoint(self.checkpoint_dir)
            say(f"checkpoint of step {self.learner.step} loaded")
            position = StreamPosition(**state.extra["stream"])
            pending = [(self.samples[sample_id], group_id) for sample_id, group_id in state.extra["pending"]]
            self.judge_reissued = state.extra.get("judge_reissued_groups", 0)
            queue_carried = QueueStats(**state.extra["queue"]) if "queue" in state.extra else None
            for moved in set_aside_rows_after(self.run_dir, self.learner.step):
                print(f"resume: rows past step {self.learner.step} moved to {moved}", flush=True)
            save_config(cfg, self.run_dir / "config.yaml")  # the overrides of this resume
        self.queue = ReplayQueue(cfg.queue.capacity_groups, cfg.queue.max_staleness, queue_carried)
        self.step = self.learner.step
        self.stream = PromptStream(list(self.samples.values()), cfg.data.shuffle, cfg.data.seed, position)
        self.retry: list[tuple[Sample, str]] = pending
        """Groups requested before a resume but never trained on: requested again first."""
        self.outstanding: dict[str, str] = {}
        """group id -> sample id of every group requested and not yet trained on (or dropped)."""
        self.pool = RolloutPool(cfg, inputs.model_path, cfg.rollout.num_workers, say,
                                broadcast_sync(cfg, self.learner))
        if self.step > 0:  # the engines start from the model path: give them the resumed weights
            self._send_weights(self.step, wait=True)
        self.sent_version = self.step
        self.control = start_control(self.run_dir, cfg.rollout.num_workers)
        self.next_control_poll = 0.0
        self.stop_requested = False
        self.checkpointed_step = self.step
        self.rollout_tokens, self.last_step_time = 0, time.perf_counter()
        self.metrics.carry_totals({"dropped_groups": self.queue.dropped,
                                   "judge_reissued_groups": self.judge_reissued})
        self.judge_retries: dict[str, int] = {}
        """group id -> times it was requested again after a judge failure (until it comes back)."""
        self.judge_waiting: list[JudgeWait] = []
        self.judge_down: str | None = None
        """Why the run stops: a group failed on the judge more than reward.judge.group_retries times."""
        self.trackers = open_trackers(cfg, self.run_dir, self.metrics, self.step if resume else None)
        """Where each step's figures and sample trajectories go (metrics.jsonl, endpoint, trackers)."""
        self.spans = SpanLog()
        """What the loop spends its time on, span by span (`python -m bench anatomy` reads them)."""

    # ---- requests ----
    def _next_request_step(self) -> int:
        return self.step + len(self.outstanding) // self.cfg.learner.prompts_per_step

    def _request_groups(self) -> None:
        """Request groups for the coming steps, as far as the staleness bound allows, and again the
        groups that failed on the judge once their wait is over (they count as outstanding)."""
        now = time.monotonic()
        for wait in [w for w in self.judge_waiting if w.due <= now]:
            self.judge_waiting.remove(wait)
            self.pool.submit(wait.sample, wait.group_id)
        while (self._next_request_step() < self.cfg.run.total_steps
               and self._next_request_step() <= self.sent_version + self.cfg.queue.max_staleness):
            sample, group_id = self.retry.pop(0) if self.retry else self.stream.next()
            self.outstanding[group_id] = sample.id
            self.pool.submit(sample, group_id)

    def _collect(self, timeout_s: float) -> None:
        """Move finished groups into the replay queue; forget groups it dropped as too stale (their
        steps get replacements from _request_groups)."""
        for done in self.pool.poll(timeout_s):
            self._enqueue(done)
        failed, self.pool.judge_failures = self.pool.judge_failures, []
        for request, error in failed:
            self._judge_failed(request.sample, request.group_id, error)
        self._forget_dropped()

    def _enqueue(self, done: FinishedGroup) -> None:
        """A finished training group into the replay queue."""
        self.rollout_tokens += done.summary.response_tokens
        self.judge_retries.pop(done.group_id, None)
        self.queue.put(done)

    def _judge_failed(self, sample: Sample, group_id: str, error: Exception) -> None:
        """Request the group again after a backoff, or mark the run to stop when this group has
        had all its re-requests: the judge is down, not blinking."""
        judge = self.cfg.reward.judge
        retries = self.judge_retries.get(group_id, 0)
        reason = _root_cause(error)
        if retries >= judge.group_retries:
            self.judge_down = (f"the judge at {judge.base_url} stayed down: group {group_id} failed on it "
                               f"{retries + 1} times (reward.judge.group_retries={judge.group_retries}); "
                               f"last error: {reason}")
            return
        delay = judge.group_backoff_s * 2 ** retries
        self.judge_retries[group_id] = retries + 1
        self.judge_reissued += 1
        self.judge_waiting.append(JudgeWait(sample, group_id, time.monotonic() + delay))
        print(f"judge failed on group {group_id} ({reason}); requesting it again in {delay:.0f}s "
              f"({retries + 1}/{judge.group_retries})", flush=True)

    def _forget_dropped(self) -> None:
        """Drop the queued groups too stale for the learner's version; their steps get replacements
        from _request_groups. The queue's depth goes to the endpoint on the way."""
        for item in self.queue.drop_stale(self.step):
            self.outstanding.pop(item.group_id, None)
        self.metrics.record({"queue_depth": float(self.queue.stats().depth)})

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
    def _train(self, batch: list[FinishedGroup]) -> dict:
        """One update on `batch`: the driver plans and logs from the summaries and never fetches a
        whole group (the learner ranks do)."""
        start = time.perf_counter()
        groups = [item.summary for item in batch]
        for item in batch:
            self.outstanding.pop(item.group_id, None)
        with self.spans.span("update"):
            learner_figures = self.learner.train_step([item.ref for item in batch], groups)
        version = self.learner.step
        sync_start = time.perf_counter()
        if version != self.sent_version:
            with self.spans.span("publish"):
                self._send_weights(version, wait=False)
            self.sent_version = version
        sync_s = time.perf_counter() - sync_start
        queue_stats = self.queue.stats()
        now = time.perf_counter()
        figures = step_figures(groups, self.step)  # staleness against the pre-update version
        figures.update({k: v for k, v in learner_figures.items() if k in METRICS_BY_NAME})
        figures.update(policy_version=version, rollout_workers=len(self.pool.actors),
                       queue_depth=queue_stats.depth, weight_sync_seconds=sync_s, step_seconds=now - start,
                       rollout_tokens_per_s=self.rollout_tokens / max(now - self.last_step_time, 1e-9))
        self.rollout_tokens, self.last_step_time = 0, now
        self.step = version
        if self.val_questions and self.step % self.cfg.run.eval_every == 0:
            with self.spans.span("validate"):
                figures.update(self._validate())
        with self.spans.span("log"):
            self._log(figures, learner_figures, queue_stats, batch, groups)
        every = self.cfg.run.checkpoint_every
        if (every and self.step % every == 0) or self.step == self.cfg.run.total_steps:
            with self.spans.span("checkpoint"):
                self._checkpoint()
        return figures

    def _send_weights(self, version: int, wait: bool) -> None:
        """The learner's weights to the rollout engines as `version`. Through the object store the
        engines load them as they come free (the driver waits only with `wait`); a broadcast holds
        the driver until every engine has received them."""
        if self.pool.broadcast is not None:
            self.pool.broadcast_weights(version)
        else:
            self.pool.update_weights(version, self.learner.publish_weights(version).ref, wait=wait)

    def _validate(self) -> dict[str, float]:
        """The val/... figures of the weights just sent (the requests carry that version, so the
        actors load it first). Training groups go on generating meanwhile and into the queue; a
        judge that fails on a validation group skips this validation (training groups that fail on
        it are handled as always)."""
        self._request_groups()  # the next steps' groups, as far as the new version allows
        out = self.run_dir / "val" / f"step-{self.step}.trajectories.jsonl"
        try:
            return validate(self.pool, self.val_questions, self.cfg, out, f"val{self.step}",
                            others=self._enqueue).figures
        except JudgeError as err:
            print(f"validation at step {self.step} skipped: the judge failed ({_root_cause(err)})",
                  flush=True)
            return {}

    def _log(self, figures: dict, learner_figures: dict, queue_stats, batch: list[FinishedGroup],
             groups: list[GroupSummary]) -> None:
        """The step's figures (counters as running totals) and a few trajectories to every sink:
        metrics.jsonl, the endpoint and the experiment trackers (zoomrl/trackers.py)."""
        totals = {"dropped_groups": queue_stats.dropped, "judge_reissued_groups": self.judge_reissued}
        details = {"learner": learner_figures, "queue": asdict(queue_stats),
                   "reissued_groups": self.pool.reissued,
                   "batch": [{"group_id": item.group_id, "policy_version": item.policy_version}
                             for item in batch]}
        self.trackers.log(self.step, figures | totals, details)
        self.trackers.log_trajectories(self.step, self._sample_trajectories(batch, groups))

    def _sample_trajectories(self, batch: list[FinishedGroup], groups: list[GroupSummary]) -> list[dict]:
        """The first metrics.sample_trajectories trajectories of the step as records, their images
        saved under the run directory (`zoomrl view` shows them)."""
        records, left = [], self.cfg.metrics.sample_trajectories
        for item, summary in zip(batch, groups, strict=True):
            if left <= 0:
                break
            group = ray.get(item.ref)  # only the groups shown are fetched here
            records += [{"step": self.step, **trajectory_record(group, index, self.images)}
                        for index in range(min(left, len(summary.trajectories)))]
            left -= len(summary.trajectories)
        return records

    def _checkpoint(self) -> None:
        """Save the learner with the data position: the stream, and every group requested but not
        trained on (queued, in flight or waiting to be re-requested), which a resume re-requests.
        Every group the stream issued is then trained, dropped as stale, or pending."""
        self._forget_dropped()  # groups the new version leaves too stale are not pending
        pending = [(sample.id, group_id) for sample, group_id in self.retry]
        pending += [(sample_id, group_id) for group_id, sample_id in self.outstanding.items()]
        queue = self.queue.resume_stats()  # groups still queued are pending: counted when they come back
        extra = {"stream": asdict(self.stream.position), "pending": pending,
                 "dropped_groups": queue.dropped, "judge_reissued_groups": self.judge_reissued,
                 "queue": asdict(queue)}
        path = self.learner.save_checkpoint(self.checkpoint_dir, self.step, extra)
        self.checkpointed_step = self.step
        keep = self.cfg.run.keep_checkpoints
        for removed in remove_old_checkpoints(self.checkpoint_dir, keep, path):
            print(f"checkpoint: removed {removed.name} (run.keep_checkpoints={keep})", flush=True)

    # ---- the run ----
    def run(self, on_step: Callable[[dict], None] = lambda figures: None) -> dict:
        """Train until run.total_steps policy updates are done (or `zoomrl stop`); on_step sees each
        step's figures. Raises JudgeError, after a checkpoint, when the judge stays down."""
        if self.step < self.cfg.run.total_steps:  # the last start-up line: the run is under way
            self._request_groups()
            self.say(f"step {self.step + 1} requested ({len(self.outstanding)} groups of "
                     f"{self.cfg.rollout.n} in flight)")
        while self.step < self.cfg.run.total_steps and not self.stop_requested and not self.judge_down:
            with self.spans.span("control"):
                self._follow_control()
            with self.spans.span("request"):
                self._request_groups()
            with self.spans.span("wait for groups"):
                self._collect(timeout_s=0.05)  # stale groups dropped on the way
            batch = self.queue.take(self.cfg.learner.prompts_per_step, self.step)
            if batch is not None:
                on_step(self._train(batch))
        if self.checkpointed_step != self.step:
            self._checkpoint()
        if self.judge_down:
            resume = (f"checkpoint at step {self.step}: once the judge answers, continue with "
                      f"zoomrl train --resume {self.run_dir}" if self.step else
                      "no step was trained yet: start again once the judge answers")
            raise JudgeError(f"{self.judge_down}. {resume}")
        return {"steps": self.step, "run_dir": str(self.run_dir), "stopped": self.stop_requested}

    def close(self) -> None:
        ray.kill(self.control)
        self.pool.shutdown()
        self.learner.shutdown()
        self.trackers.close()  # the endpoint too


def _root_cause(error: BaseException) -> str:
    """The original error's one-line message (a RayTaskError wraps it with a traceback)."""
    while isinstance(getattr(error, "cause", None), BaseException):
        error = error.cause
    return f"{type(error).__name__}: {error}"
