"""image_zoom_in_tool: crop a box of the latest view out of the full-resolution original.

The box is in the pixels of the image the model SAW (the latest view, smart-resized), never in
the original's: cropping the original with a box meant for its resized copy is the upstream
DeepEyes coordinate bug. Order of checks: four finite numbers; x1 < x2 and y1 < y2; clip to the
view; then, in ORIGINAL pixels (what the crop will hold), the short side must be at least
`tools.min_box_side` (default 28, one merged patch: anything smaller carries less than one image
token of real detail and is only upsampled blur) and long/short at most `tools.max_aspect_ratio`.
A box covering the whole latest image gives back the same image and is an error for the model
(`tools.execute`): it perceives nothing, so it must not earn the tool bonus.
"""

from __future__ import annotations

import math
from typing import Any

from core.config import ModelConfig, ToolsConfig
from tools.arguments import finite_number, optional_string, show
from tools.tool import Tool, ToolError, ToolOutcome
from tools.view import ImageView, snap_region

BOX_KEYS = ("bbox_2d", "bbox")  # the paper's key, and the released code's


def _read_box(arguments: dict[str, Any]) -> tuple[float, float, float, float]:
    key = next((k for k in BOX_KEYS if k in arguments), None)
    if key is None:
        raise ToolError("missing 'bbox_2d': give the region as [x1, y1, x2, y2] in pixels of the "
                        "latest image")
    value = arguments[key]
    if not isinstance(value, list) or len(value) != 4:
        raise ToolError(f"'{key}' must be a list of 4 numbers [x1, y1, x2, y2], got {show(value)}")
    x1, y1, x2, y2 = (finite_number(v, f"'{key}'[{i}]") for i, v in enumerate(value))
    if not (x1 < x2 and y1 < y2):
        raise ToolError(f"the box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has no area: it needs "
                        "x1 < x2 and y1 < y2 (top-left corner, then bottom-right)")
    return x1, y1, x2, y2


def _check_size(region: tuple[int, int, int, int], view: ImageView, tools_cfg: ToolsConfig) -> None:
    width, height = region[2] - region[0], region[3] - region[1]
    if min(width, height) <= 0:
        raise ToolError("the box has no area after clipping it to the image")
    if min(width, height) < tools_cfg.min_box_side:
        sx, sy = view.scale()
        raise ToolError(
            f"the box is too small ({width}x{height} pixels of the original image): each side must "
            f"cover at least {tools_cfg.min_box_side} original pixels, that is at least "
            f"{math.ceil(tools_cfg.min_box_side / sx)} pixels wide and "
            f"{math.ceil(tools_cfg.min_box_side / sy)} pixels tall in the latest image")
    if max(width, height) / min(width, height) > tools_cfg.max_aspect_ratio:
        raise ToolError(f"the box is too thin ({width}x{height} pixels): its long side may be at "
                        f"most {tools_cfg.max_aspect_ratio:g} times its short side")


def zoom_in(arguments: dict[str, Any], view: ImageView, tools_cfg: ToolsConfig,
            model_cfg: ModelConfig) -> ToolOutcome:
    """Crop the box (in `view` pixels) from the original and smart-resize it."""
    optional_string(arguments, "label")
    x1, y1, x2, y2 = _read_box(arguments)
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, view.width), min(y2, view.height))
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        raise ToolError(f"the box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the latest image, "
                        f"which is {view.width}x{view.height} pixels")
    region = snap_region(view.to_frame(clipped), view.frame_size)
    _check_size(region, view, tools_cfg)
    box_original = view.frame_box_to_original(region)
    shown = min(box_original[2] - box_original[0], box_original[3] - box_original[1])
    if shown < tools_cfg.min_box_side:  # a corner of a rotated view: mostly the margin it added
        raise ToolError(f"the box shows only {box_original[2] - box_original[0]:.0f}x"
                        f"{box_original[3] - box_original[1]:.0f} pixels of the picture: the rest is "
                        "the blank margin the rotation added; choose a box over the picture itself")
    crop = view.derive(view.angle, region, model_cfg)
    return ToolOutcome(view=crop, error="", box_original=box_original)


ZOOM_IN_TOOL = Tool(
    name="image_zoom_in_tool",
    description=("Zoom in on a region of the latest image: the region is cut from the "
                 "full-resolution image and shown to you enlarged."),
    parameters={
        "type": "object",
        "properties": {
            "bbox_2d": {
                "type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                "description": ("The region as [x1, y1, x2, y2]: top-left and bottom-right "
                                "corners, in absolute pixels of the latest image you were shown."),
            },
            "label": {"type": "string",
                      "description": "What is in the region (optional)."},
        },
        "required": ["bbox_2d"],
    },
    run=zoom_in,
)
