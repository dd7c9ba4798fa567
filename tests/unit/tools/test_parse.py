"""parse_tool_call: what models write around a call, and every way it can be unreadable."""

import json
import pickle
import typing

import pytest

from core.config import ConfigError, ToolName, load_config, preset_names
from tools import TOOLS, ToolCall, ToolCallError, parse_tool_call, render_tools_prompt
from tools.parse import MAX_ARGUMENT_DEPTH, MAX_CALL_CHARS

CALL = '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 30, 40], "label": "cat"}}'
EXPECTED = ToolCall("image_zoom_in_tool", {"bbox_2d": [1, 2, 30, 40], "label": "cat"})


@pytest.mark.parametrize("text", [
    f"<think>look closer</think>\n<tool_call>\n{CALL}\n</tool_call>",
    f"<tool_call>{CALL}</tool_call>",
    f"<tool_call>  \n\t{CALL}  \n</tool_call>",
    f"<tool_call>\n```json\n{CALL}\n```\n</tool_call>",
    f"<tool_call>\n{CALL}\nI will now wait for the crop.</tool_call>",
    f"<tool_call>\n{CALL}\n",  # the engine stopped at </tool_call> and left it out
    f"<tool_call>{CALL}</tool_call> trailing <answer>x</answer>",
])
def test_reads_a_call_whatever_surrounds_it(text):
    assert parse_tool_call(text) == EXPECTED


def test_no_call_at_all_is_none():
    assert parse_tool_call("<think>easy</think><answer>A</answer>") is None
    assert parse_tool_call("") is None


def test_only_the_first_call_of_a_turn_is_read():
    second = CALL.replace("[1, 2, 30, 40]", "[5, 5, 50, 50]")
    text = f"<tool_call>{CALL}</tool_call><tool_call>{second}</tool_call>"
    assert parse_tool_call(text) == EXPECTED


def test_arguments_given_as_a_json_string_are_read():
    text = '<tool_call>{"name": "image_rotate_tool", "arguments": "{\\"angle\\": 90}"}</tool_call>'
    assert parse_tool_call(text) == ToolCall("image_rotate_tool", {"angle": 90})


@pytest.mark.parametrize("body, fragment", [
    ("", "no JSON object"),
    ("zoom please", "no JSON object"),
    ('{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2,}}', "not valid JSON"),
    ("{'name': 'image_zoom_in_tool', 'arguments': {}}", "not valid JSON"),
    ('{"arguments": {}}', "no 'name'"),
    ('{"name": 7, "arguments": {}}', "no 'name'"),
    ('{"name": "  ", "arguments": {}}', "no 'name'"),
    ('{"name": "image_zoom_in_tool"}', "no 'arguments'"),
    ('{"name": "image_zoom_in_tool", "arguments": [1, 2, 3, 4]}', "must be a JSON object"),
    ('{"name": "image_zoom_in_tool", "arguments": "bbox [1, 2]"}', "not a JSON object"),
    ('{"name": "image_zoom_in_tool", "arguments": "[1]"}', "must be a JSON object"),
    ('{"name": "x", "arguments": ' + "[" * 100_000 + "]" * 100_000 + "}", "cannot be read"),
    ('{"name": "x", "arguments": {"n": ' + "9" * 5000 + "}}", "cannot be read"),  # int too long
])
def test_unreadable_calls_are_errors_for_the_model(body, fragment):
    result = parse_tool_call(f"<tool_call>{body}</tool_call>")
    assert isinstance(result, ToolCallError)
    assert fragment in result.message


def nested(depth: int, kind: str = "list") -> str:
    """JSON of a value `depth` levels of lists (or objects) deep around the number 1."""
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("arguments, depth", [
    ('{"bbox_2d": ' + nested(600) + "}", 601),  # the arguments object is level 1
    ('{"bbox_2d": ' + nested(400, "object") + "}", 401),
    (json.dumps('{"bbox_2d": ' + nested(600) + "}"), 601),  # arguments given as a JSON string
    ('{"bbox_2d": ' + nested(MAX_ARGUMENT_DEPTH) + "}", MAX_ARGUMENT_DEPTH + 1),
])
def test_arguments_nested_deeper_than_the_bound_are_an_error(arguments, depth):
    """JSON reads nesting to ~990 levels, pickle only to ~490: a call in between failed its whole
    group (PicklingError on its way to a Ray task). Now it is an error naming the bound."""
    result = parse_tool_call(
        f'<tool_call>{{"name": "image_zoom_in_tool", "arguments": {arguments}}}</tool_call>')
    assert isinstance(result, ToolCallError)
    assert f"nested {depth} levels deep; at most {MAX_ARGUMENT_DEPTH} are allowed" in result.message
    assert pickle.loads(pickle.dumps(result)) == result


