"""Originals for the tool tests: coloured squares, at known original-pixel boxes, on a plain field."""

from __future__ import annotations

import numpy as np

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def squares(width: int, height: int, boxes: dict[tuple[int, int, int, int], tuple[int, int, int]],
            background: int = 0) -> np.ndarray:
    """An RGB image of `background` grey with each box (x1, y1, x2, y2) filled with its colour."""
    pixels = np.full((height, width, 3), background, dtype=np.uint8)
    for (x1, y1, x2, y2), colour in boxes.items():
        pixels[y1:y2, x1:x2] = colour
    return pixels
