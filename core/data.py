"""Read prompt data in the layouts people have, check every row the same way, write the release format.

Files are parquet, or tab-separated text with a header line (`.tsv`, as VLMEvalKit distributes
HR-Bench). Each file is read in one of two layouts, chosen from its columns (`file_layout`):

- release (DeepEyes, ChenShawn/DeepEyes-Datasets-47k): `data_source`, `prompt` (list of
  {role, content}; '<image>' marks each image), `images` (list of {bytes: ...} or of bytes),
  `reward_model` ({ground_truth, style}), `extra_info` ({question, answer, index, ...; zoomrl adds
  choices and gt_boxes}), `env_name`, `ability`. A row without `extra_info.choices` whose prompt
  lists its options as lines ('(A) red', 'A. red', 'A) red') takes them from there when its answer
  is a letter or one option's text.
- benchmark (V*, HR-Bench): one question per row: `image` (encoded bytes, a {bytes, path} struct,
  or base64 text), the question (`question`, or `text` as in lmms-lab/vstar-bench), the options
  (an `options` list, letter columns `A`, `B`, ... as in HR-Bench, or option lines in the question
  text as in V*), the answer (`answer` or `label`: an option letter or an option's text), and
  optionally the id (`index` or `question_id`), `category` and `cycle_category`.

Every command (train, rollout, eval, curate) reads rows through `iter_file`, which checks each
row with `check_labels`: options distinct and the answer among them, a letter answer only with
options, ground-truth boxes inside the image, sample ids unique in the file. Every error names
the file, the row and the column.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from core.choices import choice_index
from core.images import ImageError, decode_image
from core.options import OPTION_LETTERS, option_blocks, render_options, text_before_options
from core.types import Sample

REQUIRED_COLUMNS = ("data_source", "prompt", "images", "reward_model")
IMAGE_PLACEHOLDER = "<image>"
BENCHMARK_COLUMNS = {"question": ("question", "text"), "answer": ("answer", "label"),
                     "id": ("index", "question_id")}
"""The benchmark layout's columns by role, each with the names it goes by (first found wins)."""
BENCHMARK_EXTRA_COLUMNS = ("category", "cycle_category")
"""Benchmark columns kept in Sample.extra (the report groups by category)."""
TSV_SUFFIX = ".tsv"
IMAGE_REFERENCE_CHARS = 64
"""An `image` text this short is VLMEvalKit's reference to another row's image, not base64."""


class DataError(ValueError):
    """A data file or row is malformed; the message names file, row and column."""


# --- files -------------------------------------------------------------------------------------

def _is_tsv(path: str | Path) -> bool:
    return Path(path).suffix.lower() == TSV_SUFFIX


def file_columns(path: str | Path) -> list[str]:
    """Column names of a parquet or TSV file; DataError when it is neither."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    if _is_tsv(path):
        try:
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f, delimiter="\t"), None)
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read as tab-separated text ({err})") from None
        if not header:
            raise DataError(f"{path}: empty file (a TSV needs a header line of column names)")
        return header
    try:
        return pq.ParquetFile(str(path)).schema_arrow.names
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read as parquet ({err})") from None


def _tsv_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(2**31 - 1)  # a base64 image is megabytes in one cell
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            yield {key: value if value != "" else None for key, value in row.items()}


def _file_rows(path: str | Path, batch_rows: int) -> Iterator[dict[str, Any]]:
    if _is_tsv(path):
        yield from _tsv_rows(path)
        return
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


def _is_image_reference(value: Any) -> bool:
    """VLMEvalKit stores a shared image once: other rows' `image` cell holds that row's `index`
    (at most 64 characters, where a base64 image is thousands)."""
    return isinstance(value, str) and len(value) <= IMAGE_REFERENCE_CHARS


def _images_are_text(path: str | Path, names: list[str]) -> bool:
    if "image" not in names:
        return False
    if _is_tsv(path):
        return True
    kind = pq.ParquetFile(str(path)).schema_arrow.field("image").type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def iter_rows(path: str | Path, batch_rows: int = 64) -> Iterator[dict[str, Any]]:
    """The raw rows of a parquet or TSV file, a few at a time (large sets never load whole), with
    VLMEvalKit's image references replaced by the image they name (found by a first pass)."""
    if not _images_are_text(path, file_columns(path)):
        yield from _file_rows(path, batch_rows)
        return
    referenced = {row["image"] for row in _file_rows(path, batch_rows) if _is_image_reference(row["image"])}
    shared: dict[str, str] = {}
    for row in _file_rows(path, batch_rows):
        if _is_image_reference(row["image"]):
            row["image"] = shared.get(row["image"], row["image"])
        elif str(row.get("index")) in referenced:
            shared[str(row["index"])] = row["image"]
        yield row


