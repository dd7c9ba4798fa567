"""Validation during training: its config, the questions it asks and the figures it reports.

The validation itself runs in tests/integration/test_train_e2e.py (a real `zoomrl train`, which validates
every 2 steps as the tiny-cpu preset does) and the per-request sampling in
tests/integration/test_rollout_vllm.py.
"""

from __future__ import annotations

import pytest

from core.config import ConfigError, load_config
from core.data import DataError
from tests.helpers.records import record
from zoomrl.evaluate import load_eval_sets
from zoomrl.run_setup import ensure_data
from zoomrl.validate import val_figures, validation_questions


def test_run_eval_keys_are_checked_and_on_for_tiny_cpu():
    cfg = load_config("tiny-cpu")
    assert (cfg.run.eval_every, cfg.run.eval_max_questions, list(cfg.run.eval_files)) == (2, 4, [])
    assert load_config("qwen2.5-vl-7b").run.eval_every == 0  # off unless a preset or run asks
    with pytest.raises(ConfigError, match=r"run.eval_every=-1: must be >= 0"):
        load_config("tiny-cpu", ["run.eval_every=-1"])
    with pytest.raises(ConfigError, match=r"run.eval_max_questions=-2: must be >= 0"):
        load_config("tiny-cpu", ["run.eval_max_questions=-2"])
    with pytest.raises(ConfigError, match="did you mean run.eval_every"):
        load_config("tiny-cpu", ["run.eval_evry=3"])
    assert list(load_config("tiny-cpu", ["run.eval_files=held.parquet"]).run.eval_files) == ["held.parquet"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The tiny preset's data, made small: (config, train files, test files)."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = load_config("tiny-cpu", [f"model.cache_dir={cache}", "data.synth.n_train=3",
                                   "data.synth.n_test=6", "data.synth.image_size=512"])
    train, test = ensure_data(cfg)
    return cfg, train, test


def test_validation_asks_the_first_held_out_questions_as_eval_does(synthetic):
    cfg, train, test = synthetic
    questions = validation_questions(cfg, test)
    assert questions == load_eval_sets(test, cfg)[:4]  # eval's reading: labels checked, options shuffled
    assert [s.id for _, s in questions] == ["test:0", "test:1", "test:2", "test:3"]  # not train rows
    everything = load_config("tiny-cpu", ["run.eval_max_questions=0"])
    assert len(validation_questions(everything, test)) == 6
    # run.eval_files comes before the test split
    mine = load_config("tiny-cpu", [f"run.eval_files={train[0]}"])
    assert [s.id for _, s in validation_questions(mine, test)] == ["train:0", "train:1", "train:2"]


def test_missing_held_out_files_stop_the_start_naming_the_key(synthetic, tmp_path):
    cfg, _, test = synthetic
    missing = load_config("tiny-cpu", [f"run.eval_files=[{tmp_path / 'held.parquet'}]"])
    with pytest.raises(DataError, match=r"^run.eval_files: .*held.parquet"):
        validation_questions(missing, test)
    with pytest.raises(ConfigError, match=r"run.eval_every=2 needs held-out files: set run.eval_files"):
        validation_questions(cfg, [])


def test_val_figures_name_overall_and_per_category_figures():
    records = [record("q1", 1.0, category="colour", calls=[""], iou=0.5, response_tokens=30),
               record("q2", 0.0, category="colour", calls=["bad box", ""], iou=0.25, response_tokens=60),
               record("q3", 1.0, category="shape", response_tokens=12)]
    assert val_figures(records, seconds=2.5) == {
        "val/accuracy": pytest.approx(2 / 3), "val/tool_calls_per_trajectory": 1.0,
        "val/zoom_share": pytest.approx(2 / 3), "val/n": 3, "val/seconds": 2.5, "val/response_tokens": 34.0,
        "val/grounding_iou": pytest.approx(0.375), "val/accuracy/colour": 0.5, "val/accuracy/shape": 1.0}
    assert "val/grounding_iou" not in val_figures([record("q3", 1.0)], seconds=1.0)  # none zoomed
