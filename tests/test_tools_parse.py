"""parse_tool_call: what models write around a call, and every way it can be unreadable."""

import pytest

from tools import TOOLS, ToolCall, ToolCallError, parse_tool_call, render_tools_prompt

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
