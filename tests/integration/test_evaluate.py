"""`zoomrl eval` run as a user runs it, on scripted turns through the real vLLM CPU engine: its report
against the records it saved."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from zoomrl.cli import main

FORCING = "actors.forcing:ForcedTurnsLogitsProcessor"


ZOOM = ('<think>too small, zoom in</think><tool_call>{"name": "image_zoom_in_tool", '
        '"arguments": {"bbox_2d": [0, 0, 447, 448]}}</tool_call>')  # all of it would be an error


ANSWER = "<think>now I see it</think><answer>A</answer><|im_end|>"


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """`zoomrl eval` on the embedded default's test split (6 rows of 512 px here), the tiny model,
    one engine; every trajectory scripted: a zoom on nearly all the image, then the answer A."""
    out = tmp_path_factory.mktemp("eval") / "report.json"
    script = json.dumps([ZOOM, ANSWER])
    result = subprocess.run(
        [sys.executable, "-m", "zoomrl.cli", "eval", "--out", str(out), "--prompt", "deepeyes",
         "data.synth.n_train=2", "data.synth.n_test=6", "data.synth.image_size=512",
         "data.synth.seed=3",
         f"rollout.engine.logits_processors=[{FORCING}]",
         f"rollout.sampling_extra_args.forced_turns={script}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    records = [json.loads(line) for line in open(report["trajectories_file"])]
    return result, report, records, out


def test_eval_report_arithmetic_matches_the_saved_records(eval_run):
    result, report, records, out = eval_run
    assert report["prompt_style"] == "deepeyes" and report["shuffle_options"] and report["n"] == 1
    assert report["tools"] == ["image_zoom_in_tool"]  # as in training; rotate only when asked
    [synth_set] = report["sets"]
    assert len(records) == 6 == report["overall"]["trajectories"]
    assert report["sets"][synth_set]["overall"]["questions"] == 6
    for r in records:  # same record format as zoomrl rollout, plus the eval keys
        assert {"group_id", "sample_id", "answer", "choices", "gt_boxes", "tool_calls", "reward_parts",
                "response_text", "end_reason"} <= set(r)
        assert r["prediction"] == "A" and r["end_reason"] == "answer"
        assert r["reward_parts"]["acc"] == float(r["answer"] == "A")
    assert len({r["answer"] for r in records}) > 1  # shuffled: the answers are not all at A
    correct = sum(r["answer"] == "A" for r in records)
    assert 0 < correct < 6
    assert report["overall"]["correct"] == correct
    assert report["overall"]["accuracy"] == pytest.approx(correct / 6)
    # Wilson 95%, computed here from the counts
    z, p = 1.959963984540054, correct / 6
    center = (p + z * z / 12) / (1 + z * z / 6)
    half = z * np.sqrt(p * (1 - p) / 6 + z * z / 144) / (1 + z * z / 6)
    ci = (report["overall"]["ci_low"], report["overall"]["ci_high"])
    assert ci == pytest.approx((center - half, center + half))
    for category, fig in report["sets"][synth_set]["categories"].items():
        mine = [r for r in records if r["category"] == category]
        assert fig["trajectories"] == len(mine)
        assert fig["correct"] == sum(r["answer"] == "A" for r in mine)
    assert sum(f["trajectories"] for f in report["sets"][synth_set]["categories"].values()) == 6
    # every trajectory zoomed once on nearly the whole 512 px image (seen at 448 px: 511 x 512 px)
    overall = report["overall"]
    assert overall["zoom_share"] == 1.0 and overall["tool_calls_per_trajectory"] == 1.0
    ious = []
    for r in records:
        assert r["tool_calls"][0]["box_original"] == pytest.approx([0, 0, 512, 512], abs=1)
        ious.append(max(_iou(r["tool_calls"][0]["box_original"], gt) for gt in r["gt_boxes"]))
    assert overall["grounding_iou"] == pytest.approx(np.mean(ious)) and overall["grounding_iou"] > 0
    assert overall["grounded_trajectories"] == 6
    assert overall["no_answer"] == overall["format_errors"] == overall["undecided"] == 0
    assert report["tokens_per_s"] > 0
    assert report["response_tokens"] == sum(r["response_tokens"] for r in records)
    table = out.with_suffix(".txt").read_text()
    assert "Wilson" in table and table in result.stdout
    assert "eval questions 6/6 (100%)" in result.stdout  # progress, as a log gets it


def test_eval_compare_of_a_report_with_itself_is_all_zero(eval_run, capsys):
    _, _, _, out = eval_run
    assert main(["eval", "compare", str(out), str(out)]) == 0
    deltas = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[3:]]
    assert deltas and set(deltas) == {"+0.0"}


def _iou(a, b):
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
