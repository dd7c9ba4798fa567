"""The rotated frame: the original image turned by an angle, on a canvas expanded to fit it.

Every view the model sees is an axis-aligned, integer-pixel region of one such frame (angle 0 is
the original itself), smart-resized. Keeping views in this form lets every crop be cut from the
full-resolution original however many zooms and rotations came before, and lets any box be
mapped back to original pixels exactly.

Convention: a positive angle turns the image COUNTER-CLOCKWISE as seen on screen (what PIL's
`rotate` and `Transpose.ROTATE_90` do, and what the tool schema tells the model). The frame is
centred on the rotated image; areas of the canvas outside the original are black. Coordinates
are continuous pixels, (0, 0) the top-left corner of the top-left pixel, y pointing down.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]

_TRANSPOSE = {90.0: Image.Transpose.ROTATE_90, 180.0: Image.Transpose.ROTATE_180,
              270.0: Image.Transpose.ROTATE_270}


def normalize_angle(angle: float) -> float:
    """The angle in [0, 360) degrees."""
    turned = angle % 360.0
    return 0.0 if turned >= 360.0 else turned  # -1e-20 % 360 rounds to 360.0


def _cos_sin(angle: float) -> tuple[float, float]:
    """Exact for multiples of 90 degrees, so those frames line up with PIL's transposes."""
    exact = {0.0: (1.0, 0.0), 90.0: (0.0, 1.0), 180.0: (-1.0, 0.0), 270.0: (0.0, -1.0)}
    if angle in exact:
        return exact[angle]
    radians = math.radians(angle)
    return math.cos(radians), math.sin(radians)


def frame_size(size: tuple[int, int], angle: float) -> tuple[int, int]:
    """(width, height) of the frame of an original of `size` (width, height) turned by `angle`."""
    width, height = size
    cos, sin = _cos_sin(angle)
    extent_w = abs(width * cos) + abs(height * sin)
    extent_h = abs(width * sin) + abs(height * cos)
    return math.ceil(extent_w - 1e-9), math.ceil(extent_h - 1e-9)


def frame_to_original(points: np.ndarray, size: tuple[int, int], angle: float) -> np.ndarray:
    """(N, 2) frame points -> (N, 2) original points."""
    cos, sin = _cos_sin(angle)
    frame_w, frame_h = frame_size(size, angle)
    dx = points[:, 0] - frame_w / 2
    dy = points[:, 1] - frame_h / 2
    return np.stack([cos * dx - sin * dy + size[0] / 2, sin * dx + cos * dy + size[1] / 2], axis=1)


def original_to_frame(points: np.ndarray, size: tuple[int, int], angle: float) -> np.ndarray:
    """(N, 2) original points -> (N, 2) frame points (the inverse of frame_to_original)."""
    cos, sin = _cos_sin(angle)
    frame_w, frame_h = frame_size(size, angle)
    dx = points[:, 0] - size[0] / 2
    dy = points[:, 1] - size[1] / 2
    return np.stack([cos * dx + sin * dy + frame_w / 2, -sin * dx + cos * dy + frame_h / 2], axis=1)


def corners(box: Box) -> np.ndarray:
    """(4, 2) corner points of a box [x1, y1, x2, y2]."""
    x1, y1, x2, y2 = box
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)


def bounding_box(points: np.ndarray, limit: tuple[float, float]) -> Box:
    """The axis-aligned box around (N, 2) points, clipped to [0, width] x [0, height]."""
    x1, y1 = np.clip(points.min(axis=0), 0, limit)
    x2, y2 = np.clip(points.max(axis=0), 0, limit)
    return float(x1), float(y1), float(x2), float(y2)


def frame_region(original: Image.Image, angle: float, region: tuple[int, int, int, int]) -> Image.Image:
    """`region` [x1, y1, x2, y2] of the frame: a lossless transpose for multiples of 90 degrees,
    else one affine warp of just that region.

    The warp samples the original at frame_to_original of every pixel of the region, so the pixels
    agree with the geometry above by construction. It never scales, so bicubic sampling cannot
    alias. Warping only the region (not the whole frame, then cropping) keeps a zoom into an
    oblique view of a 100-megapixel original from allocating the whole, larger, turned frame.
    """
    if angle == 0.0:
        return original.crop(region)
    if angle in _TRANSPOSE:  # the region's corners map to whole original pixels exactly
        box = bounding_box(frame_to_original(corners(region), original.size, angle), original.size)
        return original.crop(tuple(round(v) for v in box)).transpose(_TRANSPOSE[angle])
    cos, sin = _cos_sin(angle)
    frame_w, frame_h = frame_size(original.size, angle)
    x1, y1, x2, y2 = region
    # frame_to_original of frame pixel (x1 + u, y1 + v), written as PIL's affine of (u, v).
    dx, dy = x1 - frame_w / 2, y1 - frame_h / 2
    offset_x = cos * dx - sin * dy + original.width / 2
    offset_y = sin * dx + cos * dy + original.height / 2
    return original.transform((x2 - x1, y2 - y1), Image.Transform.AFFINE,
                              (cos, -sin, offset_x, sin, cos, offset_y),
                              resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
