"""The tool executor as a stateless Ray task."""

from __future__ import annotations

import ray

from core.config import ModelConfig, ToolsConfig
from tools.execute import execute_tool
from tools.parse import ToolCall
from tools.tool import ToolOutcome
from tools.view import ImageView


@ray.remote
def execute_tool_task(call: ToolCall, views: list[ImageView], tools_cfg: ToolsConfig,
                      model_cfg: ModelConfig) -> ToolOutcome:
    """`execute_tool` in a Ray worker: pure, so safe to retry.

    Give views whose `source` is an ObjectRef (`ray.put(image_bytes)`, once per trajectory) so the
    original is not copied into every call, and pass `views[-1:]`: only the latest view is read.
    The returned view carries the same `source` (bytes or ObjectRef) as the views given.
    """
    return execute_tool(call, views, tools_cfg, model_cfg)
