"""Run one parsed call against the latest view; every failure becomes an error for the model."""

from __future__ import annotations

import numpy as np

from core.config import ModelConfig, ToolsConfig
from core.images import ImageError
from tools.arguments import show
from tools.parse import ToolCall
from tools.registry import TOOLS
from tools.tool import ToolError, ToolOutcome
from tools.view import ImageView


def _failed(message: str) -> ToolOutcome:
    return ToolOutcome(view=None, error=message, box_original=None)


def execute_tool(call: ToolCall, views: list[ImageView], tools_cfg: ToolsConfig,
                 model_cfg: ModelConfig) -> ToolOutcome:
    """Apply `call` to views[-1], the image the model saw last (only that one is read).

    Never raises on anything the model wrote: an unknown or disabled tool, bad arguments, a box
    outside the image, and an original that fails to decode (bad bytes, a pixel bomb) all come
    back as `ToolOutcome.error`. So does a call that would show the model exactly the image it
    already has (a rotation by a multiple of 360 degrees, a zoom box covering the whole latest
    image): it perceived nothing, so it is not a successful call and earns no tool bonus
    (`rewards.score` pays only for successful calls; a reward for the same view was farmed).
    """
    if call.name not in TOOLS or call.name not in tools_cfg.enabled:
        return _failed(f"unknown tool {show(call.name)}; the tools are: {', '.join(tools_cfg.enabled)}")
    if not isinstance(call.arguments, dict):
        return _failed("the tool arguments must be a JSON object")
    if not views:
        return _failed("there is no image to use the tool on")
    try:
        outcome = TOOLS[call.name].run(call.arguments, views[-1], tools_cfg, model_cfg)
    except (ToolError, ImageError) as err:
        return _failed(str(err))
    if outcome.view is not None and np.array_equal(outcome.view.pixels, views[-1].pixels):
        return _failed(f"{call.name} gave back the very image you already have: a rotation by a "
                       "multiple of 360 degrees, or a box covering the whole latest image, shows "
                       "nothing new; choose a smaller region or another angle, or answer")
    return outcome
