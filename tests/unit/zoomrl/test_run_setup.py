"""The run directory: made only for a start whose inputs are valid, one per run even when runs
start together, and its step logs set straight on resume."""

from __future__ import annotations

import json
import threading

from core.config import load_config
from zoomrl.run_setup import new_run_dir, set_aside_rows_after


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    cfg = load_config("tiny-cpu", [f"run.runs_dir={tmp_path}"])
    start, made = threading.Barrier(8), []

    def make() -> None:
        start.wait()
        made.append(new_run_dir(cfg))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 8 and len(set(made)) == 8
    assert all((run_dir / "config.yaml").is_file() for run_dir in made)


def test_resume_sets_aside_the_rows_past_the_checkpoint(tmp_path):
    rows = [{"step": s, "batch": [f"g{s}"]} for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                            + '{"step": 5, "ba')  # a row cut by the kill
    (tmp_path / "trajectories.jsonl").write_text(
        "".join(json.dumps({"step": s, "index": i}) + "\n" for s in (1, 2, 3) for i in range(2)))
    moved = set_aside_rows_after(tmp_path, 2)
    assert sorted(p.name for p in moved) == ["metrics.jsonl.before-resume-2",
                                             "trajectories.jsonl.before-resume-2"]
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == rows[:2]
    aside = (tmp_path / "metrics.jsonl.before-resume-2").read_text().splitlines()
    assert [json.loads(line)["step"] for line in aside[:2]] == [3, 4] and aside[2] == '{"step": 5, "ba'
    steps = [json.loads(line)["step"] for line in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    assert steps == [1, 1, 2, 2]
    assert set_aside_rows_after(tmp_path, 2) == []  # nothing past step 2 any more
