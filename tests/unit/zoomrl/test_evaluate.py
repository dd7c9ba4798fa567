"""`zoomrl eval`: report arithmetic, the V* / HR-Bench layout, option shuffling, label checks,
compare (fast), and one end-to-end run through the real vLLM CPU engine (slow)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.prompt import INSTRUCTION, render_prompt, tool_response
from core.config import load_config
from core.data import (
    DataError,
    benchmark_row_to_sample,
    check_labels,
    file_layout,
    read_samples,
    write_samples,
)
from core.images import encode_png
from core.options import shuffle_options
from core.synth import make_sample
from tests.helpers.records import record
from zoomrl.cli import main
from zoomrl.evaluate import (
    compare_reports,
    figures,
    load_eval_sets,
    report_table,
    set_reports,
    wilson_interval,
)

IMAGE = encode_png(np.zeros((64, 80, 3), dtype=np.uint8))


# --- arithmetic ---------------------------------------------------------------------------------

def test_wilson_interval_matches_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # z^2 / (n + z^2)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_figures_count_what_the_records_say():
    records = [record("q1", 1.0, calls=[""], iou=0.5), record("q2", 0.0, calls=["bad box", ""], iou=0.1),
               record("q3", 0.0, prediction=None, fmt=-1.0), record("q4", 1.0, judged=1.0),
               record("q5", 0.0, undecided=1.0, calls=["bad box"])]
    f = figures(records)
    assert (f.trajectories, f.questions, f.correct) == (5, 5, 2)
    assert f.accuracy == pytest.approx(0.4)
    assert (f.ci_low, f.ci_high) == pytest.approx(wilson_interval(2, 5))
    assert f.tool_calls_per_trajectory == pytest.approx(4 / 5)
    assert f.zoom_share == pytest.approx(2 / 5)  # a failed call is no zoom
    assert f.grounding_iou == pytest.approx(0.3) and f.grounded_trajectories == 2
    assert (f.no_answer, f.format_errors, f.undecided, f.judged) == (1, 1, 1, 1)
    assert figures([]).grounding_iou is None


def test_set_reports_split_by_file_then_category():
    records = [record("a:0", 1.0, eval_set="a", category="FSP"),
               record("a:1", 0.0, eval_set="a", category="FCP"),
               record("a:2", 1.0, eval_set="a", category="FSP"), record("b:0", 0.0, eval_set="b")]
    reports = set_reports(records)
    assert list(reports) == ["a", "b"]
    assert reports["a"].overall.trajectories == 3 and reports["a"].overall.correct == 2
    assert reports["a"].categories["FSP"].accuracy == 1.0 and reports["a"].categories["FCP"].accuracy == 0.0
    assert reports["b"].categories["c"].trajectories == 1


def report_dict(model, overall, sets):
    def fig(trajectories, accuracy):
        correct = round(trajectories * accuracy)
        return dataclasses.asdict(figures([record(f"q{i}", float(i < correct)) for i in range(trajectories)]))
    return {"model": model, "files": ["x.parquet"], "prompt_style": "deepeyes", "shuffle_options": True,
            "shuffle_seed": 0, "n": 1, "temperature": 0.0, "overall": fig(*overall),
            "sets": {name: {"overall": fig(*o), "categories": {c: fig(*v) for c, v in cats.items()}}
                     for name, (o, cats) in sets.items()},
            "response_tokens": 10, "tokens_per_s": 5.0, "generate_s": 2.0, "engine_startup_s": 1.0}


def test_compare_prints_per_category_deltas(tmp_path, capsys):
    a = report_dict("base", (20, 0.5), {"vstar": ((20, 0.5), {"direct_attributes": (10, 0.4),
                                                              "relative_position": (10, 0.6)})})
    b = report_dict("tuned", (20, 0.75), {"vstar": ((20, 0.75), {"direct_attributes": (10, 0.9),
                                                                 "relative_position": (10, 0.6)}),
                                          "hr_bench_4k": ((4, 0.5), {"FSP": (4, 0.5)})})
    lines = compare_reports(a, b).splitlines()
    row = {line.split()[0]: line.split() for line in lines[3:]}
    assert row["all"][-1] == "+25.0"
    assert row["direct_attributes"][-1] == "+50.0" and row["relative_position"][-1] == "+0.0"
    assert row["hr_bench_4k"][1:3] == ["-", "-"] and row["hr_bench_4k"][-1] == "-"
    # the command: zoomrl eval compare A.json B.json
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["eval", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "+50.0" in capsys.readouterr().out
    assert main(["eval", "compare", str(tmp_path / "a.json")]) == 2


def test_report_table_has_a_row_per_set_and_category():
    report = report_dict("m", (20, 0.5), {"vstar": ((20, 0.5), {"direct_attributes": (10, 0.4)})})
    text = report_table(report)
    assert "Wilson" in text and "direct_attributes" in text and " 40.0" in text


# --- the V* / HR-Bench layout --------------------------------------------------------------------

def bench_row(**changes):
    row = {"index": 7, "image": IMAGE, "question": "What colour is the bag?",
           "options": ["red", "blue", "green", "white"], "answer": "B", "category": "FSP"}
    row.update(changes)
    return row


def write_rows(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_benchmark_row_becomes_a_multiple_choice_sample():
    sample = benchmark_row_to_sample(bench_row(), "hr_bench_4k.parquet", 0, 10**8)
    assert sample.id == "hr_bench_4k:7" and sample.data_source == "hr_bench_4k"
    assert sample.choices == ["red", "blue", "green", "white"] and sample.answer == "B"
    assert sample.extra == {"category": "FSP"} and sample.images == [IMAGE]
    assert "A. red\nB. blue\nC. green\nD. white" in sample.messages[0]["content"]
    assert sample.messages[0]["content"].startswith("<image>\nWhat colour is the bag?")


def test_hr_bench_letter_columns_base64_images_and_text_answers(tmp_path):
    row = bench_row(image=base64.b64encode(IMAGE).decode(), answer="green")
    del row["options"]
    row.update(A="red", B="blue", C="green", D="white")
    path = write_rows(tmp_path / "hr_bench_8k.parquet", [row])
    assert file_layout(path).kind == "benchmark"
    [sample] = read_samples(path)
    assert sample.choices == ["red", "blue", "green", "white"] and sample.answer == "C"
    assert sample.images == [IMAGE]


@pytest.mark.parametrize(("change", "message"), [
    ({"answer": "E"}, r"bench.parquet: row 1, column 'answer': 'E' is neither an option letter \(A-D\)"),
    ({"answer": "purple"}, r"row 1, column 'answer': 'purple'"),
    ({"image": b"not an image"}, r"row 1, column 'image': cannot decode image"),
    ({"image": "%" * 80}, r"row 1, column 'image': a string image must be base64"),
    ({"image": "12"}, r"row 1, column 'image': '12' names the image of the row with that index"),
    ({"options": ["red"]}, r"row 1, column 'options': expected a list of at least 2"),
    ({"options": ["red", "Red", "blue"]}, r"row 1, column 'options': options repeat"),
    ({"question": ""}, r"row 1, column 'question'"),
])
def test_bad_benchmark_rows_name_file_row_and_column(tmp_path, change, message):
    # a column holds one type: base64 strings only with base64 strings
    first = bench_row(image=base64.b64encode(IMAGE).decode()) if isinstance(change.get("image"), str) \
        else bench_row()
    path = write_rows(tmp_path / "bench.parquet", [first, bench_row(index=8, **change)])
    with pytest.raises(DataError, match=message):
        read_samples(path)


def test_a_file_of_neither_layout_names_both(tmp_path):
    path = write_rows(tmp_path / "odd.parquet", [{"question": "q", "label": "A"}])
    with pytest.raises(DataError, match=r"odd.parquet: neither the DeepEyes release .* has: question, label"):
        file_layout(path)


# --- option shuffling ----------------------------------------------------------------------------

def test_shuffling_is_fixed_by_the_seed_and_remaps_the_answer():
    samples = [benchmark_row_to_sample(bench_row(index=i, answer="A"), "vstar.parquet", i, 10**8)
               for i in range(40)]
    shuffled = [shuffle_options(s, seed=0) for s in samples]
    again = [shuffle_options(s, seed=0) for s in samples]
    assert [dataclasses.asdict(s) for s in shuffled] == [dataclasses.asdict(s) for s in again]
    letters = Counter(s.answer for s in shuffled)
    assert set(letters) == {"A", "B", "C", "D"} and letters["A"] < 20  # the answer no longer sits at A
    for before, after in zip(samples, shuffled, strict=True):
        assert sorted(after.choices) == sorted(before.choices)
        assert after.choices["ABCD".index(after.answer)] == "red"  # the right text under the new letter
        listed = "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(after.choices))
        assert listed in after.messages[0]["content"]
    other_seed = [shuffle_options(s, seed=1).choices for s in samples]
    assert other_seed != [s.choices for s in shuffled]


def test_shuffling_leaves_open_questions_and_refuses_unlisted_options():
    synth = make_sample(0, 512, 0, "test")
    open_question = dataclasses.replace(synth, choices=[], answer="a red star")
    assert shuffle_options(open_question, 0) is open_question
    unlisted = dataclasses.replace(synth, messages=[{"role": "user", "content": "<image>\nWhich colour?"}])
    with pytest.raises(ValueError, match="does not list the options"):
        shuffle_options(unlisted, 0)


def test_eval_sets_are_checked_and_shuffled_and_errors_name_the_row(tmp_path):
    synth = [make_sample(i, 512, 0, "test") for i in range(6)]
    good = write_samples(synth, tmp_path / "synth.parquet")
    cfg = load_config(None, [])
    questions = load_eval_sets([str(good)], cfg)
    assert [name for name, _ in questions] == ["synth"] * 6
    for (_, sample), original in zip(questions, synth, strict=True):
        assert sample.choices["ABCD".index(sample.answer)] == original.choices["ABCD".index(original.answer)]
    kept = load_eval_sets([str(good)], load_config(None, ["eval.shuffle_options=false"]))
    assert [s.answer for _, s in kept] == [s.answer for s in synth]
    plain = [{"role": "user", "content": "<image>\nQ?"}]
    unlisted = synth[:2] + [dataclasses.replace(synth[2], messages=plain)]
    bad = write_samples(unlisted, tmp_path / "plain.parquet")
    with pytest.raises(DataError, match=r"plain.parquet: row 2, column 'prompt': the prompt does not list"):
        load_eval_sets([str(bad)], cfg)
    with pytest.raises(DataError, match="distinct names"):
        load_eval_sets([str(good), str(good)], cfg)


# --- label checks --------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "message"), [
    ({"answer": "E"}, r"f.parquet: row 3, column 'reward_model': the answer 'E' is not among the 4 choices"),
    ({"choices": [], "answer": "B"}, r"row 3, column 'extra_info': the answer 'B' is an option letter"),
    ({"choices": ["red", "red", "blue", "green"]}, r"row 3, column 'extra_info': choices repeat"),
    ({"gt_boxes": [[400.0, 400.0, 500.0, 513.0]]},
     r"row 3, column 'extra_info'.gt_boxes\[0\]: box \[400.0, 400.0, 500.0, 513.0\] is not inside the "
     r"512x512"),
])
def test_label_checks_name_file_row_and_column(change, message):
    sample = dataclasses.replace(make_sample(0, 512, 0, "train"), **change)
    with pytest.raises(DataError, match=message):
        check_labels(sample, "f.parquet", 3)


def test_consistent_labels_pass():
    sample = make_sample(0, 512, 0, "train")
    check_labels(sample, "f.parquet", 0)
    check_labels(dataclasses.replace(sample, answer=sample.choices[2]), "f.parquet", 0)  # the text
    check_labels(dataclasses.replace(sample, choices=[], answer="a red star"), "f.parquet", 0)  # open


# --- the DeepEyes prompt -------------------------------------------------------------------------

def test_deepeyes_prompt_matches_the_released_format():
    """--prompt deepeyes is rollout.prompt_style=deepeyes, the format actors/prompt.py renders."""
    sample = make_sample(0, 512, 0, "test")
    text = render_prompt(sample, ["image_zoom_in_tool", "image_rotate_tool"])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    assert '"name": "image_zoom_in_tool"' in text and '"bbox_2d"' in text and "<tools>" in text
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nWhat" in text
    assert text.endswith(f"{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    assert "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>" in text
    assert tool_response(with_image=True) == (
        "<|im_start|>user\n<tool_response><|vision_start|><|image_pad|><|vision_end|>"
        f"{INSTRUCTION}</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert tool_response(False, error="box outside").startswith("<|im_start|>user\nError: box outside")
    assert load_config(None, ["rollout.prompt_style=deepeyes"]).rollout.prompt_style == "deepeyes"


def test_eval_flags_are_checked_before_any_engine_starts(capsys):
    assert main(["eval"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["eval", "--out", "r.json", "--data", "rollout.n=2"]) == 2
    assert "--data took 'rollout.n=2', which is no file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--out", "r.json", "--prompt", "plain"])


# --- end to end on the tiny model (slow) ---------------------------------------------------------

def test_read_samples_loads_written_benchmark_rows(tmp_path):
    """A benchmark row converted and written in the release format reads back as training data."""
    sample = benchmark_row_to_sample(bench_row(), "vstar.parquet", 0, 10**8)
    path = write_samples([sample], tmp_path / "converted.parquet")
    [again] = read_samples(path)
    assert again.choices == sample.choices and again.answer == "B" and again.extra["category"] == "FSP"


# --- the layouts people have (issue 14, item 3) ------------------------------------------------

def test_option_lines_are_found_in_each_style_and_only_in_order():
    from core.options import option_blocks

    styles = (["(A) red", "(B) blue"], ["A. red", "B. blue"], ["A) red", "B) blue"], ["A: red", "B: blue"])
    for lines in styles:
        [block] = option_blocks("Which colour?\n" + "\n".join(lines) + "\nAnswer.")
        assert block.options == ["red", "blue"] and block.start == len("Which colour?\n")
    assert option_blocks("Q?\nA. red\n(B) blue") == []  # two styles: no list
    assert option_blocks("Q?\nB. red\nC. blue") == []  # not from A
    assert option_blocks("Q?\nA. red") == []  # one option is no choice
    assert option_blocks("Plan A. then B.\nA.red") == []
    assert [b.options for b in option_blocks("A. x\nB. y\n\nA. z\nB. w")] == [["x", "y"], ["z", "w"]]


def inline_release_rows(n):
    """Release rows whose options exist only as '(A) ...' lines of the prompt, answer a letter."""
    text = ("What colour is the bag?\n(A) red\n(B) blue\n(C) green\n(D) white\n"
            "Answer with the option's letter from the given choices directly.")
    return [{"data_source": "vstar", "prompt": [{"role": "user", "content": f"<image>\n{text}"}],
             "images": [{"bytes": IMAGE}], "reward_model": {"ground_truth": "A", "style": "model"},
             "extra_info": {"question": text, "answer": "A", "index": i}} for i in range(n)]


def test_eval_reads_release_rows_with_options_only_in_the_prompt_and_shuffles_them(tmp_path):
    """Before: load_eval_sets refused the file ('the answer 'A' is an option letter but the row
    lists no choices')."""
    path = write_rows(tmp_path / "inline.parquet", inline_release_rows(12))
    questions = load_eval_sets([path], load_config(None, []))
    assert len(questions) == 12
    answers = Counter(sample.answer for _, sample in questions)
    assert len(answers) > 1  # the answer no longer always sits at A
    for _, sample in questions:
        assert sample.choices["ABCD".index(sample.answer)] == "red"
        listed = "\n".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(sample.choices))
        assert listed in sample.messages[0]["content"]  # rewritten in the style it was found in
        assert sample.messages[0]["content"].endswith("given choices directly.")
    kept = load_eval_sets([path], load_config(None, ["eval.shuffle_options=false"]))
    assert {s.answer for _, s in kept} == {"A"}