@dataclass(frozen=True)
class Layout:
    """How the rows of one file are read."""

    kind: str
    """release | benchmark (the module docstring describes both)"""
    question: str = "question"
    """The benchmark layout's question column."""
    answer: str = "answer"
    """The benchmark layout's answer column."""
    id_column: str | None = "index"
    """Where a row's id comes from (None: its row number)."""

    def to_sample(self, row: dict[str, Any], file: str, index: int, max_decoded_pixels: int) -> Sample:
        """Row `index` of `file` as a `Sample`; DataError naming file, row and column."""
        if self.kind == "release":
            return release_row_to_sample(row, file, index, max_decoded_pixels)
        return benchmark_row_to_sample(row, file, index, max_decoded_pixels, self)


RELEASE = Layout("release", id_column="extra_info.index")
BENCHMARK = Layout("benchmark")


def file_layout(path: str | Path) -> Layout:
    """How to read the file, from its columns; DataError naming what is missing."""
    names = file_columns(path)
    if all(c in names for c in REQUIRED_COLUMNS):
        return RELEASE
    found = {role: next((c for c in aliases if c in names), None)
             for role, aliases in BENCHMARK_COLUMNS.items()}
    if "image" in names and found["question"] and found["answer"]:
        return Layout("benchmark", found["question"], found["answer"], found["id"])
    if "prompt" in names:  # meant as a release file
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} of the release layout "
                        f"(have: {', '.join(names)})")
    raise DataError(f"{path}: neither the DeepEyes release layout (columns {', '.join(REQUIRED_COLUMNS)}) "
                    "nor the benchmark layout (columns image, question or text, answer or label; "
                    f"options as a list, as columns A, B, ... or as lines in the question); it has: "
                    f"{', '.join(names)}")


def check_data_files(paths: list[str], key: str) -> None:
    """Cheap check before a run starts: every file exists and has a layout zoomrl reads (only its
    header is read). DataError naming the config key and the file."""
    for path in paths:
        try:
            file_layout(path)
        except DataError as err:
            raise DataError(f"{key}: {err}") from None


# --- columns -----------------------------------------------------------------------------------

def _image_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if _is_image_reference(value):
        raise DataError(f"{where}: {value!r} names the image of the row with that index (VLMEvalKit's "
                        "shared images), but no earlier row has it")
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{where}: a string image must be base64 ({value[:40]!r}...)") from None
    raise DataError(f"{where}: expected image bytes, {{'bytes': ...}} or base64, got {type(value).__name__}")


def _decoded(data: bytes, max_decoded_pixels: int, where: str) -> bytes:
    try:
        decode_image(data, max_decoded_pixels)
    except ImageError as err:
        raise DataError(f"{where}: {err}") from None
    return data


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise DataError(f"{where}[{i}]: expected {{'role': str, 'content': str}}, got {message!r:.80}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _as_dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):  # some releases store extra_info as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a struct/dict, got {type(value).__name__}")
    return value


