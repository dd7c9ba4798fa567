"""Trajectories as JSON lines, for reading what a policy did (run directories, `zoomrl eval`,
`zoomrl rollout`), and the images they show, saved beside them (`zoomrl view` reads both).

A record names its images by paths relative to the folder of the JSON-lines file, under
`images/<sha256>.<ext>`: the originals as the data gave them (the pixels the zoom boxes are in)
and every image a tool call fed back. Each distinct image is encoded and written once, however
many trajectories, steps or runs into the same folder show it.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.images import encode_png
from core.types import Group, RewardParts, Trajectory
from rewards.turns import ASSISTANT, IM_END, IM_START

IMAGES_DIR = "images"
LOSSLESS_MAX_PIXELS = 512 * 512
"""Crops up to this many pixels are saved as PNG (every crop of the tiny preset, 448x448 at most);
larger ones as JPEG, written up to several times per step: a photo resized to 3.2 MP (the 7B
preset's budget) measured 3.5 MB as PNG and 0.6 MB as JPEG at quality 90 (0.2 MP: 387 KB and 86 KB)."""
JPEG_QUALITY = 90
BROWSER_FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp"}
"""Encoded originals in these formats are saved as given; any other is converted to PNG."""


class ImageStore:
    """Images of logged trajectories under `folder/images/`, named by the SHA-256 of their content.

    `folder` is the folder of the trajectories file; the paths returned are relative to it.
    A file is written to a temporary name and renamed, so a crash never leaves a partial image
    that a later save would take for the finished one.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.saved: dict[str, str] = {}
        """content hash -> relative path, for images this process already checked."""

    def save_encoded(self, data: bytes) -> str:
        """An encoded image (PNG/JPEG/...) kept as its bytes; its relative path."""
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.saved:
            return self.saved[digest]
        image = Image.open(io.BytesIO(data))  # reads the header only
        ext = BROWSER_FORMATS.get(image.format or "")
        if ext is None:
            data, ext = encode_png(image.convert("RGB")), "png"
        return self._write(digest, ext, lambda: data)

    def save_pixels(self, pixels: np.ndarray) -> str:
        """(H, W, 3) uint8 pixels, encoded only when new: PNG, or JPEG past LOSSLESS_MAX_PIXELS."""
        height, width = pixels.shape[:2]
        digest = hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode() + pixels.tobytes()).hexdigest()
        if digest in self.saved:
            return self.saved[digest]
        if height * width <= LOSSLESS_MAX_PIXELS:
            return self._write(digest, "png", lambda: encode_png(pixels))
        return self._write(digest, "jpg", lambda: _encode_jpeg(pixels))

    def _write(self, digest: str, ext: str, encode) -> str:
        relative = f"{IMAGES_DIR}/{digest}.{ext}"
        path = self.folder / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_bytes(encode())
            partial.replace(path)
        self.saved[digest] = relative
        return relative


def _encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def conversation(response_text: str) -> list[tuple[str, str]]:
    """(role, text) of every turn after the prompt, template tokens removed: 'assistant' turns the
    policy wrote and 'user' turns holding a tool's response (see `rewards.turns`)."""
    chunks = response_text.split(IM_START)
    turns = [(ASSISTANT, chunks[0])]
    for chunk in chunks[1:]:
        role, _, text = chunk.partition("\n")
        turns.append((role, text))
    return [(role, text.split(IM_END, 1)[0]) for role, text in turns]


def _turns(traj: Trajectory) -> list[dict[str, Any]]:
    """Each assistant turn with the tool call it made and what the tool answered.

    The loop (`actors.imcot`) inserts exactly one user turn per executed call, so the k-th user
    turn answers tool_calls[k]; an assistant turn not followed by one made no call that ran.
    """
    turns: list[dict[str, Any]] = []
    calls = 0
    for role, text in conversation(traj.response_text):
        if role == ASSISTANT:
            turns.append({"text": text, "call": None, "observation": None})
        else:
            turns[-1].update(call=calls, observation=text)
            calls += 1
    return turns


def reward_parts(record: dict[str, Any]) -> RewardParts:
    """A scored trajectory record's reward parts, read back as the record they were written from."""
    return RewardParts(**record["reward_parts"])


def trajectory_record(group: Group, index: int, images: ImageStore) -> dict[str, Any]:
    """One trajectory of a scored group: the question, what the policy wrote and did, its reward.

    `images` saves the originals and the tool outputs; `images` in the record lists every image
    the model was given (Trajectory.images order: the originals, then one per call that made one)
    with the saved file to show for it. The original's file is the full-resolution one the zoom
    boxes (`box_original`) are measured in; `model_size` is the size the model saw it at.
    """
    traj: Trajectory = group.trajectories[index]
    sample = group.sample
    shown = []
    for i, pixels in enumerate(traj.images):
        height, width = pixels.shape[:2]
        if i < len(sample.images):
            with Image.open(io.BytesIO(sample.images[i])) as original:
                size = list(original.size)
            shown.append({"kind": "original", "path": images.save_encoded(sample.images[i]),
                          "size": size, "model_size": [width, height]})
        else:
            shown.append({"kind": "tool", "path": images.save_pixels(pixels), "size": [width, height],
                          "model_size": [width, height]})
    # Every call acts on the latest view, which is cut from the last original (actors.imcot).
    box_image = len(sample.images) - 1
    return {
        "group_id": group.group_id, "index": index, "sample_id": sample.id,
        "data_source": sample.data_source, "question": sample.question, "choices": sample.choices,
        "answer": sample.answer, "gt_boxes": sample.gt_boxes, "policy_version": traj.policy_version,
        "end_reason": traj.end_reason, "num_turns": traj.num_turns,
        "response_tokens": traj.num_sampled_tokens, "sequence_tokens": int(len(traj.input_ids)),
        "image_sizes": [list(image.shape[:2]) for image in traj.images], "images": shown,
        "tool_calls": [{"name": call.name, "arguments": call.arguments, "error": call.error,
                        "box_original": call.box_original, "image_index": call.image_index,
                        "box_image": box_image if call.box_original is not None else None}
                       for call in traj.tool_calls],
        "turns": _turns(traj),
        "reward": traj.reward, "reward_parts": asdict(traj.reward_parts) if traj.reward_parts else None,
        "timing": traj.timing,
        "response_text": traj.response_text,
    }
