"""Where a run's per-step figures go: one small interface, one sink per place.

Every sink is a `Tracker`: `log(step, figures, details)` once per step, `log_trajectories(step,
records)` with the step's sample trajectories, `close()` at the end. The driver builds them once
(`open_trackers`) and calls the fan-out (`Trackers`); it never asks which sinks there are.

- metrics.jsonl and trajectories.jsonl in the run directory (`JsonLinesTracker`): always on, the
  run's own record (resume and the tests read it).
- The driver's Prometheus endpoint (`core.metrics.DriverMetrics`): always on; it keeps only the
  names of `core.metrics.METRICS`.
- The experiment trackers named in `metrics.trackers`: TensorBoard event files in the run directory
  (`TensorBoardTracker`), Weights & Biases (`WandbTracker`, online or WANDB_MODE=offline).

`figures` are numbers by name: the names of docs/metrics.md, and any other numeric figure of the
step (`val/accuracy`, ...); names with '/' are sections in TensorBoard and W&B. Counters
(`dropped_groups`, `judge_reissued_groups`) arrive as running totals over the whole run. `details`
is the step's structured context (the learner's full figures, queue counters, the batch), which
only metrics.jsonl keeps.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from core.config import Config, ConfigError


class Tracker(Protocol):
    """One place a run's figures go."""

    def log(self, step: int, figures: Mapping[str, float], details: Mapping[str, Any]) -> None:
        """The figures of one step (and its details, for sinks that keep them)."""

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        """A few trajectories of the step, as `zoomrl.records.trajectory_record` makes them."""

    def close(self) -> None:
        """Flush and release what the sink holds."""


class JsonLinesTracker:
    """metrics.jsonl (one record per step: step, time, the figures and the details) and
    trajectories.jsonl (one line per trajectory, with its step) in the run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.metrics_path, self.trajectories_path = run_dir / "metrics.jsonl", run_dir / "trajectories.jsonl"

    def log(self, step: int, figures: Mapping[str, float], details: Mapping[str, Any]) -> None:
        record = {"step": step, "time": time.time(), **figures, **details}
        with open(self.metrics_path, "a") as sink:
            sink.write(json.dumps(record) + "\n")

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        with open(self.trajectories_path, "a") as sink:
            sink.writelines(json.dumps({"step": step, **record}) + "\n" for record in records)

    def close(self) -> None:
        pass  # every line is written and closed as it comes


class TensorBoardTracker:
    """Event files in the run directory: one scalar per figure, its tag the figure's name, so
    `tensorboard --logdir runs` compares runs by their directory names."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # On resume, TensorBoard hides what the run that died logged past its checkpoint: those
        # steps are trained again and logged anew.
        purge_step = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)

    def log(self, step: int, figures: Mapping[str, float], details: Mapping[str, Any]) -> None:
        for name, value in figures.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a step takes seconds to minutes: show it now, not at the next flush

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        pass  # trajectories are read in `zoomrl view` or the W&B table

    def close(self) -> None:
        self.writer.close()


WANDB_RUN_ID = "wandb-run-id"
"""File in the run directory holding the W&B run id, so `zoomrl train --resume` continues that run."""

TRAJECTORY_COLUMNS = ["step", "sample_id", "question", "answer", "response_text", "reward",
                      "reward_parts", "end_reason", "policy_version", "tool_calls", "image"]