def _boxes(value: Any, where: str) -> list[list[float]]:
    if value is None:
        return []
    boxes = []
    for box in value:
        if box is None or len(box) != 4:
            raise DataError(f"{where}: each box must be [x1, y1, x2, y2], got {box!r}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x1 < x2 and y1 < y2):
            raise DataError(f"{where}: box {box!r} has no area (need x1 < x2 and y1 < y2)")
        boxes.append([x1, y1, x2, y2])
    return boxes


def _is_letter(text: str) -> bool:
    return len(text.strip()) == 1 and text.strip().isalpha()


def _options_in_prompt(messages: list[dict[str, str]], answer: str) -> list[str]:
    """The options a release row lists as lines in its user turns (one list of them), when its
    answer is a letter or one of them; else none (an open question)."""
    blocks = [b for m in messages if m["role"] == "user" for b in option_blocks(m["content"])]
    if len(blocks) != 1:
        return []
    options = blocks[0].options
    return options if _is_letter(answer) or choice_index(answer, options) is not None else []


# --- rows --------------------------------------------------------------------------------------

def release_row_to_sample(row: dict[str, Any], file: str, index: int, max_decoded_pixels: int) -> Sample:
    """One release-layout row as a `Sample`; raises DataError naming file, row and column."""
    def where(column: str) -> str:
        return f"{file}: row {index}, column '{column}'"

    for column in REQUIRED_COLUMNS:
        if column not in row:
            raise DataError(f"{file}: missing column '{column}' (have: {', '.join(row)})")
    messages = _messages(row["prompt"], where("prompt"))
    images = [_decoded(_image_bytes(v, f"{where('images')}[{i}]"), max_decoded_pixels,
                       f"{where('images')}[{i}]") for i, v in enumerate(row["images"] or [])]
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise DataError(f"{where('prompt')}: {placeholders} '<image>' placeholders but "
                        f"{len(images)} images")
    reward_model = _as_dict(row["reward_model"], where("reward_model"))
    # Rows of one file share a struct type, so keys another row has come back as None: drop them.
    extra = {k: v for k, v in _as_dict(row.get("extra_info"), where("extra_info")).items()
             if v is not None}
    answer = reward_model.get("ground_truth", extra.get("answer"))
    if answer is None or str(answer) == "":
        raise DataError(f"{where('reward_model')}: no ground_truth (nor extra_info.answer)")
    answer = str(answer)
    choices = extra.pop("choices", None) or []
    if not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where('extra_info')}: choices must be strings")
    from_prompt = not choices
    if from_prompt:
        choices = _options_in_prompt(messages, answer)
    gt_boxes = _boxes(extra.pop("gt_boxes", None), f"{where('extra_info')}.gt_boxes")
    question = str(extra.pop("question", None) or
                   messages[-1]["content"].replace(IMAGE_PLACEHOLDER, "").strip())
    if from_prompt and choices:  # the question alone, without the option lines it may repeat
        block = next((b for b in option_blocks(question) if b.options == choices), None)
        question = text_before_options(question, block) if block else question
    extra.pop("answer", None)
    sample_index = extra.pop("index", index)
    return Sample(
        id=f"{Path(file).stem}:{sample_index}",
        data_source=str(row["data_source"]),
        messages=messages,
        images=images,
        question=question,
        answer=answer,
        choices=list(choices),
        gt_boxes=gt_boxes,
        env_name=str(row.get("env_name") or ""),
        ability=str(row.get("ability") or ""),
        reward_style=str(reward_model.get("style") or "rule"),
        extra=extra,
    )


