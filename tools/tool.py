"""What a tool is: a name, the JSON schema the model reads, and a pure function of one view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.config import ModelConfig, ToolsConfig
from tools.view import ImageView


class ToolError(ValueError):
    """The model asked for something impossible; the message is shown to it after 'Error: '."""


@dataclass(frozen=True)
class ToolOutcome:
    """The result of one call: a new view, or an error the model will read."""

    view: ImageView | None
    """The image the tool produced (None on error)."""
    error: str
    """'' on success, else why the call failed, written for the model."""
    box_original: list[float] | None
    """A zoom box in original-image pixels [x1, y1, x2, y2] (for grounding IoU); else None."""


ToolFunction = Callable[[dict[str, Any], ImageView, ToolsConfig, ModelConfig], ToolOutcome]


@dataclass(frozen=True)
class Tool:
    """One tool; `run` works on the latest view and raises ToolError for bad arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""
    run: ToolFunction

    def schema(self) -> dict[str, Any]:
        """The function declaration as Qwen's chat template renders it inside <tools>."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}
