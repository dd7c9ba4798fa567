"""Property: whatever the model writes, parsing and running a tool call never raises.

Every failure must come back as something the model can read (a ToolCallError or a
ToolOutcome.error); every success as a new image of the processor's size rule; and whatever the
parser returns can be pickled (how a call reaches a Ray task and is stored in its trajectory).
"""

import itertools
import json
import pickle
import typing

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ModelConfig, ToolName, ToolsConfig
from core.images import encode_png
from tools import (
    ImageView,
    ToolCall,
    ToolCallError,
    ToolOutcome,
    execute_tool,
    initial_view,
    parse_tool_call,
)

MODEL = ModelConfig()
TOOL_NAMES = list(typing.get_args(ToolName))
TOOLS = ToolsConfig(enabled=TOOL_NAMES)  # every tool, rotate too (training offers zoom alone)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _small_view():
    """A 280x196 original with a gradient, seen at the same size (already multiples of 28)."""
    y, x = np.mgrid[0:196, 0:280]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)
    return initial_view(encode_png(pixels), MODEL, max_decoded_pixels=10**6)


VIEW = _small_view()

numbers = st.one_of(
    st.integers(-50, 400),  # mostly plausible coordinates, so many calls succeed
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 1e308, -0.0, 5e-324]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_like = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
plausible_boxes = st.tuples(st.floats(-20, 300), st.floats(-20, 220), st.floats(0, 320),
                            st.floats(0, 240)).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])
boxes = st.one_of(plausible_boxes, st.lists(numbers, min_size=4, max_size=4), json_like)
angles = st.one_of(st.integers(-720, 720), st.floats(-1e4, 1e4), numbers, json_like)
zoom_arguments = st.one_of(
    st.fixed_dictionaries({"bbox_2d": boxes}, optional={"label": st.one_of(st.text(), json_like)}),
    st.fixed_dictionaries({"bbox": boxes}))
rotate_arguments = st.fixed_dictionaries({"angle": angles})
other_arguments = st.dictionaries(st.sampled_from(["bbox_2d", "bbox", "angle", "label", "x"]),
                                  json_like, max_size=4)
arguments = st.one_of(zoom_arguments, rotate_arguments, other_arguments)
# Mostly a real tool with its own arguments, so that many calls succeed and are checked too.
calls = st.one_of(
    st.tuples(st.just("image_zoom_in_tool"), zoom_arguments),
    st.tuples(st.just("image_rotate_tool"), rotate_arguments),
    st.tuples(st.one_of(st.sampled_from(TOOL_NAMES), st.text(max_size=30)),
              st.one_of(arguments, json_like)),
)


def check_outcome(outcome: ToolOutcome, given: ImageView) -> None:
    assert isinstance(outcome, ToolOutcome)
    if outcome.error:
        assert isinstance(outcome.error, str) and outcome.view is None
        return
    pixels = outcome.view.pixels
    assert not np.array_equal(pixels, given.pixels)  # a success always shows something new
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert pixels.shape[0] % 28 == 0 and pixels.shape[1] % 28 == 0
    assert MODEL.min_pixels <= pixels.shape[0] * pixels.shape[1] <= MODEL.max_pixels
    if outcome.box_original is not None:  # a zoom: a box inside the original, at least 28 px
        x1, y1, x2, y2 = outcome.box_original
        assert 0 <= x1 < x2 <= 280 and 0 <= y1 < y2 <= 196
        assert min(x2 - x1, y2 - y1) >= TOOLS.min_box_side - 1e-6


@SETTINGS
@given(st.text(max_size=300))
def test_parser_never_raises_on_any_text(text):
    result = parse_tool_call(text)
    assert result is None or isinstance(result, ToolCall | ToolCallError)
    if isinstance(result, ToolCallError):
        assert result.message


@SETTINGS
@given(st.text(max_size=80), st.text(max_size=200), st.booleans())
def test_parser_never_raises_on_text_inside_the_tags(before, body, closed):
    text = f"{before}<tool_call>{body}" + ("</tool_call>" if closed else "")
    result = parse_tool_call(text)
    assert isinstance(result, ToolCall | ToolCallError)