def test_arguments_at_the_depth_bound_are_read():
    inside = nested(MAX_ARGUMENT_DEPTH - 1)  # + the arguments object = the bound
    result = parse_tool_call('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": '
                             f"{inside}}}}}</tool_call>")
    assert isinstance(result, ToolCall)


@pytest.mark.parametrize("arguments", [
    {"bbox_2d": [1, 2, 30, 40], "label": "x" * 1_000_000},
    {"bbox_2d": list(range(100_000))},
    {"bbox_2d": [1, 2, 30, 40], "label": "x" * (MAX_CALL_CHARS - 60)},  # just over, in all
])
def test_a_huge_call_is_an_error_naming_the_limit(arguments):
    call = json.dumps({"name": "image_zoom_in_tool", "arguments": arguments})
    for text in [call, json.dumps({"name": "image_zoom_in_tool", "arguments": json.dumps(arguments)})]:
        result = parse_tool_call(f"<tool_call>{text}</tool_call>")
        assert isinstance(result, ToolCallError)
        assert f"is {len(text)} characters long; at most {MAX_CALL_CHARS}" in result.message


def test_a_closing_tag_without_an_opening_one_is_an_error():
    result = parse_tool_call(f"{CALL}</tool_call>")
    assert isinstance(result, ToolCallError) and "without an opening" in result.message


def test_model_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    result = parse_tool_call(f"<tool_call>{payload}</tool_call>")
    assert isinstance(result, ToolCallError)
    assert not marker.exists()


def test_tools_prompt_is_qwen_style_one_declaration_per_line():
    import json

    block = render_tools_prompt(["image_zoom_in_tool", "image_rotate_tool"])
    lines = block.split("\n")
    assert lines[0] == "<tools>" and lines[-1] == "</tools>"
    declarations = [json.loads(line) for line in lines[1:-1]]
    assert [d["function"]["name"] for d in declarations] == ["image_zoom_in_tool",
                                                             "image_rotate_tool"]
    zoom = declarations[0]["function"]["parameters"]
    assert zoom["required"] == ["bbox_2d"] and set(zoom["properties"]) == {"bbox_2d", "label"}
    rotate = declarations[1]["function"]
    assert "counter-clockwise" in rotate["parameters"]["properties"]["angle"]["description"]
    assert render_tools_prompt(["image_rotate_tool"]).count("\n") == 2


def test_tools_prompt_refuses_unknown_names():
    with pytest.raises(ValueError, match="image_zoom_in_tool"):
        render_tools_prompt(["image_crop_tool"])


def test_registry_holds_both_tools_by_name():
    assert set(TOOLS) == {"image_zoom_in_tool", "image_rotate_tool"}
    assert all(name == tool.name for name, tool in TOOLS.items())


def test_tool_names_in_the_config_are_the_registrys():
    assert typing.get_args(ToolName) == tuple(TOOLS)
    for key in ["tools.enabled", "reward.bonus_tools"]:
        assert load_config(None, [f"{key}=[image_rotate_tool]"])
        with pytest.raises(ConfigError, match=f"'{key}\\[1\\]': Invalid value 'image_crop_tool', expected "
                                              "one of \\['image_zoom_in_tool', 'image_rotate_tool'\\]"):
            load_config(None, [f"{key}=[image_zoom_in_tool,image_crop_tool]"])


@pytest.mark.parametrize("preset", preset_names())
def test_presets_train_with_zoom_in_alone_and_only_zooms_earn_the_bonus(preset):
    """DeepEyes trains with the crop tool; rotate is its zero-shot tool at inference."""
    cfg = load_config(preset)
    assert list(cfg.tools.enabled) == ["image_zoom_in_tool"]
    assert list(cfg.reward.bonus_tools) == ["image_zoom_in_tool"]
