"""`zoomrl curate` end to end on the tiny model (real vLLM CPU engine)."""

from __future__ import annotations

import json
import subprocess
import sys

from core.data import read_samples, write_samples
from tests.helpers.curation import curation_rows


def expected_report_checks(report: dict, kept_path) -> None:
    stages = report["stages"]
    assert report["rows"] == 9 and report["kept"] == 2
    assert stages["labels"]["dropped"] == 4 and stages["labels"]["kept"] == 5
    assert stages["difficulty"]["in"] == 5
    assert stages["difficulty"]["dropped_by_reason"] == {"always solved": 1, "never solved": 1}
    assert report["difficulty_histogram"] == {"0": 1, "1": 3, "2": 1}
    assert stages["perception"]["in"] == 1
    assert stages["perception"]["dropped_rows"] == [
        {"id": "rows:1", "reason": "crop does not help", "detail": "crop solved 1/2, full image 1/2"}]
    assert report["perception_not_applicable"] == 2
    kept = read_samples(kept_path)  # the curated file loads as training data
    assert [s.id for s in kept] == ["kept:2", "kept:8"] and [s.answer for s in kept] == ["A", "A"]


def test_curate_end_to_end_on_the_tiny_model(tmp_path):
    """Trajectory 0 of each group answers 'A', trajectory 1 'A. red' (forcing logits processor), so
    each row's count of right answers is known; then a rerun resumes without sampling again."""
    data = write_samples(curation_rows(), tmp_path / "rows.parquet")
    out = tmp_path / "kept.parquet"
    scripts = json.dumps([["<think>a</think><answer>A</answer><|im_end|>"],
                          ["<think>a</think><answer>A. red</answer><|im_end|>"]])
    command = [sys.executable, "-m", "zoomrl.cli", "curate", "--data", str(data), "--out", str(out),
               "curate.k=2", "rollout.max_tokens_per_turn=32",
               "rollout.engine.logits_processors=[actors.forcing:ForcedTurnsLogitsProcessor]",
               f"rollout.sampling_extra_args.forced_turns_by_trajectory={scripts}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # progress in a log (not a terminal): a plain line per row here (5 rows: each is 20%)
    assert "difficulty 5/5 (100%)" in result.stdout and "perception 1/1 (100%)" in result.stdout
    report = json.loads(out.with_suffix(".report.json").read_text())
    expected_report_checks(report, out)
    assert report["resumed_verdicts"] == 0 and report["tokens_per_s"] > 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "difficulty 5/5" not in again.stdout  # nothing sampled again
    report = json.loads(out.with_suffix(".report.json").read_text())
    expected_report_checks(report, out)
    assert report["resumed_verdicts"] == 6 and report["tokens_per_s"] == 0.0
