"""Image decoding and the one resize rule every image and crop goes through.

Images are resized once, at rollout time, with Qwen2.5-VL's "smart resize" (sides multiples of
28 = patch 14 x merge 2, pixel count inside [min_pixels, max_pixels], aspect kept), moved where
needed to a size the rule keeps (`model_size`). An image of such a size passes through the
processor unchanged, in vLLM and in the learner, so both see exactly the same image tokens.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

PATCH_FACTOR = 28  # patch_size 14 x spatial_merge_size 2: one image token per 28x28 pixels
MAX_ASPECT_RATIO = 200  # the processor refuses images longer than 200x their short side


class ImageError(ValueError):
    """An image could not be decoded or sized; the message says why."""


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = PATCH_FACTOR) -> tuple[int, int]:
    """(height, width) after Qwen2.5-VL's resize rule; same arithmetic as the HF processor."""
    if min(height, width) <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageError(f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds "
                         f"{MAX_ASPECT_RATIO} ({width}x{height})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def model_size(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) an image is stored at: smart_resize's, which the processor keeps as it is.

    smart_resize alone is not always such a size. With its pixel range narrow, a thin image can
    land outside the range (99x1595 -> 28x896 = 25,088 pixels, under a minimum of 28,224), and the
    processor, resizing again, gives vLLM 56x952: 36 image tokens more than the learner counts. Such
    a size keeps its short side and moves its long side, in steps of 28, into the range.
    """
    h_bar, w_bar = smart_resize(height, width, min_pixels, max_pixels)
    if not min_pixels <= h_bar * w_bar <= max_pixels:
        short, long = sorted((h_bar, w_bar))
        shortest_long = math.ceil(min_pixels / short / PATCH_FACTOR) * PATCH_FACTOR
        longest_long = max_pixels // short // PATCH_FACTOR * PATCH_FACTOR
        long = min(max(long, shortest_long), longest_long)
        h_bar, w_bar = (short, long) if h_bar <= w_bar else (long, short)
    if smart_resize(h_bar, w_bar, min_pixels, max_pixels) != (h_bar, w_bar):
        raise ImageError(f"no size near {width}x{height} that the processor keeps with pixels in "
                         f"[{min_pixels}, {max_pixels}]: widen model.min_pixels..model.max_pixels")
    return h_bar, w_bar


def num_image_tokens(height: int, width: int, factor: int = PATCH_FACTOR) -> int:
    """Image tokens the model spends on an already resized image."""
    return (height // factor) * (width // factor)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode encoded bytes to RGB, refusing corrupt data and decompression bombs.

    The header is read first, so an oversized image is refused before its pixels are decoded.
    """
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except Exception as err:  # PIL raises many types for bad bytes
        raise ImageError(f"cannot decode image ({len(data)} bytes): {err}") from None
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit "
                         f"of {max_pixels}")
    try:
        return image.convert("RGB")
    except Exception as err:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {err}") from None


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """Lossless bytes of an image (PNG)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def resize_for_model(image: Image.Image, min_pixels: int, max_pixels: int) -> np.ndarray:
    """The image as the model will see it: at its model_size, RGB, (H, W, 3) uint8."""
    height, width = model_size(image.height, image.width, min_pixels, max_pixels)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
