"""Image tools the policy calls while it thinks: parsing, the registry, zoom-in and rotate.

Pure functions of their inputs (no state), callable in-process or as the Ray task
`execute_tool_task`. See `tools.view` for how boxes map from what the model saw to the original.
"""

from tools.execute import execute_tool
from tools.parse import ToolCall, ToolCallError, parse_tool_call
from tools.registry import TOOLS, render_tools_prompt
from tools.task import execute_tool_task
from tools.tool import Tool, ToolError, ToolOutcome
from tools.view import ImageView, initial_view

__all__ = [
    "TOOLS", "ImageView", "Tool", "ToolCall", "ToolCallError", "ToolError", "ToolOutcome",
    "execute_tool", "execute_tool_task", "initial_view", "parse_tool_call", "render_tools_prompt",
]
