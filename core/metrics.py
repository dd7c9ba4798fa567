"""Every metric zoomrl emits, defined once, and the two places they go.

`METRICS` is the single list: name, kind, meaning. Actors record through `ray.util.metrics`
(`RayMetrics`), so the Ray dashboard and Ray's Prometheus endpoint show them; the driver serves the
per-step figures with `prometheus_client` on its own HTTP endpoint (`DriverMetrics`, one of the
sinks of zoomrl/trackers.py, beside metrics.jsonl, TensorBoard and W&B). Names start
with `zoomrl_`; `docs/metrics.md` documents each (a test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from core.config import ConfigError


@dataclass(frozen=True)
class MetricSpec:
    name: str
    """The key in metrics.jsonl (and every tracker); the Prometheus name is `prometheus_name`."""
    kind: str
    """gauge (a per-step figure) | counter (a running total)."""
    description: str


METRICS: tuple[MetricSpec, ...] = (
    # The paper's training dynamics, per step over the trajectories the learner trained on.
    MetricSpec("accuracy", "gauge", "Mean accuracy reward part (0/1) of the step's trajectories."),
    MetricSpec("reward_mean", "gauge", "Mean total reward."),
    MetricSpec("reward_acc", "gauge", "Mean weighted accuracy part of the reward."),
    MetricSpec("reward_format", "gauge", "Mean weighted format part of the reward (0 or negative)."),
    MetricSpec("reward_tool", "gauge", "Mean weighted (and gated) tool bonus: earned by a successful "
               "call of a tool in `reward.bonus_tools` (the zoom-in tool by default)."),
    MetricSpec("tool_calls_per_trajectory", "gauge", "Mean tool calls per trajectory (failed ones too)."),
    MetricSpec("tool_errors_per_trajectory", "gauge",
               "Mean failed tool calls per trajectory (a call that would give back the image the "
               "model already had, such as a zoom on the whole image, is one)."),
    MetricSpec("zoom_share", "gauge", "Share of trajectories with at least one successful crop."),
    MetricSpec("response_tokens", "gauge", "Mean tokens the policy generated per trajectory."),
    MetricSpec("grounding_iou", "gauge",
               "Mean over trajectories that zoomed of the best IoU of a zoom box with a "
               "ground-truth box (original-image pixels)."),
    MetricSpec("end_answer_share", "gauge", "Share of trajectories that ended with an answer."),
    MetricSpec("end_truncated_share", "gauge",
               "Share of trajectories cut by a budget (tokens, tool calls, images, model length)."),
    # The update.
    MetricSpec("loss", "gauge", "GRPO policy loss of the step."),
    MetricSpec("clip_fraction", "gauge", "Share of sampled tokens whose ratio was clipped."),
    MetricSpec("approx_kl", "gauge", "Approximate KL of the learner policy to the behaviour policy."),
    MetricSpec("grad_norm", "gauge", "Global gradient norm before clipping."),
    MetricSpec("policy_version", "gauge", "Version of the learner's weights after the step."),
    # The system.
    MetricSpec("rollout_tokens_per_s", "gauge", "Generated tokens per second, all rollout actors."),
    MetricSpec("rollout_workers", "gauge", "Rollout actors taking requests (changed by zoomrl scale)."),
    MetricSpec("learner_tokens_per_s", "gauge", "Tokens (all, prompt and images included) per second "
               "through forward and backward, all ranks."),
    MetricSpec("queue_depth", "gauge", "Scored groups waiting in the replay queue."),
    MetricSpec("policy_staleness", "gauge",
               "Mean versions between the learner and the policy that produced its batch."),
    MetricSpec("dropped_groups", "counter", "Groups dropped for staleness, in total."),
    MetricSpec("judge_reissued_groups", "counter",
               "Groups requested again because their reward task failed on the LLM judge after "
               "all its retries, in total (at most reward.judge.group_retries times per group)."),
    MetricSpec("weight_sync_seconds", "gauge", "Seconds to publish the weights and send them to the "
               "engines (they load them while the next step runs)."),
    MetricSpec("step_seconds", "gauge", "Wall time of the step."),
    MetricSpec("learner_peak_memory_bytes", "gauge", "Peak memory of one learner rank in the step."),
    # Validation (run.eval_every): held-out questions answered as `zoomrl eval` does, on the step's
    # weights; set at the steps that validate (per-category accuracies go to the other sinks only).
    MetricSpec("val/accuracy", "gauge", "Accuracy on the held-out questions (run.eval_files)."),
    MetricSpec("val/tool_calls_per_trajectory", "gauge",
               "Mean tool calls per held-out trajectory (failed ones too)."),
    MetricSpec("val/zoom_share", "gauge",
               "Share of held-out trajectories with at least one successful crop."),
    MetricSpec("val/grounding_iou", "gauge", "Mean over held-out trajectories that zoomed on a "
               "question with boxes of their best zoom box's IoU with a ground-truth box."),
    MetricSpec("val/response_tokens", "gauge", "Mean sampled tokens per held-out trajectory."),
    MetricSpec("val/n", "gauge", "Held-out trajectories the val/ figures are over."),
    MetricSpec("val/seconds", "gauge", "Seconds the validation took (training waits for it)."),
)
METRICS_BY_NAME = {m.name: m for m in METRICS}
PREFIX = "zoomrl_"


def prometheus_name(name: str) -> str:
    """A metric's name on Prometheus: prefixed, with '/' (val/accuracy) as '_'."""
    return PREFIX + name.replace("/", "_")


