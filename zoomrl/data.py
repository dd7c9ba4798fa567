"""Read and write prompt data in the DeepEyes release parquet format.

Columns: `data_source`, `prompt` (list of {role, content}; '<image>' marks each image),
`images` (list of {bytes: ...} or of bytes), `reward_model` ({ground_truth, style}),
`extra_info` ({question, answer, index, ...; zoomrl adds choices and gt_boxes}), `env_name`,
`ability`. Every error names the file, the row and the column.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from zoomrl.images import ImageError, decode_image
from zoomrl.types import Sample

REQUIRED_COLUMNS = ("data_source", "prompt", "images", "reward_model")
IMAGE_PLACEHOLDER = "<image>"
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class DataError(ValueError):
    """A data file or row is malformed; the message names file, row and column."""


def _image_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])
    raise DataError(f"{where}: expected image bytes or {{'bytes': ...}}, got {type(value).__name__}")


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


def row_to_sample(row: dict[str, Any], file: str, index: int, max_decoded_pixels: int) -> Sample:
    """One parquet row as a `Sample`; raises DataError naming file, row and column."""
    def where(column: str) -> str:
        return f"{file}: row {index}, column '{column}'"

    for column in REQUIRED_COLUMNS:
        if column not in row:
            raise DataError(f"{file}: missing column '{column}' (have: {', '.join(row)})")
    messages = _messages(row["prompt"], where("prompt"))
    images = [_image_bytes(v, f"{where('images')}[{i}]") for i, v in enumerate(row["images"] or [])]
    for i, data in enumerate(images):
        try:
            decode_image(data, max_decoded_pixels)
        except ImageError as err:
            raise DataError(f"{where('images')}[{i}]: {err}") from None
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
    choices = extra.pop("choices", None) or []
    if not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where('extra_info')}: choices must be strings")
    gt_boxes = _boxes(extra.pop("gt_boxes", None), f"{where('extra_info')}.gt_boxes")
    question = extra.pop("question", None) or \
        messages[-1]["content"].replace(IMAGE_PLACEHOLDER, "").strip()
    extra.pop("answer", None)
    sample_index = extra.pop("index", index)
    return Sample(
        id=f"{Path(file).stem}:{sample_index}",
        data_source=str(row["data_source"]),
        messages=messages,
        images=images,
        question=str(question),
        answer=str(answer),
        choices=list(choices),
        gt_boxes=gt_boxes,
        env_name=str(row.get("env_name") or ""),
        ability=str(row.get("ability") or ""),
        reward_style=str(reward_model.get("style") or "rule"),
        extra=extra,
    )


def multiple_choice_prompt(question: str, choices: list[str]) -> str:
    """The user turn of a multiple-choice row: image, question, 'A. text' lines, instruction."""
    return (f"{IMAGE_PLACEHOLDER}\n{question}\n{option_lines(choices)}\n"
            "Answer with the option's letter from the given choices directly.")


def option_lines(choices: list[str]) -> str:
    """'A. red\nB. blue...': how options are listed in a prompt."""
    return "\n".join(f"{OPTION_LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def parquet_columns(path: str | Path) -> list[str]:
    """Column names of a parquet file; DataError when it is not one."""
    try:
        return pq.ParquetFile(str(path)).schema_arrow.names
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read as parquet ({err})") from None


def iter_rows(path: str | Path, batch_rows: int = 64) -> Iterator[dict[str, Any]]:
    """The raw rows of a parquet file, a few at a time (large sets never load whole)."""
    parquet_columns(path)
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


def check_release_columns(path: str | Path) -> None:
    """DataError naming the file and the missing columns unless it has the release's columns."""
    names = parquet_columns(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(names)})")


def iter_samples(path: str | Path, max_decoded_pixels: int = 100_000_000) -> Iterator[Sample]:
    """Stream samples from a parquet file, a few rows at a time."""
    check_release_columns(path)
    for index, row in enumerate(iter_rows(path)):
        yield row_to_sample(row, str(path), index, max_decoded_pixels)


def read_samples(paths: str | Path | list[str | Path],
                 max_decoded_pixels: int = 100_000_000) -> list[Sample]:
    """All samples of one or more parquet files, in order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [s for p in paths for s in iter_samples(p, max_decoded_pixels)]


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
