"""The tools the policy may call. Adding a tool: one module defining a `Tool`, one line here."""

from __future__ import annotations

import json

from tools.rotate import ROTATE_TOOL
from tools.tool import Tool
from tools.zoom import ZOOM_IN_TOOL

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (ZOOM_IN_TOOL, ROTATE_TOOL)}


def render_tools_prompt(names: list[str]) -> str:
    """The `<tools>` block of Qwen's system prompt: one JSON function declaration per line."""
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tools {unknown}; registered: {', '.join(TOOLS)}")
    lines = [json.dumps(TOOLS[name].schema(), ensure_ascii=False) for name in names]
    return "<tools>\n" + "\n".join(lines) + "\n</tools>"
