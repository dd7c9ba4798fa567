"""Tools and rewards as stateless Ray tasks on a real local Ray cluster."""

import numpy as np
import pytest

from core.config import JudgeConfig, ModelConfig, RewardConfig, ToolsConfig
from core.images import decode_image, encode_png
from core.types import Group, Sample, ToolCallRecord, Trajectory
from rewards import JudgeError, score_group_task
from tests.helpers import drawn
from tests.helpers.drawn import squares
from tools import ToolCall, ToolCallError, execute_tool, execute_tool_task, initial_view, parse_tool_call

MODEL = ModelConfig()
TOOLS = ToolsConfig(enabled=["image_zoom_in_tool", "image_rotate_tool"])
RED = (600, 400, 660, 460)  # in original pixels of a 1024x768 image, seen at 504x364


def _original_bytes() -> bytes:
    return encode_png(squares(1024, 768, {RED: drawn.RED}))


def _zoom_call(box) -> ToolCall:
    text = ('<think>zoom</think><tool_call>{"name": "image_zoom_in_tool", "arguments": '
            f'{{"bbox_2d": {list(box)}}}}}</tool_call>')
    call = parse_tool_call(text)
    assert isinstance(call, ToolCall)
    return call


def test_execute_tool_task_reads_the_original_from_an_object_ref(ray_cluster):
    ray = ray_cluster
    ref = ray.put(_original_bytes())
    view = initial_view(ref, MODEL, max_decoded_pixels=10**8)
    sx, sy = view.scale()
    call = _zoom_call([RED[0] / sx - 10, RED[1] / sy - 10, RED[2] / sx + 10, RED[3] / sy + 10])
    outcome = ray.get(execute_tool_task.remote(call, [view], TOOLS, MODEL))
    assert outcome.error == ""
    assert outcome.view.source.hex() == ref.hex()  # the same object, not a copy of the bytes
    x1, y1, x2, y2 = outcome.box_original
    assert x1 <= RED[0] and y1 <= RED[1] and x2 >= RED[2] and y2 >= RED[3]
    assert (x2 - x1) < 120 and (y2 - y1) < 120  # 10 seen px of margin = about 20 original px
    # Pure: the task gives exactly what the in-process call gives.
    local = execute_tool(call, [view], TOOLS, MODEL)
    np.testing.assert_array_equal(outcome.view.pixels, local.view.pixels)
    # A crop of the crop, from the view the first task returned, in another task.
    crop = outcome.view
    cx, cy = crop.scale()
    inner = [(RED[0] - crop.region[0]) / cx, (RED[1] - crop.region[1]) / cy,
             (RED[2] - crop.region[0]) / cx, (RED[3] - crop.region[1]) / cy]
    second = ray.get(execute_tool_task.remote(_zoom_call(inner), [crop], TOOLS, MODEL))
    np.testing.assert_allclose(second.box_original, RED, atol=1.5)
    # A bad call is an error outcome from the task, not a task failure.
    bad = ray.get(execute_tool_task.remote(_zoom_call([0, 0, 0, 0]), [view], TOOLS, MODEL))
    assert "no area" in bad.error and bad.view is None


def test_decoded_pixels_in_the_object_store_crop_exactly_as_the_encoded_bytes(ray_cluster):
    ray = ray_cluster
    data = _original_bytes()
    pixels = np.asarray(decode_image(data, 10**8))
    encoded = initial_view(ray.put(data), MODEL, max_decoded_pixels=10**8)
    decoded = initial_view(ray.put(pixels), MODEL, max_decoded_pixels=10**8)
    np.testing.assert_array_equal(encoded.pixels, decoded.pixels)
    assert decoded.original_size == (1024, 768)
    for call in [_zoom_call([100, 80, 300, 240]), ToolCall("image_rotate_tool", {"angle": 30})]:
        from_bytes, from_pixels = ray.get([execute_tool_task.remote(call, [view], TOOLS, MODEL)
                                           for view in (encoded, decoded)])
        assert from_pixels.error == "" and from_pixels.view.source.hex() == decoded.source.hex()
        np.testing.assert_array_equal(from_bytes.view.pixels, from_pixels.view.pixels)


def test_execute_tool_task_takes_bytes_too(ray_cluster):
    ray = ray_cluster
    view = initial_view(_original_bytes(), MODEL, max_decoded_pixels=10**8)
    rotate = ToolCall("image_rotate_tool", {"angle": 90})
    outcome = ray.get(execute_tool_task.remote(rotate, [view], TOOLS, MODEL))
    assert outcome.error == "" and outcome.view.pixels.shape == (504, 364, 3)  # portrait
    assert outcome.view.source == view.source


def test_a_deeply_nested_call_travels_through_ray_as_an_error(ray_cluster):
    """JSON parses arguments nested ~990 deep, pickle fails from ~490: such a call failed its
    whole group with a PicklingError. Now it is an error the model reads, and Ray can ship it."""
    ray = ray_cluster
    text = ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": '
            + "[" * 600 + "1" + "]" * 600 + "}}</tool_call>")
    parsed = parse_tool_call(text)
    assert isinstance(parsed, ToolCallError) and "at most 32" in parsed.message
    assert ray.get(ray.put(parsed)) == parsed


def _group() -> Group:
    sample = Sample(id="synth:3", data_source="synth_vstar", messages=[], images=[],
                    question="What colour is the star?", answer="C",
                    choices=["red", "green", "blue", "yellow"], gt_boxes=[list(map(float, RED))])
    zoom = ToolCallRecord("image_zoom_in_tool", {"bbox_2d": [1, 2, 3, 4]}, "",
                          [600.0, 400.0, 660.0, 430.0], 1)
    result = ("<|im_end|>\n<|im_start|>user\n<tool_response><|vision_start|><|image_pad|>"
              "<|vision_end|></tool_response><|im_end|>\n<|im_start|>assistant\n")
    texts = [
        "<think>look</think><tool_call>{}</tool_call>" + result
        + "<think>blue</think><answer>C</answer><|im_end|>",
        "<think>guess</think><answer>A</answer><|im_end|>",
        "<think>guess</think><answer>a bluish one</answer><|im_end|>",
    ]
    calls = [[zoom], [], []]
    trajectories = [
        Trajectory(sample_id=sample.id, group_id="g3", input_ids=np.arange(8, dtype=np.int64),
                   loss_mask=np.ones(8, dtype=np.int8),
                   behavior_logprobs=np.full(8, -0.5, dtype=np.float32), images=[],
                   policy_version=4, end_reason="answer", response_text=text, tool_calls=c)
        for text, c in zip(texts, calls, strict=True)]
    return Group("g3", sample, trajectories)


def test_score_group_task_scores_a_group(ray_cluster, tiny_cfg):
    ray = ray_cluster
    scored = ray.get(score_group_task.remote(_group(), tiny_cfg.reward))
    np.testing.assert_allclose(scored.rewards, [0.8 + 1.2, 0.0, 0.0])
    parts = [t.reward_parts for t in scored.trajectories]
    assert parts[0].iou == pytest.approx(0.5) and parts[0].tool == 1.0
    assert parts[2].undecided == 1.0  # tiny-cpu has no judge: counted, scored 0
    assert scored.trajectories[0].policy_version == 4  # the rest of the record travels intact


def test_score_group_task_fails_loudly_when_the_judge_is_unreachable(ray_cluster):
    import socket

    ray = ray_cluster
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", timeout_s=0.5, max_retries=1,
                        backoff_s=0.01)
    with pytest.raises(JudgeError, match="2 attempts"):
        ray.get(score_group_task.remote(_group(), RewardConfig(judge=judge)))
