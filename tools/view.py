"""What the model sees of an image, and where it sits in the original.

An `ImageView` is the original image or a region of it (possibly rotated), smart-resized for the
model. Boxes the model writes are in the pixels of the view it saw; the view maps them to its
rotated frame (`tools.frame`) and from there to the original, so every crop is cut from the
full-resolution original, even a crop of a crop.

The original travels with every view (`source`) as its encoded bytes, decoded again on each tool
call under the same pixel-bomb guard as input images, or as its decoded pixels; either may sit in
Ray's object store behind an ObjectRef, so a remote tool task reads it from there instead of
receiving a copy with every call. Rollout actors decode each original once per group and share
the pixels (decoding is most of a zoom into a large image: `python -m bench tools`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ray
from PIL import Image

from core.config import ModelConfig
from core.images import decode_image, resize_for_model
from tools.frame import (
    Box,
    bounding_box,
    corners,
    frame_region,
    frame_size,
    frame_to_original,
    original_to_frame,
)


@dataclass(frozen=True, eq=False)
class ImageView:
    """One image the model saw: its pixels, and how they map to the original image."""

    pixels: np.ndarray
    """(H, W, 3) uint8, smart-resized: exactly what the model is given."""
    source: bytes | np.ndarray | ray.ObjectRef
    """The original image: encoded (PNG/JPEG), decoded ((H, W, 3) uint8), or an ObjectRef to either."""
    original_size: tuple[int, int]
    """(width, height) of the original in pixels."""
    max_decoded_pixels: int
    """Pixel-bomb guard applied whenever `source` is decoded."""
    angle: float
    """Counter-clockwise rotation of the frame this view is cut from, degrees in [0, 360)."""
    region: tuple[int, int, int, int]
    """[x1, y1, x2, y2] of the frame shown, in frame pixels (= original pixels in scale)."""

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the rotated frame this view is cut from."""
        return frame_size(self.original_size, self.angle)

    def scale(self) -> tuple[float, float]:
        """Frame (original) pixels per view pixel, along x and y."""
        x1, y1, x2, y2 = self.region
        return (x2 - x1) / self.width, (y2 - y1) / self.height

    def to_frame(self, box: Box) -> Box:
        """A box in this view's pixels -> the same box in frame pixels."""
        sx, sy = self.scale()
        x1, y1, x2, y2 = box
        return (self.region[0] + x1 * sx, self.region[1] + y1 * sy,
                self.region[0] + x2 * sx, self.region[1] + y2 * sy)

    def frame_box_to_original(self, box: Box) -> list[float]:
        """A frame box -> original pixels; for a rotated frame, the box around its four corners."""
        points = frame_to_original(corners(box), self.original_size, self.angle)
        return list(bounding_box(points, self.original_size))

    def region_in_frame(self, angle: float) -> Box:
        """This view's region as seen in the frame of another angle (the box around it)."""
        points = frame_to_original(corners(self.region), self.original_size, self.angle)
        return bounding_box(original_to_frame(points, self.original_size, angle),
                            frame_size(self.original_size, angle))

    def load_original(self) -> Image.Image:
        """The original at full resolution; raises ImageError for bad bytes or a pixel bomb."""
        return open_original(self.source, self.max_decoded_pixels)

    def derive(self, angle: float, region: tuple[int, int, int, int], model_cfg: ModelConfig) -> ImageView:
        """A new view of the same original: `region` of the frame at `angle`, smart-resized;
        raises ImageError when the original cannot be decoded."""
        data = ray.get(self.source) if isinstance(self.source, ray.ObjectRef) else self.source
        if isinstance(data, np.ndarray) and angle == 0.0:  # copy only the region out of the pixels
            x1, y1, x2, y2 = region
            crop = Image.fromarray(data[y1:y2, x1:x2])
        else:
            crop = frame_region(open_original(data, self.max_decoded_pixels), angle, region)
        pixels = resize_for_model(crop, model_cfg.min_pixels, model_cfg.max_pixels)
        return ImageView(pixels=pixels, source=self.source, original_size=self.original_size,
                         max_decoded_pixels=self.max_decoded_pixels, angle=angle, region=region)


def snap_region(box: Box, limit: tuple[int, int]) -> tuple[int, int, int, int]:
    """Round a frame box outward to whole pixels inside [0, width] x [0, height].

    Whole pixels make the crop exact and its size the one smart-resize is given; rounding
    outward keeps everything inside the box the model asked for.
    """
    x1, y1, x2, y2 = box
    eps = 1e-6  # 27.9999999 from float mapping is pixel 28, not 27
    return (max(0, math.floor(x1 + eps)), max(0, math.floor(y1 + eps)),
            min(limit[0], math.ceil(x2 - eps)), min(limit[1], math.ceil(y2 - eps)))


def open_original(source: bytes | np.ndarray | ray.ObjectRef, max_decoded_pixels: int) -> Image.Image:
    """An original image from any form a view's `source` takes (decoded pixels were checked by
    whoever decoded them)."""
    data = ray.get(source) if isinstance(source, ray.ObjectRef) else source
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    return decode_image(data, max_decoded_pixels)


def initial_view(image: bytes | np.ndarray | ray.ObjectRef, model_cfg: ModelConfig,
                 max_decoded_pixels: int) -> ImageView:
    """The input image as the model first sees it; raises ImageError for bad bytes or a bomb.

    `image` (encoded bytes, decoded pixels, or an ObjectRef to either) becomes the view's `source`.
    """
    original = open_original(image, max_decoded_pixels)
    return ImageView(pixels=resize_for_model(original, model_cfg.min_pixels, model_cfg.max_pixels),
                     source=image, original_size=original.size,
                     max_decoded_pixels=max_decoded_pixels, angle=0.0,
                     region=(0, 0, original.width, original.height))