class WandbTracker:
    """A W&B run: the resolved config, every figure per step (sections by '/'), and each step's
    sample trajectories as a table whose image column shows the original with its zoom boxes (and
    the ground-truth boxes) in original-image pixels. With WANDB_MODE=offline it writes
    run_dir/wandb/offline-run-*/ for `wandb sync`."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int | None) -> None:
        import wandb

        self.wandb, self.run_dir = wandb, run_dir
        # W&B stages the files of logged tables (images included) in its data folder until they are
        # uploaded, by default in the home folder: keep them with the run (an offline run's `wandb
        # sync` reads them there, and deleting the run directory deletes them).
        os.environ.setdefault("WANDB_DATA_DIR", str(run_dir / "wandb"))
        id_file = run_dir / WANDB_RUN_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else None  # None: W&B picks one
        w = cfg.metrics.wandb
        self.run = wandb.init(project=w.project, entity=w.entity or None, name=w.name or run_dir.name,
                              tags=list(w.tags), dir=str(run_dir), id=run_id, resume="allow",
                              config=OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        id_file.write_text(self.run.id + "\n")

    def log(self, step: int, figures: Mapping[str, float], details: Mapping[str, Any]) -> None:
        self.run.log(dict(figures), step=step)

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        table = self.wandb.Table(columns=TRAJECTORY_COLUMNS)
        for record in records:
            table.add_data(step, record["sample_id"], record["question"], record["answer"],
                           record["response_text"], record["reward"], json.dumps(record["reward_parts"]),
                           record["end_reason"], record["policy_version"],
                           json.dumps(record["tool_calls"]), self._image(record))
        self.run.log({"trajectories": table}, step=step)

    def _image(self, record: Mapping[str, Any]) -> Any:
        """The original the zoom boxes are measured in (the last one the data gave), with each zoom
        box captioned by its call's number and the ground-truth boxes; None when the record names
        no saved original."""
        originals = [i for i, image in enumerate(record.get("images", [])) if image["kind"] == "original"]
        if not originals:
            return None
        shown = originals[-1]
        zooms = [_pixel_box(call["box_original"], 1, f"zoom {k}")
                 for k, call in enumerate(record["tool_calls"], 1)
                 if call["box_original"] is not None and call.get("box_image") == shown]
        truth = [_pixel_box(box, 2, "ground truth") for box in record["gt_boxes"]]
        boxes = {"zoom": {"box_data": zooms, "class_labels": {1: "zoom"}},
                 "ground_truth": {"box_data": truth, "class_labels": {2: "ground truth"}}}
        return self.wandb.Image(str(self.run_dir / record["images"][shown]["path"]), boxes=boxes)

    def close(self) -> None:
        self.run.finish()


def _pixel_box(box: Sequence[float], class_id: int, caption: str) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2}, "domain": "pixel",
            "class_id": class_id, "box_caption": caption}


OPENERS: dict[str, Callable[[Config, Path, int | None], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}
"""metrics.trackers name -> the sink it opens."""

EXTRAS = {"wandb": "wandb"}
"""metrics.trackers name -> the optional package it needs (and zoomrl's extra that installs it)."""


def check_trackers(cfg: Config) -> None:
    """Refuse, before a run makes anything, a tracker whose package is not installed."""
    for name in cfg.metrics.trackers:
        package = EXTRAS.get(name)
        if package is None:
            continue
        try:
            importlib.import_module(package)
        except ImportError as err:
            raise ConfigError(f"metrics.trackers has {name}, but the {package} package cannot be imported "
                              f"({err}): pip install 'zoomrl[{package}]', or drop {name} from "
                              "metrics.trackers") from None


class Trackers:
    """Every sink of a run behind the one interface: each call goes to each sink, in order."""

    def __init__(self, sinks: Sequence[Tracker]) -> None:
        self.sinks = list(sinks)

    def log(self, step: int, figures: Mapping[str, float], details: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(step, figures, details)

    def log_trajectories(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        for sink in self.sinks:
            sink.log_trajectories(step, records)

    def close(self) -> None:
        """Close every sink, even when one fails (the first error is raised after)."""
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:  # the other sinks must still flush and finish
                errors.append(err)
        if errors:
            raise errors[0]


def open_trackers(cfg: Config, run_dir: Path, endpoint: Tracker, resume_step: int | None = None) -> Trackers:
    """The run's sinks: metrics.jsonl, the Prometheus `endpoint` (opened earlier, when its port was
    taken) and each of metrics.trackers. resume_step: the checkpoint a resumed run starts from."""
    check_trackers(cfg)
    trackers = Trackers([JsonLinesTracker(run_dir), endpoint])
    try:
        for name in dict.fromkeys(cfg.metrics.trackers):
            trackers.sinks.append(OPENERS[name](cfg, run_dir, resume_step))
    except BaseException:
        trackers.close()  # the sinks already open (the endpoint's port among them)
        raise
    return trackers