def _column_options(row: dict[str, Any], where) -> list[str]:
    """The options of a benchmark row that has an `options` column or letter columns A, B, ..."""
    if "options" in row:
        options = row["options"]
        if not isinstance(options, list) or len(options) < 2:
            raise DataError(f"{where('options')}: expected a list of at least 2 option texts, "
                            f"got {options!r:.80}")
    else:
        options = []
        for letter in OPTION_LETTERS:
            if row.get(letter) is None or str(row[letter]) == "" or str(row[letter]) == "nan":
                break
            options.append(row[letter])
        if len(options) < 2:
            raise DataError(f"{where('A')}: expected at least options A and B, got {options!r:.80}")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise DataError(f"{where('options')}: every option must be non-empty text, got {options!r:.80}")
    if len({o.strip().lower() for o in options}) != len(options):
        raise DataError(f"{where('options')}: options repeat ({options!r:.80}), so the answer is ambiguous")
    return [o.strip() for o in options]


def benchmark_row_to_sample(row: dict[str, Any], file: str, index: int, max_decoded_pixels: int,
                            layout: Layout = BENCHMARK) -> Sample:
    """One V* / HR-Bench layout row as a multiple-choice `Sample` (answer as a letter).

    With options in columns the prompt is zoomrl's (`multiple_choice_prompt`); with options as
    lines of the question text it is that text as distributed.
    """
    def where(column: str) -> str:
        return f"{file}: row {index}, column '{column}'"

    image = _decoded(_image_bytes(row["image"], where("image")), max_decoded_pixels, where("image"))
    text = row[layout.question]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where(layout.question)}: expected the question text, got {text!r:.80}")
    text = text.strip()
    if "options" in row or "A" in row:
        choices, question = _column_options(row, where), text
        prompt = multiple_choice_prompt(question, choices)
    else:
        blocks = option_blocks(text)
        if len(blocks) != 1:
            raise DataError(f"{where(layout.question)}: {'no' if not blocks else len(blocks)} lists of "
                            "option lines ('(A) text', 'A. text' or 'A) text', one per line) in the "
                            "question, and no options or A, B, ... columns; need exactly one")
        choices, question = blocks[0].options, text_before_options(text, blocks[0])
        prompt = f"{IMAGE_PLACEHOLDER}\n{text}"
    answer = row[layout.answer]
    position = choice_index(str(answer), choices) if answer is not None else None
    if position is None or position >= len(choices):
        raise DataError(f"{where(layout.answer)}: {answer!r} is neither an option letter "
                        f"(A-{OPTION_LETTERS[len(choices) - 1]}) nor one of the options")
    stem = Path(file).stem
    row_id = row.get(layout.id_column) if layout.id_column else None
    return Sample(
        id=f"{stem}:{row_id if row_id is not None else index}",
        data_source=stem,
        messages=[{"role": "user", "content": prompt}],
        images=[image],
        question=question,
        answer=OPTION_LETTERS[position],
        choices=choices,
        env_name="visual_toolbox",
        ability="visual_search",
        extra={c: str(row[c]) for c in BENCHMARK_EXTRA_COLUMNS if row.get(c) is not None},
    )


def check_labels(sample: Sample, file: str | Path, index: int, seen: dict[str, int] | None = None,
                 id_column: str | None = "extra_info.index") -> None:
    """DataError naming file, row and column when a row's labels contradict themselves.

    Checks: the id is not one an earlier row of the file had (`seen`: id -> row, filled here;
    `id_column` is where ids come from); an option letter as the answer needs options; options are
    distinct; the answer is one of them; every ground-truth box lies inside the first image.
    (Images that do not decode and malformed columns are refused when the row is read.)
    """
    def where(column: str) -> str:
        return f"{file}: row {index}, column '{column}'"

    if seen is not None and sample.id in seen:
        raise DataError(f"{file}: rows {seen[sample.id]} and {index} have the same id '{sample.id}' "
                        f"(column '{id_column}'); each row of a file needs its own")
    answer = sample.answer.strip()
    if not sample.choices:
        if _is_letter(answer):
            raise DataError(f"{where('extra_info')}: the answer {answer!r} is an option letter but "
                            "the row lists no choices (extra_info.choices) and its prompt no option "
                            "lines ('(A) text', 'A. text' or 'A) text', one per line)")
    else:
        if len({c.strip().lower() for c in sample.choices}) != len(sample.choices):
            raise DataError(f"{where('extra_info')}: choices repeat ({sample.choices!r:.80})")
        position = choice_index(answer, sample.choices)
        if position is None or position >= len(sample.choices):
            raise DataError(f"{where('reward_model')}: the answer {sample.answer!r} is not among the "
                            f"{len(sample.choices)} choices {sample.choices!r:.80}")
    if sample.gt_boxes:
        if not sample.images:
            raise DataError(f"{where('extra_info')}.gt_boxes: boxes but no image")
        width, height = Image.open(io.BytesIO(sample.images[0])).size
        for i, (x1, y1, x2, y2) in enumerate(sample.gt_boxes):
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise DataError(f"{where('extra_info')}.gt_boxes[{i}]: box {[x1, y1, x2, y2]} is not "
                                f"inside the {width}x{height} image")
    if seen is not None:
        seen[sample.id] = index


