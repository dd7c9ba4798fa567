"""`zoomrl train` end to end on the embedded default: real Ray, vLLM CPU engine, 2-rank FSDP2 learner.

One run of 3 steps (async, max_staleness 1), scraped over HTTP while it trains; then, as if it had
died after logging step 3 but before checkpointing it, resumed from step 2 to a 4th step: the logs
keep one row per step (the dead run's step 3 set aside) and the counters go on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow

SMALL = ["rollout.n=2", "rollout.max_tokens_per_turn=24", "rollout.max_response_tokens=64",
         "data.synth.n_train=8", "data.synth.n_test=2", "data.synth.image_size=512",
         "learner.prompts_per_step=2", "run.checkpoint_every=2", "metrics.port=0"]


def start(tmp_path, *args):
    cmd = [sys.executable, "-m", "zoomrl.cli", "train", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def read_until(process, prefix: str, lines: list[str], timeout_s: float = 600) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before '{prefix}':\n" + "".join(lines[-60:]))
        lines.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no '{prefix}' within {timeout_s}s")


def assert_every_group_accounted_for(run_dir, steps: list[dict]) -> None:
    """Every group the stream issued is trained once, dropped as stale, or pending in the last
    checkpoint (which a resume requests again)."""
    trained = [b["group_id"] for record in steps for b in record["batch"]]
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    extra = json.loads((checkpoint / "trainer.json").read_text())["extra"]
    pending = [group_id for _, group_id in extra["pending"]]
    assert len(set(trained)) == len(trained) and not set(trained) & set(pending)
    assert len(trained) + len(pending) + extra["dropped_groups"] == extra["stream"]["issued"]


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
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # the dead run's step 3 is not among them...
    aside = (run_dir / "metrics.jsonl.before-resume-2").read_text().splitlines()
    assert [json.loads(line) for line in aside] == [dead_step_3]  # ...but kept beside them
    assert all(g["policy_version"] == 2 for g in steps[2]["batch"])  # fresh engines got version 2
    assert_every_group_accounted_for(run_dir, steps)  # no group counted as trained twice
    # The queue counters go on from the checkpoint: 2 groups consumed per step, resume or not.
    assert [s["queue"]["consumed"] for s in steps] == [2, 4, 6, 8]
    for record in steps:
        queue = record["queue"]
        assert queue["produced"] == queue["consumed"] + queue["dropped"] + queue["depth"]
    trajectories = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert sorted({t["step"] for t in trajectories}) == [1, 2, 3, 4]
    assert {json.loads(line)["step"] for line in
            (run_dir / "trajectories.jsonl.before-resume-2").read_text().splitlines()} == {3}
