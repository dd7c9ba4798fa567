"""Evaluation and curation inputs: the DeepEyes release format and the V* / HR-Bench layout.

The benchmark layout has one row per question: `image` (encoded bytes, {bytes: ...}, or a base64
string as in HR-Bench's TSV), `question`, the options either as a list column `options` or as
letter columns `A`, `B`, `C`, ... (HR-Bench), `answer` (an option letter or an option's text),
and optionally `category` (V*'s direct_attributes / relative_position, HR-Bench's FSP / FCP) and
`index`. A file with the release's columns (`zoomrl.data.REQUIRED_COLUMNS`) is read as the release
format. Either way a row becomes a `Sample`, and every error names the file, the row and the column.

Option shuffling gives each multiple-choice question a fixed random order (from a seed and the
question's id), remaps the answer letter and rewrites the option lines of the prompt, so a model
cannot score by always answering A (the reference release once put every answer there).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from rewards.choices import choice_index
from zoomrl.data import (
    OPTION_LETTERS,
    REQUIRED_COLUMNS,
    DataError,
    iter_rows,
    multiple_choice_prompt,
    option_lines,
    parquet_columns,
    row_to_sample,
)
from zoomrl.images import ImageError, decode_image
from zoomrl.types import Sample

BENCHMARK_COLUMNS = ("image", "question", "answer")
"""Required in the benchmark layout, plus `options` or letter columns A, B, ..."""


def file_layout(path: str | Path) -> str:
    """'release' or 'benchmark', from the file's columns; DataError naming what is missing."""
    names = parquet_columns(path)
    if all(c in names for c in REQUIRED_COLUMNS):
        return "release"
    has_options = "options" in names or "A" in names
    if all(c in names for c in BENCHMARK_COLUMNS) and has_options:
        return "benchmark"
    raise DataError(f"{path}: neither the DeepEyes release layout (columns {', '.join(REQUIRED_COLUMNS)}) "
                    f"nor the benchmark layout (columns {', '.join(BENCHMARK_COLUMNS)}, and options or "
                    f"A, B, ...); it has: {', '.join(names)}")


def _image_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{where}: a string image must be base64 ({value[:40]!r}...)") from None
    raise DataError(f"{where}: expected image bytes, {{'bytes': ...}} or base64, got {type(value).__name__}")


def _options(row: dict[str, Any], where) -> list[str]:
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


def benchmark_row_to_sample(row: dict[str, Any], file: str, index: int, max_decoded_pixels: int) -> Sample:
    """One V* / HR-Bench layout row as a multiple-choice `Sample` (answer as a letter)."""
    def where(column: str) -> str:
        return f"{file}: row {index}, column '{column}'"

    image = _image_bytes(row["image"], where("image"))
    try:
        decode_image(image, max_decoded_pixels)
    except ImageError as err:
        raise DataError(f"{where('image')}: {err}") from None
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where('question')}: expected the question text, got {question!r:.80}")
    choices = _options(row, where)
    answer = row["answer"]
    position = choice_index(str(answer), choices) if answer is not None else None
    if position is None or position >= len(choices):
        raise DataError(f"{where('answer')}: {answer!r} is neither an option letter "
                        f"(A-{OPTION_LETTERS[len(choices) - 1]}) nor one of the options")
    stem = Path(file).stem
    row_id = row.get("index")
    category = row.get("category")
    extra = {"category": str(category)} if category is not None else {}
    question = question.strip()
    return Sample(
        id=f"{stem}:{row_id if row_id is not None else index}",
        data_source=stem,
        messages=[{"role": "user", "content": multiple_choice_prompt(question, choices)}],
        images=[image],
        question=question,
        answer=OPTION_LETTERS[position],
        choices=choices,
        env_name="visual_toolbox",
        ability="visual_search",
        extra=extra,
    )


def iter_file(path: str | Path, max_decoded_pixels: int) -> Iterator[tuple[int, Sample | DataError]]:
    """(row, sample) for every row of a release- or benchmark-layout file; a bad row comes back as
    its DataError (a bad file raises it)."""
    layout = file_layout(path)
    convert = row_to_sample if layout == "release" else benchmark_row_to_sample
    for index, row in enumerate(iter_rows(path)):
        try:
            yield index, convert(row, str(path), index, max_decoded_pixels)
        except DataError as err:
            yield index, err


def read_file(path: str | Path, max_decoded_pixels: int) -> list[Sample]:
    """Every row of an evaluation file; the first bad row stops it with its DataError."""
    samples = []
    for _, sample in iter_file(path, max_decoded_pixels):
        if isinstance(sample, DataError):
            raise sample
        samples.append(sample)
    return samples


def shuffle_options(sample: Sample, seed: int) -> Sample:
    """A copy with the options in a fixed random order, the answer letter remapped and the prompt's
    option lines rewritten; the same (seed, sample.id) always gives the same order.

    Raises ValueError when the answer is not one of the options or the prompt does not list the
    options as 'A. text' lines (then they cannot be moved; evaluate with the options as given).
    An open question (no choices) comes back unchanged.
    """
    if not sample.choices:
        return sample
    answer = choice_index(sample.answer, sample.choices)
    if answer is None or answer >= len(sample.choices):
        raise ValueError(f"answer {sample.answer!r} is not one of the options {sample.choices}")
    listed = option_lines(sample.choices)
    holders = [i for i, m in enumerate(sample.messages) if m["role"] == "user" and listed in m["content"]]
    if len(holders) != 1 or sample.messages[holders[0]]["content"].count(listed) != 1:
        raise ValueError("the prompt does not list the options once as 'A. text' lines, so they "
                         "cannot be shuffled (keep them as given: eval.shuffle_options=false)")
    order = list(range(len(sample.choices)))
    random.Random(f"{seed}:{sample.id}").shuffle(order)
    choices = [sample.choices[i] for i in order]
    messages = [dict(m) for m in sample.messages]
    messages[holders[0]]["content"] = messages[holders[0]]["content"].replace(listed, option_lines(choices))
    return dataclasses.replace(sample, messages=messages, choices=choices,
                               answer=OPTION_LETTERS[order.index(answer)])


def check_labels(sample: Sample, file: str | Path, index: int, seen_ids: set[str] | None = None) -> None:
    """DataError naming file, row and column when a row's labels contradict themselves.

    Checks: the id is not in `seen_ids` (then adds it); an option letter as the answer needs
    options; options are distinct; the answer is one of them; every ground-truth box lies inside
    the first image. (Images that do not decode and malformed columns are refused when the row is
    read.)
    """
    def where(column: str) -> str:
        return f"{file}: row {index}, column '{column}'"

    if seen_ids is not None:
        if sample.id in seen_ids:
            raise DataError(f"{where('extra_info')}: the id '{sample.id}' (from extra_info.index) repeats "
                            "an earlier row's")
    answer = sample.answer.strip()
    if not sample.choices:
        if len(answer) == 1 and answer.isalpha():
            raise DataError(f"{where('extra_info')}: the answer {answer!r} is an option letter but "
                            "the row lists no choices")
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
    if seen_ids is not None:
        seen_ids.add(sample.id)


def standardize(sample: Sample) -> Sample:
    """The row in zoomrl's standard form: texts stripped, a multiple-choice answer as its letter.

    Call after `check_labels` (the answer must name one of the options).
    """
    choices = [c.strip() for c in sample.choices]
    answer = sample.answer.strip()
    if choices:
        answer = OPTION_LETTERS[choice_index(answer, choices)]
    return dataclasses.replace(sample, question=sample.question.strip(), choices=choices, answer=answer)
