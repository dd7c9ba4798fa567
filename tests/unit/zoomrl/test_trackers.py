"""The sinks of zoomrl/trackers.py, read back from what they wrote: TensorBoard's own event reader,
metrics.jsonl and the Prometheus endpoint over HTTP (an offline W&B run:
tests/integration/test_trackers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.config import ConfigError, load_config
from core.metrics import METRICS, DriverMetrics, prometheus_name
from tests.helpers.records import DETAILS, STEPS
from zoomrl.trackers import open_trackers


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard reads the run directory."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_figure_reaches_jsonl_tensorboard_and_the_endpoint(tmp_path):
    cfg = load_config(None, ["metrics.trackers=[tensorboard]"])
    endpoint = DriverMetrics("127.0.0.1", 0)
    trackers = open_trackers(cfg, tmp_path, endpoint)
    try:
        for step, figures in enumerate(STEPS, 1):
            trackers.log(step, figures, DETAILS)
        trackers.log_trajectories(2, [{"step": 2, "sample_id": "synth:0"}])
        scraped = urllib.request.urlopen(endpoint.url, timeout=10).read().decode()
    finally:
        trackers.close()

    # TensorBoard: one tag per figure, named as the figure, '/' included.
    assert scalars(tmp_path) == {name: [(1, STEPS[0][name]), (2, STEPS[1][name])] for name in STEPS[0]}
    # metrics.jsonl: step, time, the figures and the details at the top level, one row per step.
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in row.items() if k != "time"} for row in rows] == [
        {"step": step, **figures, **DETAILS} for step, figures in enumerate(STEPS, 1)]
    assert (tmp_path / "trajectories.jsonl").read_text() == '{"step": 2, "sample_id": "synth:0"}\n'
    # The endpoint: the names of METRICS only; the counter went up by the totals' growth (1, then 2).
    assert "\nzoomrl_accuracy 0.75\n" in scraped and "\nzoomrl_dropped_groups_total 3.0\n" in scraped
    assert "\nzoomrl_val_accuracy 0.625\n" in scraped  # its Prometheus name: '/' as '_'
    served = {line.split()[0].removesuffix("_total").removesuffix("_created")
              for line in scraped.splitlines() if line and not line.startswith("#")}
    assert served == {prometheus_name(spec.name) for spec in METRICS}


def test_a_resumed_endpoint_counts_on_from_the_carried_totals():
    """A resumed process's counters start at 0 and count what this process saw (as Prometheus
    expects of a restarted target), not the whole run's total again."""
    endpoint = DriverMetrics("127.0.0.1", 0)
    try:
        endpoint.carry_totals({"dropped_groups": 5})  # the checkpoint's total
        endpoint.log(3, {"dropped_groups": 7, "judge_reissued_groups": 1}, {})
        scraped = urllib.request.urlopen(endpoint.url, timeout=10).read().decode()
    finally:
        endpoint.close()
    assert "\nzoomrl_dropped_groups_total 2.0\n" in scraped
    assert "\nzoomrl_judge_reissued_groups_total 1.0\n" in scraped


def test_a_resumed_run_hides_the_steps_past_its_checkpoint_in_tensorboard(tmp_path):
    cfg = load_config(None, ["metrics.trackers=[tensorboard]"])
    for steps, resume_step in (([1, 2, 3], None), ([3, 4], 2)):  # died after logging step 3
        endpoint = DriverMetrics("127.0.0.1", 0)
        trackers = open_trackers(cfg, tmp_path, endpoint, resume_step)
        for step in steps:
            trackers.log(step, {"loss": step + (10 if resume_step else 0)}, {})
        trackers.close()
    assert scalars(tmp_path)["loss"] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_wandb_configured_but_not_installed_is_refused_at_start(tmp_path):
    """In a process where wandb is absent (sys.modules['wandb'] = None makes any import of it fail,
    as when it is not installed), zoomrl.trackers imports and the check names the extra."""
    code = ("import sys; sys.modules['wandb'] = None\n"
            "import zoomrl.trackers\n"
            "from core.config import load_config\n"
            "zoomrl.trackers.check_trackers(load_config(None, ['metrics.trackers=[tensorboard,wandb]']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=os.environ | {"RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"{ConfigError.__module__}.ConfigError: metrics.trackers has wandb, but the wandb package cannot be "
        "imported"), result.stderr
    assert "pip install 'zoomrl[wandb]'" in result.stderr


def test_unknown_trackers_are_refused_at_load():
    with pytest.raises(ConfigError, match=r"metrics.trackers\[1\].*'tensorbord'.*\['tensorboard', 'wandb'\]"):
        load_config(None, ["metrics.trackers=[wandb,tensorbord]"])
