"""Find the tool call in an assistant turn: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Tolerant of what models write around the JSON: whitespace, a ```json code fence, text after the
object, and a missing `</tool_call>` (the engine stops AT that string and may leave it out). Only
the first call of a turn is read: the rollout loop stops a turn at the first `</tool_call>`
(peers that did not executed the last of several calls). The text is only ever parsed as JSON,
never evaluated. `arguments` may also be a JSON string holding the object (OpenAI style).

A call is bounded: at most MAX_CALL_CHARS characters of JSON and arguments nested at most
MAX_ARGUMENT_DEPTH levels; beyond either it is a ToolCallError naming the limit. Python's JSON
parser accepts nesting up to about 990 levels but pickle (how a call reaches a Ray task and is
stored in its trajectory) fails from about 490, so without the bound one such call failed its
whole group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"
MAX_CALL_CHARS = 4096
"""Longest call object, in characters of JSON: a zoom call is under 100, a label a sentence."""
MAX_ARGUMENT_DEPTH = 32
"""Deepest nesting of lists and objects in the arguments (a zoom's box is at depth 2)."""
_EXAMPLE = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}'


@dataclass(frozen=True)
class ToolCall:
    """A parsed call; its arguments are not yet checked (the tool does that)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCallError:
    """The turn tried to call a tool but the call cannot be read; the model sees the message."""

    message: str


def _nesting_depth(value: Any) -> int:
    """Levels of lists and objects in `value` (a scalar is 0; {"bbox_2d": [1, 2, 3, 4]} is 2).

    Iterative: the value may be nested deeper than Python's recursion limit.
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _decode_arguments(value: Any) -> dict[str, Any] | ToolCallError:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return ToolCallError("'arguments' is a string that is not a JSON object")
    if not isinstance(value, dict):
        return ToolCallError(f"'arguments' must be a JSON object, e.g. {_EXAMPLE}")
    depth = _nesting_depth(value)
    if depth > MAX_ARGUMENT_DEPTH:
        return ToolCallError(f"the tool call's arguments are nested {depth} levels deep; at most "
                             f"{MAX_ARGUMENT_DEPTH} are allowed, e.g. {_EXAMPLE}")
    return value


def _parse_body(body: str) -> ToolCall | ToolCallError:
    start = body.find("{")
    if start < 0:
        return ToolCallError(f"the tool call holds no JSON object; write it as {_EXAMPLE}")
    try:
        value, end = json.JSONDecoder().raw_decode(body, start)  # text after the object is ignored
    except json.JSONDecodeError as err:
        return ToolCallError(f"the tool call is not valid JSON ({err.msg} at character "
                             f"{err.pos - start}); write it as {_EXAMPLE}")
    except (ValueError, RecursionError):  # e.g. a 5000-digit integer, nesting too deep
        return ToolCallError(f"the tool call cannot be read as JSON; write it as {_EXAMPLE}")
    if not isinstance(value, dict):
        return ToolCallError(f"the tool call must be a JSON object; write it as {_EXAMPLE}")
    if end - start > MAX_CALL_CHARS:
        return ToolCallError(f"the tool call is {end - start} characters long; at most "
                             f"{MAX_CALL_CHARS} are allowed, e.g. {_EXAMPLE}")
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return ToolCallError(f"the tool call has no 'name' string; write it as {_EXAMPLE}")
    if "arguments" not in value:
        return ToolCallError(f"the tool call has no 'arguments'; write it as {_EXAMPLE}")
    arguments = _decode_arguments(value["arguments"])
    if isinstance(arguments, ToolCallError):
        return arguments
    return ToolCall(name=name.strip(), arguments=arguments)


def parse_tool_call(text: str) -> ToolCall | ToolCallError | None:
    """The first tool call in `text`; None when the text holds no call at all. Never raises."""
    start = text.find(OPEN_TAG)
    if start < 0:
        if CLOSE_TAG in text:
            return ToolCallError(f"found {CLOSE_TAG} without an opening {OPEN_TAG}")
        return None
    body = text[start + len(OPEN_TAG):]
    end = body.find(CLOSE_TAG)
    return _parse_body(body if end < 0 else body[:end])
