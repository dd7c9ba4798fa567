import base64
import csv
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.data import DataError, read_samples, sample_to_row, write_samples
from core.images import encode_png
from core.synth import make_sample


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


# --- the layouts people have (issue 14, item 3) ------------------------------------------------

IMAGE = encode_png(np.zeros((64, 80, 3), dtype=np.uint8))


def release_row(index, user_text, answer, **extra):
    """A release-layout row as the DeepEyes files have it: no choices field, one image."""
    return {"data_source": "chart", "prompt": [{"role": "user", "content": f"<image>\n{user_text}"}],
            "images": [{"bytes": IMAGE, "path": None}],
            "reward_model": {"ground_truth": answer, "style": "model"},
            "extra_info": {"question": user_text, "answer": answer, "index": index, **extra},
            "env_name": "visual_toolbox_v2", "ability": "chart"}


@pytest.mark.parametrize("lines", [["(A) red", "(B) blue", "(C) green"], ["A. red", "B. blue", "C. green"],
                                   ["A) red", "B) blue", "C) green"]])
def test_release_rows_take_their_options_from_the_prompt_lines(tmp_path, lines):
    """Before: choices [] (eval refused the row: 'an option letter but the row lists no choices')."""
    text = "What colour is the car?\n" + "\n".join(lines) + "\nAnswer with the option's letter."
    path = _write_rows(tmp_path / "chart.parquet", [release_row(0, text, "C")])
    [sample] = read_samples(path)
    assert sample.choices == ["red", "blue", "green"] and sample.answer == "C"
    assert sample.question == "What colour is the car?"  # the question alone, for the judge
    assert sample.messages[0]["content"] == f"<image>\n{text}"  # the prompt as released


def test_a_letter_answer_with_options_from_the_prompt_scores_the_option_text(tmp_path):
    """Before: 'C. green' against 'C' with no choices was undecided (None), scored 0."""
    from rewards.rules import rule_accuracy

    text = "What colour is the car?\nA. red\nB. blue\nC. green"
    [sample] = read_samples(_write_rows(tmp_path / "chart.parquet", [release_row(0, text, "C")]))
    assert rule_accuracy("C. green", sample) == 1.0
    assert rule_accuracy("green", sample) == 1.0 and rule_accuracy("C", sample) == 1.0
    assert rule_accuracy("B. blue", sample) == 0.0


def test_prompt_options_are_taken_only_for_a_letter_or_an_option_answer(tmp_path):
    text = "How many bars are there?\nA. 3\nB. 4"
    rows = [release_row(0, text, "4"), release_row(1, "Which curve peaks first?\nA. the red one\n"
                                                  "B. the blue one", "a curve that is not listed")]
    by_text, open_answer = read_samples(_write_rows(tmp_path / "chart.parquet", rows))
    assert by_text.choices == ["3", "4"] and by_text.answer == "4"
    assert open_answer.choices == []  # an open question that happens to show lines like options


def test_a_letter_answer_without_options_anywhere_is_refused_by_every_reader(tmp_path):
    path = _write_rows(tmp_path / "chart.parquet", [release_row(0, "Which one is tallest?", "B")])
    with pytest.raises(DataError, match=r"chart.parquet: row 0, column 'extra_info': the answer 'B' is an "
                                        r"option letter but the row lists no choices"):
        read_samples(path)


def test_duplicate_index_is_refused_naming_the_file_and_both_rows(tmp_path):
    """Before: read_samples (train, rollout) returned all rows; the driver's dict kept 6 of 8."""
    rows = [release_row(i, "What is shown?", "a cat") for i in (0, 1, 2, 1)]
    path = _write_rows(tmp_path / "dup.parquet", rows)
    with pytest.raises(DataError, match=r"dup.parquet: rows 1 and 3 have the same id 'dup:1' "
                                        r"\(column 'extra_info.index'\)"):
        read_samples(path)


def test_the_same_ids_in_two_files_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write_rows(tmp_path / "a" / "train.parquet", [release_row(0, "Q?", "a cat")])
    second = _write_rows(tmp_path / "b" / "train.parquet", [release_row(0, "Q?", "a cat")])
    with pytest.raises(DataError, match=r"b/train.parquet: row 0 has the id 'train:0' of .*a/train.parquet "
                                        r"row 0"):
        read_samples([first, second])


def test_a_box_outside_the_image_is_refused_by_read_samples(tmp_path):
    """Before: only eval and curate checked boxes; train and rollout took the row."""
    rows = [release_row(0, "Where is the cat?", "left", gt_boxes=[[10.0, 10.0, 40.0, 40.0]]),
            release_row(1, "Where is the cat?", "left", gt_boxes=[[10.0, 10.0, 90.0, 40.0]])]
    path = _write_rows(tmp_path / "boxes.parquet", rows)
    with pytest.raises(DataError, match=r"boxes.parquet: row 1, column 'extra_info'.gt_boxes\[0\]: box "
                                        r"\[10.0, 10.0, 90.0, 40.0\] is not inside the 80x64 image"):
        read_samples(path)


def vstar_rows(question_column):
    """Rows as lmms-lab/vstar-bench distributes them (its parquet names the question `text`)."""
    return [{"image": {"bytes": IMAGE, "path": f"sa_{i}.jpg"},
             question_column: "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n"
                              "(D) leather\nAnswer with the option's letter from the given choices directly.",
             "label": label, "category": "direct_attributes", "question_id": str(i)}
            for i, label in enumerate(["A", "D"])]