def _dumps(value) -> str:
    """JSON text of a value, as a model might write it (Python's NaN/Infinity included)."""
    return json.dumps(value, allow_nan=True, default=str)


@SETTINGS
@given(calls, st.sampled_from(["", "```json\n", "\n  "]), st.text(max_size=20), st.booleans())
def test_any_json_call_parses_and_runs_to_an_image_or_an_error(call, prefix, trailing, closed):
    name, args = call
    call_json = _dumps({"name": name, "arguments": args})
    text = f"<think>x</think><tool_call>{prefix}{call_json}{trailing}" + (
        "</tool_call>" if closed else "")
    parsed = parse_tool_call(text)
    assert isinstance(parsed, ToolCall | ToolCallError)
    if isinstance(parsed, ToolCall):
        check_outcome(execute_tool(parsed, [VIEW], TOOLS, MODEL), VIEW)


@SETTINGS
@given(calls)
def test_executor_never_raises_on_any_call(call):
    name, args = call
    check_outcome(execute_tool(ToolCall(name, args), [VIEW], TOOLS, MODEL), VIEW)


@SETTINGS
@given(st.lists(calls, min_size=1, max_size=4))
def test_chains_of_calls_never_raise(calls):
    """Crops of crops and rotations of crops: each call works on the latest successful view."""
    views = [VIEW]
    for name, args in calls:
        outcome = execute_tool(ToolCall(name, args), views, TOOLS, MODEL)
        check_outcome(outcome, views[-1])
        if outcome.view is not None:
            views.append(outcome.view)


def _nested_json(depth: int, kinds: list[str], leaf: str) -> str:
    """`leaf` inside `depth` levels of lists and objects, cycling through `kinds`."""
    opening = list(itertools.islice(itertools.cycle(kinds), depth))
    closing = ["]" if kind == "[" else "}" for kind in reversed(opening)]
    return "".join(opening) + leaf + "".join(closing)


@SETTINGS
@given(st.integers(0, 1100), st.lists(st.sampled_from(["[", '{"k": ']), min_size=1, max_size=4),
       json_like, st.integers(0, 6000), st.booleans())
def test_whatever_the_parser_returns_pickles(depth, kinds, leaf, label_chars, as_string):
    """Nesting from 490 to 990 levels parsed but could not be pickled: the group failed."""
    arguments = ('{"bbox_2d": ' + _nested_json(depth, kinds, _dumps(leaf))
                 + ', "label": "' + "x" * label_chars + '"}')
    if as_string:
        arguments = json.dumps(arguments)
    parsed = parse_tool_call(f'<tool_call>{{"name": "image_zoom_in_tool", "arguments": {arguments}}}')
    assert isinstance(parsed, ToolCall | ToolCallError)
    assert type(pickle.loads(pickle.dumps(parsed))) is type(parsed)


def test_values_python_cannot_print_become_errors():
    """repr() of a 5000-digit int raises ValueError and of a 5000-deep list RecursionError:
    neither may escape the executor (a ToolCall need not come from the JSON parser)."""
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for args in [{"bbox_2d": [0, 0, 10**5000, 40]}, {"bbox_2d": deep}, {"angle": 10**5000},
                 {"bbox_2d": [0, 0, 50, 50], "label": deep}, {"angle": deep}]:
        for name in TOOL_NAMES:
            outcome = execute_tool(ToolCall(name, args), [VIEW], TOOLS, MODEL)
            assert isinstance(outcome, ToolOutcome)
    assert "too large to show" in execute_tool(
        ToolCall("image_zoom_in_tool", {"bbox_2d": [0, 0, 10**5000, 40]}), [VIEW], TOOLS,
        MODEL).error
    long_name = execute_tool(ToolCall("x" * 10_000, {}), [VIEW], TOOLS, MODEL).error
    assert long_name.startswith("unknown tool 'xxx") and len(long_name) < 200