def iter_file(path: str | Path, max_decoded_pixels: int) -> Iterator[tuple[int, Sample | DataError]]:
    """(row, sample) for every row of a file, read and checked (`check_labels`); a bad row comes
    back as its DataError (a file zoomrl cannot read raises it)."""
    layout = file_layout(path)
    seen: dict[str, int] = {}
    for index, row in enumerate(iter_rows(path)):
        try:
            sample = layout.to_sample(row, str(path), index, max_decoded_pixels)
            check_labels(sample, path, index, seen, layout.id_column)
        except DataError as err:
            yield index, err
            continue
        yield index, sample


def read_samples(paths: str | Path | list[str | Path],
                 max_decoded_pixels: int = 100_000_000) -> list[Sample]:
    """All samples of one or more files (any layout), in order, every row checked; the first bad
    row stops it with its DataError. Ids must be unique over all the files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    samples: list[Sample] = []
    first_seen: dict[str, tuple[str | Path, int]] = {}
    for path in paths:
        for index, sample in iter_file(path, max_decoded_pixels):
            if isinstance(sample, DataError):
                raise sample
            if sample.id in first_seen:
                other, row = first_seen[sample.id]
                raise DataError(f"{path}: row {index} has the id '{sample.id}' of {other} row {row} "
                                "(an id is the file's name and the row's index): rename one of the files")
            first_seen[sample.id] = (path, index)
            samples.append(sample)
    return samples


# --- writing -----------------------------------------------------------------------------------

def multiple_choice_prompt(question: str, choices: list[str]) -> str:
    """The user turn of a multiple-choice row: image, question, 'A. text' lines, instruction."""
    return (f"{IMAGE_PLACEHOLDER}\n{question}\n{render_options(choices)}\n"
            "Answer with the option's letter from the given choices directly.")


def sample_to_row(sample: Sample, index: int) -> dict[str, Any]:
    """A `Sample` as a release-format row; `index` keeps the id's suffix so ids round-trip."""
    extra = dict(sample.extra)
    extra.update(question=sample.question, answer=sample.answer,
                 index=sample.id.rsplit(":", 1)[-1] if ":" in sample.id else str(index),
                 choices=sample.choices, gt_boxes=sample.gt_boxes)
    return {
        "data_source": sample.data_source,
        "prompt": sample.messages,
        "images": [{"bytes": b} for b in sample.images],
        "reward_model": {"ground_truth": sample.answer, "style": sample.reward_style},
        "extra_info": extra,
        "env_name": sample.env_name,
        "ability": sample.ability,
    }


def write_samples(samples: list[Sample], path: str | Path) -> Path:
    """Write samples as a release-format parquet file (row groups of 64 rows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([sample_to_row(s, i) for i, s in enumerate(samples)])
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, row_group_size=64)
    tmp.replace(path)
    return path
