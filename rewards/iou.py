"""Grounding IoU of zoom boxes against ground-truth boxes: a metric of where the policy looks."""

from __future__ import annotations

from collections.abc import Sequence

from core.types import ToolCallRecord


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 when either has no area)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def zoom_ious(calls: list[ToolCallRecord], gt_boxes: list[list[float]]) -> list[float]:
    """For each successful zoom (a call with a box in original pixels), its best IoU over gt."""
    if not gt_boxes:
        return []
    return [max(box_iou(call.box_original, gt) for gt in gt_boxes)
            for call in calls if call.ok and call.box_original is not None]
