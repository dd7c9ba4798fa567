"""image_rotate_tool: turn the latest view by an angle, expanding the canvas so nothing is cut.

Positive angles turn COUNTER-CLOCKWISE as seen on screen (the schema says so to the model; a
peer framework documented clockwise but called PIL's counter-clockwise `rotate`). The new view is
re-cut from the full-resolution original at the summed angle, so zooming into it later still
crops the original. It shows the box around the turned view: for multiples of 90 degrees that is
exactly the view turned; for other angles the expanded corners show the image around the view
(black beyond the original's edges) rather than a black fill. A turn by a multiple of 360
degrees gives back the same image and is an error for the model (`tools.execute`).

DeepEyes trains with the zoom-in tool only and offers rotate zero-shot at inference, so it is
off in the training defaults (`tools.enabled`) and earns no tool bonus (`reward.bonus_tools`).
"""

from __future__ import annotations

from typing import Any

from core.config import ModelConfig, ToolsConfig
from tools.arguments import finite_number
from tools.frame import frame_size, normalize_angle
from tools.tool import Tool, ToolError, ToolOutcome
from tools.view import ImageView, snap_region


def rotate(arguments: dict[str, Any], view: ImageView, tools_cfg: ToolsConfig,
           model_cfg: ModelConfig) -> ToolOutcome:
    """Turn `view` by arguments['angle'] degrees counter-clockwise."""
    if "angle" not in arguments:
        raise ToolError("missing 'angle': give the rotation in degrees (positive turns "
                        "counter-clockwise)")
    angle = normalize_angle(view.angle + finite_number(arguments["angle"], "'angle'"))
    region = snap_region(view.region_in_frame(angle), frame_size(view.original_size, angle))
    turned = view.derive(angle, region, model_cfg)
    return ToolOutcome(view=turned, error="", box_original=None)


ROTATE_TOOL = Tool(
    name="image_rotate_tool",
    description=("Rotate the latest image, for example to read sideways or upside-down text; "
                 "the canvas grows so that no corner is cut off."),
    parameters={
        "type": "object",
        "properties": {
            "angle": {"type": "number",
                      "description": ("Rotation in degrees. Positive values rotate "
                                      "counter-clockwise, negative values clockwise.")},
        },
        "required": ["angle"],
    },
    run=rotate,
)