@pytest.mark.parametrize("question_column", ["text", "question"])
def test_vstar_as_lmms_lab_distributes_it(tmp_path, question_column):
    path = _write_rows(tmp_path / "vstar_bench.parquet", vstar_rows(question_column))
    first, second = read_samples(path)
    assert first.id == "vstar_bench:0" and second.id == "vstar_bench:1"
    assert first.choices == ["rubber", "cotton", "kevlar", "leather"]
    assert (first.answer, second.answer) == ("A", "D")
    assert first.question == "What is the material of the glove?"
    assert first.messages == [{"role": "user", "content": "<image>\n" + vstar_rows("q")[0]["q"]}]
    assert first.extra == {"category": "direct_attributes"} and first.images == [IMAGE]


def hr_bench_rows():
    return [{"index": i, "question": 'What does the sign say? ("exit" or not)', "A": "exit", "B": "entry",
             "C": "stop", "D": "none", "answer": answer, "category": "single", "cycle_category": "0",
             "image": base64.b64encode(IMAGE).decode()} for i, answer in enumerate(["A", "C"])]


def write_tsv(path, rows):
    """A TSV as VLMEvalKit writes it (pandas to_csv(sep='\\t'): header, minimal quoting)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", ["tsv", "parquet"])
def test_hr_bench_as_vlmevalkit_tsv_and_as_parquet(tmp_path, suffix):
    path = tmp_path / f"hr_bench_4k.{suffix}"
    write_tsv(path, hr_bench_rows()) if suffix == "tsv" else _write_rows(path, hr_bench_rows())
    first, second = read_samples(path)
    assert (first.id, second.id) == ("hr_bench_4k:0", "hr_bench_4k:1")
    assert first.choices == ["exit", "entry", "stop", "none"] and (first.answer, second.answer) == ("A", "C")
    assert first.question == 'What does the sign say? ("exit" or not)' and first.images == [IMAGE]
    assert first.extra == {"category": "single", "cycle_category": "0"}
    assert "A. exit\nB. entry\nC. stop\nD. none" in first.messages[0]["content"]


def test_vlmevalkit_rows_that_share_an_image_name_the_row_holding_it(tmp_path):
    """VLMEvalKit writes a shared image once; the other rows' `image` cell holds that row's index."""
    rows = hr_bench_rows() + hr_bench_rows()
    for i, row in enumerate(rows):
        row["index"] = 100 + i
    rows[2]["image"] = rows[3]["image"] = "100"
    samples = read_samples(write_tsv(tmp_path / "hr_bench_8k.tsv", rows))
    assert [s.id for s in samples] == ["hr_bench_8k:100", "hr_bench_8k:101", "hr_bench_8k:102",
                                       "hr_bench_8k:103"]
    assert all(s.images == [IMAGE] for s in samples)


def test_a_benchmark_row_without_options_names_the_question_column(tmp_path):
    rows = vstar_rows("text")
    rows[1]["text"] = "What is the material of the glove?"
    with pytest.raises(DataError, match=r"vstar_bench.parquet: row 1, column 'text': no lists of option "
                                        r"lines"):
        read_samples(_write_rows(tmp_path / "vstar_bench.parquet", rows))


def test_data_files_are_checked_cheaply_before_a_run(tmp_path):
    from core.data import check_data_files

    with pytest.raises(DataError, match=r"data.train_files: .*nope.parquet: no such file"):
        check_data_files([str(tmp_path / "nope.parquet")], "data.train_files")
    odd = _write_rows(tmp_path / "odd.parquet", [{"question": "q"}])
    with pytest.raises(DataError, match=r"data.test_files: .*odd.parquet: neither the DeepEyes release"):
        check_data_files([str(odd)], "data.test_files")
    check_data_files([str(write_tsv(tmp_path / "hr.tsv", hr_bench_rows()))], "data.test_files")


@pytest.mark.parametrize("value", ["train.parquet", "[train.parquet]"])
def test_train_files_takes_one_path_or_a_list(tmp_path, value):
    from core.config import load_config

    assert list(load_config(None, [f"data.train_files={value}"]).data.train_files) == ["train.parquet"]
    yaml = tmp_path / "run.yaml"
    yaml.write_text(f"data:\n  train_files: {value}\n  test_files: vstar_bench.parquet\n")
    cfg = load_config(str(yaml))
    assert list(cfg.data.train_files) == ["train.parquet"]
    assert list(cfg.data.test_files) == ["vstar_bench.parquet"]


def test_ensure_data_names_the_key_and_the_file_it_cannot_use(tmp_path):
    from core.config import load_config
    from zoomrl.run_setup import ensure_data

    good = _write_rows(tmp_path / "train.parquet", [release_row(0, "Q?", "a cat")])
    missing = load_config(None, [f"data.train_files={good}",
                                 f"data.test_files={tmp_path}/vstar_bench.parquet"])
    with pytest.raises(DataError, match=r"data.test_files: .*vstar_bench.parquet: no such file"):
        ensure_data(missing)
    (tmp_path / "notes.tsv").write_text("")
    with pytest.raises(DataError, match=r"data.train_files: .*notes.tsv: empty file"):
        ensure_data(load_config(None, [f"data.train_files={tmp_path}/notes.tsv"]))
    assert ensure_data(load_config(None, [f"data.train_files={good}"])) == ([str(good)], [])


def test_rollout_refuses_duplicate_ids_before_any_engine_starts(tmp_path, capsys, tiny_model_path):
    """Before: rollout read the file without a check and wrote two prompts under the id 'dup:1'."""
    from zoomrl.cli import main

    rows = [release_row(i, "What is shown?", "a cat") for i in (0, 1, 2, 1)]
    path = _write_rows(tmp_path / "dup.parquet", rows)
    assert main(["rollout", "--data", str(path), "--out", str(tmp_path / "out.jsonl")]) == 2
    assert "dup.parquet: rows 1 and 3 have the same id 'dup:1'" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
