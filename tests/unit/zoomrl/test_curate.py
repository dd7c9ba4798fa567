"""`zoomrl curate`: the verdicts, the crop, label checks, resuming (fast), and one end-to-end run
through the real vLLM CPU engine with scripted answers (slow)."""

from __future__ import annotations

import pytest

from core.config import ConfigError, load_config
from core.data import read_samples, write_samples
from core.images import decode_image
from core.synth import make_sample
from tests.helpers.curation import curation_rows
from zoomrl.curate import (
    Progress,
    crop_box,
    difficulty_verdict,
    perception_verdict,
    read_rows,
    run_curate,
    with_ground_truth_crop,
)


def test_difficulty_keeps_items_solved_sometimes():
    assert [difficulty_verdict("x", c, 4).kept for c in range(5)] == [False, True, True, True, False]
    assert difficulty_verdict("x", 0, 4).reason == "never solved"
    assert difficulty_verdict("x", 4, 4).reason == "always solved"
    assert difficulty_verdict("x", 1, 4).detail == "solved 1/4"


def test_perception_keeps_items_the_crop_makes_easier():
    assert perception_verdict("x", 3, 1, 4).kept and perception_verdict("x", 3, 1, 4).reason == "crop helps"
    assert not perception_verdict("x", 1, 1, 4).kept and not perception_verdict("x", 0, 2, 4).kept
    assert perception_verdict("x", 1, 2, 4).detail == "crop solved 1/4, full image 2/4"


def test_crop_box_widens_the_union_and_clips():
    assert crop_box([[100, 100, 140, 120]], 1000, 1000, 0.5) == (80, 90, 160, 130)
    assert crop_box([[10, 10, 50, 50], [900, 900, 990, 950]], 1000, 1000, 0.5) == (0, 0, 1000, 1000)
    assert crop_box([[100, 100, 140, 120]], 1000, 1000, 0.0) == (100, 100, 140, 120)


def test_ground_truth_crop_replaces_the_image():
    sample = make_sample(0, 512, 0, "train")
    cropped = with_ground_truth_crop(sample, 0.5, 10**8)
    image = decode_image(cropped.images[0], 10**8)
    x1, y1, x2, y2 = crop_box(sample.gt_boxes, 512, 512, 0.5)
    assert image.size == (x2 - x1, y2 - y1) and cropped.gt_boxes == []
    assert cropped.question == sample.question and cropped.id == sample.id


def test_label_stage_drops_bad_rows_with_file_row_and_column(tmp_path):
    path = str(write_samples(curation_rows(), tmp_path / "rows.parquet"))
    rows, verdicts = read_rows(path, 10**8)
    assert [s.id for s in rows] == ["rows:0", "rows:1", "rows:2", "rows:3", "rows:8"]
    assert rows[-1].answer == "A"  # standardized from the option text
    dropped = {v.id: v.detail for v in verdicts if not v.kept}
    assert set(dropped) == {"rows:4", "rows:5", "rows:6", "rows:7"}
    assert "rows.parquet: row 4, column 'reward_model': the answer 'E' is not among" in dropped["rows:4"]
    assert "row 5, column 'extra_info'.gt_boxes[0]" in dropped["rows:5"]
    assert "row 6, column 'images'[0]: cannot decode image" in dropped["rows:6"]
    assert "row 7, column 'extra_info': the answer 'B' is an option letter" in dropped["rows:7"]


def test_progress_file_resumes_and_refuses_other_settings(tmp_path):
    path = tmp_path / "out.progress.jsonl"
    progress = Progress(path, {"k": 2})
    progress.add(difficulty_verdict("a", 1, 2))
    progress.close()
    with open(path, "a") as sink:
        sink.write('{"stage": "difficulty", "id": "b", "ke')  # cut short by an interruption
    again = Progress(path, {"k": 2})
    assert again.resumed == 1 and again.get("difficulty", "a") == difficulty_verdict("a", 1, 2)
    assert again.get("difficulty", "b") is None
    again.close()
    with pytest.raises(ConfigError, match="written with other settings"):
        Progress(path, {"k": 4})


def test_a_finished_progress_file_reruns_without_an_engine(tmp_path, tiny_model_path, monkeypatch):
    """Everything sampled already: curate writes its outputs from the progress file alone (it
    neither samples nor cuts the ground-truth crops again)."""
    def no_crop(*args):
        raise AssertionError("a crop was cut for a row whose verdict the progress file holds")
    monkeypatch.setattr("zoomrl.curate.with_ground_truth_crop", no_crop)
    data = str(write_samples(curation_rows(), tmp_path / "rows.parquet"))
    cfg = load_config(None, ["curate.k=2"])
    out = tmp_path / "kept.parquet"
    settings = {"data": str((tmp_path / "rows.parquet").resolve()), "model": tiny_model_path, "k": 2,
                "temperature": 1.0, "crop_context": 0.5}
    progress = Progress(out.with_suffix(".progress.jsonl"), settings)
    counts = [("rows:0", 2), ("rows:1", 1), ("rows:2", 1), ("rows:3", 0), ("rows:8", 1)]
    for sample_id, correct in counts:
        progress.add(difficulty_verdict(sample_id, correct, 2))
    progress.add(perception_verdict("rows:1", 2, 1, 2))  # here the crop helped
    progress.close()
    report = run_curate(cfg, tiny_model_path, data, out, show=lambda line: None)
    assert report["resumed_verdicts"] == 6 and report["tokens_per_s"] == 0.0  # nothing sampled
    assert [s.id for s in read_samples(out)] == ["kept:1", "kept:2", "kept:8"]
