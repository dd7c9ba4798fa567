"""`zoomrl train` end to end on the embedded default: real Ray, vLLM CPU engine, 2-rank FSDP2 learner.

One run of 3 steps (async, max_staleness 1), scraped over HTTP while it trains; then, as if it had
died after logging step 3 but before checkpointing it, resumed from step 2 to a 4th step: the logs
keep one row per step (the dead run's step 3 set aside) and the counters go on. The preset
validates every 2 steps (here on the 2 synthetic test questions): at steps 2 and 4.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest

from tests.helpers.cli import read_until

SMALL = ["rollout.n=2", "rollout.max_tokens_per_turn=24", "rollout.max_response_tokens=64",
         "data.synth.n_train=8", "data.synth.n_test=2", "data.synth.image_size=512",
         "learner.prompts_per_step=2", "run.checkpoint_every=2", "metrics.port=0"]


def start(tmp_path, *args):
    cmd = [sys.executable, "-m", "zoomrl.cli", "train", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def assert_every_group_accounted_for(run_dir, steps: list[dict]) -> None:
    """Every group the stream issued is trained once, dropped as stale, or pending in the last
    checkpoint (which a resume requests again)."""
    trained = [b["group_id"] for record in steps for b in record["batch"]]
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    extra = json.loads((checkpoint / "trainer.json").read_text())["extra"]
    pending = [group_id for _, group_id in extra["pending"]]
    assert len(set(trained)) == len(trained) and not set(trained) & set(pending)
    assert len(trained) + len(pending) + extra["dropped_groups"] == extra["stream"]["issued"]


def assert_validated_at(run_dir, steps: list[dict], validated: list[int]) -> None:
    """The val/ figures are in the rows of the steps that validate, from the held-out trajectories
    saved for them: one greedy answer (eval.n, not the training rollout.n=2) per question, on the
    step's own weights, and no validation group was trained on."""
    assert [s["step"] for s in steps if "val/accuracy" in s] == validated
    for step in validated:
        row = next(s for s in steps if s["step"] == step)
        records = [json.loads(line) for line in
                   (run_dir / "val" / f"step-{step}.trajectories.jsonl").read_text().splitlines()]
        assert len(records) == row["val/n"] == 2 and len({r["group_id"] for r in records}) == 2
        assert all(r["group_id"].startswith(f"val{step}-") and r["policy_version"] == step for r in records)
        assert row["val/accuracy"] == sum(r["reward_parts"]["acc"] for r in records) / 2
        for category in {r["category"] for r in records}:
            assert f"val/accuracy/{category}" in row
        assert row["val/tool_calls_per_trajectory"] == sum(len(r["tool_calls"]) for r in records) / 2
    assert not [b for s in steps for b in s["batch"] if b["group_id"].startswith("val")]


