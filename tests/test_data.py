import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zoomrl.data import DataError, read_samples, sample_to_row, write_samples
from zoomrl.images import encode_png
from zoomrl.synth import make_sample


def test_synthetic_parquet_round_trips(synth_dir, tmp_path):
    samples = read_samples(synth_dir / "train.parquet")
    assert len(samples) == 8
    write_samples(samples, tmp_path / "train.parquet")
    again = read_samples(tmp_path / "train.parquet")
    assert [dataclasses.asdict(s) for s in again] == [dataclasses.asdict(s) for s in samples]


def test_synthetic_rows_equal_the_generator(synth_dir):
    sample = read_samples(synth_dir / "test.parquet")[2]
    assert dataclasses.asdict(sample) == dataclasses.asdict(make_sample(2, 1024, 0, "test"))


def test_release_layout_with_struct_extra_info_and_plain_bytes(tmp_path):
    """The released files: images as plain bytes, extra_info as a struct, no choices/boxes."""
    image = encode_png(np.zeros((64, 64, 3), dtype=np.uint8))
    table = pa.Table.from_pylist([{
        "data_source": "vstar",
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "<image>\nQ?"}],
        "images": [image],
        "reward_model": {"ground_truth": "a cat", "style": "model"},
        "extra_info": {"question": "Q?", "answer": "a cat", "index": 7},
        "env_name": "visual_toolbox_v2",
        "ability": "vqa",
    }])
    pq.write_table(table, tmp_path / "vstar.parquet")
    [sample] = read_samples(tmp_path / "vstar.parquet")
    assert sample.id == "vstar:7" and sample.answer == "a cat" and sample.reward_style == "model"
    assert sample.images == [image] and sample.choices == [] and sample.gt_boxes == []
    assert sample.messages[0] == {"role": "system", "content": "sys"}


def _write_rows(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _good_row():
    return sample_to_row(make_sample(0, 512, 0, "train"), 0)


def test_missing_column_names_file_and_column(tmp_path):
    row = _good_row()
    del row["reward_model"]
    path = _write_rows(tmp_path / "bad.parquet", [row])
    with pytest.raises(DataError, match=r"bad.parquet: missing column\(s\) reward_model"):
        read_samples(path)


def test_corrupt_image_names_file_row_and_column(tmp_path):
    rows = [_good_row(), _good_row()]
    rows[1]["images"] = [{"bytes": b"\x89PNG broken"}]
    path = _write_rows(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError, match=r"bad.parquet: row 1, column 'images'\[0\]: cannot decode"):
        read_samples(path)


def test_pixel_bomb_is_refused_at_load(tmp_path):
    path = _write_rows(tmp_path / "big.parquet", [_good_row()])
    with pytest.raises(DataError, match="over the limit"):
        read_samples(path, max_decoded_pixels=1000)


def test_placeholder_count_must_match_images(tmp_path):
    row = _good_row()
    row["prompt"] = [{"role": "user", "content": "no placeholder here"}]
    path = _write_rows(tmp_path / "bad.parquet", [row])
    with pytest.raises(DataError, match=r"row 0, column 'prompt': 0 '<image>' placeholders but 1"):
        read_samples(path)


def test_bad_box_names_the_column(tmp_path):
    row = _good_row()
    row["extra_info"]["gt_boxes"] = [[10.0, 10.0, 5.0, 20.0]]
    path = _write_rows(tmp_path / "bad.parquet", [row])
    with pytest.raises(DataError, match=r"row 0, column 'extra_info'.gt_boxes: box .* has no area"):
        read_samples(path)


def test_missing_answer_is_refused(tmp_path):
    row = _good_row()
    row["reward_model"] = {"ground_truth": "", "style": "rule"}
    row["extra_info"].pop("answer")
    path = _write_rows(tmp_path / "bad.parquet", [row])
    with pytest.raises(DataError, match="no ground_truth"):
        read_samples(path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("hello")
    with pytest.raises(DataError, match="cannot read as parquet"):
        read_samples(path)