def test_eval_reads_vstar_from_lmms_lab_and_hr_bench_tsv(tmp_path):
    """Before: the V* parquet (options inline, no options column) and any TSV were refused."""
    vstar = write_rows(tmp_path / "vstar_bench.parquet", [
        {"image": {"bytes": IMAGE, "path": "a.jpg"}, "question_id": str(i), "category": "relative_position",
         "text": "Is the cup on the left or right of the plate?\n(A) left\n(B) right\n"
                 "Answer with the option's letter from the given choices directly.", "label": "B"}
        for i in range(4)])
    tsv = tmp_path / "hr_bench_8k.tsv"
    tsv.write_text("index\tquestion\tA\tB\tC\tD\tanswer\tcategory\tcycle_category\timage\n" + "".join(
        f"{i}\tWhat is written on the sign?\tstop\tgo\tyield\tslow\tC\tcross\t{i % 2}\t"
        f"{base64.b64encode(IMAGE).decode()}\n" for i in range(4)))
    questions = load_eval_sets([vstar, str(tsv)], load_config(None, []))
    assert [name for name, _ in questions] == ["vstar_bench"] * 4 + ["hr_bench_8k"] * 4
    for name, sample in questions:
        right = "right" if name == "vstar_bench" else "yield"
        assert sample.choices["ABCD".index(sample.answer)] == right
    assert {s.extra["category"] for _, s in questions} == {"relative_position", "cross"}