def tensorboard_figures(run_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one figure as TensorBoard reads the run directory's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(tag)]


def start_stages(first: str, *, resumed_from: int | None = None) -> list[str]:
    """The start-up lines a run of this test prints (their start), in order."""
    learner = ["learner resources reserved: 2 x ", "learner ranks ready 2/2 ("]
    if resumed_from is not None:
        learner.append(f"checkpoint of step {resumed_from} loaded")
    return ["model ready: ", "data files ready: 1 train, 1 test", "data read: 8 training rows",
            "Ray up: local cluster, dashboard http://127.0.0.1:", *learner, "rollout engine 1/1 ready",
            f"step {first} requested ("]


def assert_started_in_stages(lines: list[str], stages: list[str]) -> None:
    """One `[start <seconds>s] ...` line per start-up stage, in order, their times going up; and no
    line of an actor's own output (run.forward_actor_logs is off by default)."""
    started = [m for m in (re.match(r"\[start (\d+\.\d)s\] (.*)", line) for line in lines) if m]
    assert len(started) == len(stages), "".join(lines)
    assert all(m[2].startswith(stage) for m, stage in zip(started, stages, strict=True)), "".join(lines)
    assert [float(m[1]) for m in started] == sorted(float(m[1]) for m in started)
    assert not [line for line in lines if re.search(r"\((RolloutWorker|LearnerWorker) pid=\d+\)", line)]


def test_train_runs_scrapes_and_resumes(tmp_path):
    cache = f"model.cache_dir={tmp_path / 'cache'}"
    lines: list[str] = []
    process = start(tmp_path, "run.total_steps=3", f"run.runs_dir={tmp_path / 'runs'}", cache, *SMALL)
    try:
        url = read_until(process, "metrics: ", lines).split()[1]
        read_until(process, "step 1/3", lines)
        scraped = urllib.request.urlopen(url, timeout=10).read().decode()
        assert process.wait(timeout=900) == 0, "".join(lines[-60:] + process.stdout.readlines()[-60:])
    finally:
        process.kill()
    assert_started_in_stages(lines, start_stages(1))
    for name in ["zoomrl_accuracy", "zoomrl_reward_mean", "zoomrl_tool_calls_per_trajectory",
                 "zoomrl_grounding_iou", "zoomrl_rollout_tokens_per_s", "zoomrl_learner_tokens_per_s",
                 "zoomrl_queue_depth", "zoomrl_policy_staleness", "zoomrl_weight_sync_seconds",
                 "zoomrl_dropped_groups_total", "zoomrl_policy_version"]:
        assert f"\n{name} " in scraped, name
    assert "\nzoomrl_policy_version 1.0" in scraped

    [run_dir] = (tmp_path / "runs").iterdir()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert [s["policy_version"] for s in steps] == [1, 2, 3]
    assert tensorboard_figures(run_dir, "reward_mean") == [(s["step"], s["reward_mean"]) for s in steps]
    for record in steps:
        learner_version = record["step"] - 1  # the version the batch was trained against
        staleness = [learner_version - g["policy_version"] for g in record["batch"]]
        assert all(0 <= s <= 1 for s in staleness) and len(record["batch"]) == 2
        queue = record["queue"]
        assert queue["produced"] == queue["consumed"] + queue["dropped"] + queue["depth"]
        assert queue["max_staleness_seen"] <= 1
    trajectories = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert {t["step"] for t in trajectories} == {1, 2, 3}
    assert all(t["policy_version"] <= t["step"] - 1 for t in trajectories)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    assert_every_group_accounted_for(run_dir, steps)
    assert_validated_at(run_dir, steps, [2])

    # The run "dies" after logging step 3 and before its checkpoint: resume from step 2.
    shutil.rmtree(run_dir / "checkpoints" / "step-00000003")
    dead_step_3 = steps[2]
    resumed = start(tmp_path, "--resume", str(run_dir), "run.total_steps=4")
    try:
        assert resumed.wait(timeout=900) == 0, resumed.stdout.read()[-5000:]
        output = resumed.stdout.read()
    finally:
        resumed.kill()
    assert "training from step 2 to 4" in output and "step 4/4" in output
    assert_started_in_stages(output.splitlines(keepends=True), start_stages(3, resumed_from=2))
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # the dead run's step 3 is not among them...
    aside = (run_dir / "metrics.jsonl.before-resume-2").read_text().splitlines()
    assert [json.loads(line) for line in aside] == [dead_step_3]  # ...but kept beside them
    # TensorBoard hides the dead run's step 3 (purged on resume) and shows the new one
    assert tensorboard_figures(run_dir, "reward_mean") == [(s["step"], s["reward_mean"]) for s in steps]
    assert all(g["policy_version"] == 2 for g in steps[2]["batch"])  # fresh engines got version 2
    assert_every_group_accounted_for(run_dir, steps)  # no group counted as trained twice
    assert_validated_at(run_dir, steps, [2, 4])
    # The queue counters go on from the checkpoint: 2 groups consumed per step, resume or not.
    assert [s["queue"]["consumed"] for s in steps] == [2, 4, 6, 8]
    for record in steps:
        queue = record["queue"]
        assert queue["produced"] == queue["consumed"] + queue["dropped"] + queue["depth"]
    trajectories = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert sorted({t["step"] for t in trajectories}) == [1, 2, 3, 4]
    assert {json.loads(line)["step"] for line in
            (run_dir / "trajectories.jsonl.before-resume-2").read_text().splitlines()} == {3}
