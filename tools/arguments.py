"""Checks of argument values shared by the tools; each failure is a ToolError for the model."""

from __future__ import annotations

import math
import reprlib
from typing import Any

from tools.tool import ToolError


def finite_number(value: Any, what: str) -> float:
    """A JSON number that is finite (booleans are not numbers here, though Python says so)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(f"{what} must be a number, got {show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise ToolError(f"{what} must be a finite number, got {show(value)}")
    return number


def optional_string(arguments: dict[str, Any], key: str) -> None:
    """An optional argument that must be a string when present."""
    if key in arguments and not isinstance(arguments[key], str):
        raise ToolError(f"'{key}' must be a string, got {show(arguments[key])}")


# Bounded depth and length: a plain repr() of a 5000-deep list raises RecursionError, and of a
# 5000-digit integer ValueError, either of which would escape the executor instead of an error.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 40, 40, 6, 4


def show(value: Any) -> str:
    """A short rendering of what the model wrote, for error messages; never raises."""
    try:
        text = _SHORT.repr(value)
    except (ValueError, RecursionError):  # an integer past Python's str-conversion digit limit
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."