class DriverMetrics:
    """The driver's Prometheus endpoint: one gauge/counter per spec, set from each step's figures.
    Also a sink of zoomrl.trackers (`log`), fed every figure of the step and keeping its own."""

    def __init__(self, host: str, port: int):
        self.registry = CollectorRegistry()
        self._metrics = {}
        self._totals: dict[str, float] = {}
        """Counter name -> the running total the last `log` saw (the counter went up to it)."""
        for spec in METRICS:
            cls = Counter if spec.kind == "counter" else Gauge
            self._metrics[spec.name] = cls(prometheus_name(spec.name), spec.description,
                                           registry=self.registry)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise ConfigError(f"metrics.port={port}: cannot serve metrics on {host}:{port} "
                              f"({err.strerror}; another run on this machine?); metrics.port=0 "
                              "takes a free port") from None
        self.host, self.port = host, self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def record(self, figures: dict[str, float]) -> None:
        """Set gauges to this step's values; add counters' increments. Unknown names are an error."""
        for name, value in figures.items():
            if name not in METRICS_BY_NAME:
                raise KeyError(f"metric '{name}' is not defined in core.metrics.METRICS")
            metric = self._metrics[name]
            if isinstance(metric, Counter):
                metric.inc(value)
            else:
                metric.set(value)

    def carry_totals(self, totals: dict[str, float]) -> None:
        """Running totals a resumed run starts from: the counters count on from them, from 0 in
        this process as any restarted process's counters do."""
        self._totals.update(totals)

    def log(self, step: int, figures: Mapping[str, float], details: Mapping[str, Any]) -> None:
        """Tracker: record the figures named in METRICS (other figures, such as val/..., are for the
        other sinks); counters come as running totals and go up by what they grew since."""
        known = {}
        for name, value in figures.items():
            if name in METRICS_BY_NAME and METRICS_BY_NAME[name].kind == "counter":
                known[name], self._totals[name] = value - self._totals.get(name, 0), value
            elif name in METRICS_BY_NAME:
                known[name] = value
        self.record(known)

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        pass  # the endpoint serves numbers only

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class RayMetrics:
    """Metrics recorded inside Ray actors (shown by the dashboard and Ray's Prometheus endpoint)."""

    def __init__(self, names: list[str], tag_keys: tuple[str, ...] = ()):
        from ray.util import metrics as ray_metrics

        self._metrics = {}
        for name in names:
            spec = METRICS_BY_NAME[name]
            cls = ray_metrics.Counter if spec.kind == "counter" else ray_metrics.Gauge
            self._metrics[name] = cls(prometheus_name(spec.name), description=spec.description,
                                      tag_keys=tag_keys)

    def record(self, figures: dict[str, float], tags: dict[str, str] | None = None) -> None:
        for name, value in figures.items():
            metric = self._metrics[name]
            if METRICS_BY_NAME[name].kind == "counter":
                metric.inc(value, tags=tags)
            else:
                metric.set(value, tags=tags)
