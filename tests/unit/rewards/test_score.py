"""The reward of whole trajectories: format on every turn, weights, tool gating and which calls
earn the bonus, IoU, groups."""

import dataclasses
import json

import numpy as np
import pytest

from core.config import ModelConfig, RewardConfig, RewardWeights, ToolsConfig
from core.images import encode_png
from core.types import Group, Sample, ToolCallRecord, Trajectory
from rewards import score_group, score_trajectory
from rewards.format import turn_well_formed, well_formed
from rewards.iou import box_iou, zoom_ious
from rewards.turns import assistant_turns
from tests.helpers.records import reward_parts
from tools import execute_tool, initial_view, parse_tool_call

CHOICES = ["red", "green", "blue", "yellow"]
GT_BOX = [100.0, 100.0, 200.0, 200.0]
IMAGE = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
INSTRUCTION = ("Think first, call image_zoom_in_tool if needed, then answer. Format strictly as: "
               "<think>...</think> <tool_call>...</tool_call> (if tools needed) <answer>...</answer>")
# What the rollout loop puts between two assistant turns after a tool call.
TOOL_RESULT = (f"<|im_end|>\n<|im_start|>user\n<tool_response>{IMAGE}{INSTRUCTION}</tool_response>"
               "<|im_end|>\n<|im_start|>assistant\n")
CALL = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n</tool_call>'
ZOOM_OK = ToolCallRecord("image_zoom_in_tool", {"bbox_2d": [1, 2, 3, 4]}, "", [100, 100, 200, 200], 1)
ZOOM_FAILED = ToolCallRecord("image_zoom_in_tool", {"bbox_2d": [1, 1, 1, 1]}, "the box has no area")
ROTATE_OK = ToolCallRecord("image_rotate_tool", {"angle": 90}, "", None, 1)


def sample(data_source: str = "vstar", answer: str = "B") -> Sample:
    return Sample(id="vstar:0", data_source=data_source, messages=[], images=[],
                  question="What colour is the umbrella?", answer=answer, choices=CHOICES,
                  gt_boxes=[GT_BOX, [0.0, 0.0, 10.0, 10.0]])


def response(*turns: str) -> str:
    """Assistant turns joined as the chat template renders them, tool results between."""
    return TOOL_RESULT.join(turns) + "<|im_end|>"


def trajectory(text: str, calls=()) -> Trajectory:
    n = 6
    return Trajectory(sample_id="vstar:0", group_id="g0", input_ids=np.arange(n, dtype=np.int64),
                      loss_mask=np.ones(n, dtype=np.int8),
                      behavior_logprobs=np.zeros(n, dtype=np.float32), images=[],
                      policy_version=0, end_reason="answer", response_text=text,
                      tool_calls=list(calls))


def score(text: str, calls=(), data_source="vstar", cfg=None):
    return score_trajectory(trajectory(text, calls), sample(data_source), cfg or RewardConfig())


RIGHT = "<think>It is green.</think>\n<answer>B</answer>"
WRONG = "<think>It is red.</think>\n<answer>A</answer>"
ZOOMED = f"<think>Too small, zoom.</think>\n{CALL}"


# --- format, on every turn -------------------------------------------------------------------

def test_well_formed_turns():
    assert turn_well_formed(RIGHT) and turn_well_formed(ZOOMED) and turn_well_formed("")
    # Answer tags inside the thinking are not counted: only those after the last </think>.
    assert turn_well_formed("<think>maybe <answer>A</think><answer>B</answer>")


@pytest.mark.parametrize("turn", [
    "<think>one<think>two</think><answer>B</answer>",
    "<think>never closed <answer>B</answer>",
    "</think><think>x</think><answer>B</answer></think>",
    "<think>x</think><answer>B",
    "<think>x</think>B</answer>",
    "<think>x</think><answer>B</answer><answer>",
    "<think>x</think><|vision_start|><answer>B</answer>",
])
def test_malformed_turns(turn):
    assert not turn_well_formed(turn)


def test_format_is_checked_on_every_turn_not_only_the_last():
    text = response("<think>zoom<think>\n" + CALL, RIGHT)  # first turn broken, last fine
    assert not well_formed(assistant_turns(text), text)
    parts = score(text, [ZOOM_OK])
    assert parts.format == -1.0 and parts.acc == 1.0
    assert parts.total == pytest.approx(0.8 - 0.2 + 1.2)


def test_tags_in_the_instruction_the_loop_repeats_are_not_the_policys():
    text = response(ZOOMED, RIGHT)
    assert well_formed(assistant_turns(text), text)
    # Even an instruction with unbalanced tags only lives in user turns.
    odd = text.replace(INSTRUCTION, "Reply as <think> then <answer>")
    assert well_formed(assistant_turns(odd), odd)


def test_images_in_the_response_must_be_complete():
    text = response(ZOOMED, RIGHT)
    broken = text.replace("<|vision_end|>", "", 1)
    assert not well_formed(assistant_turns(broken), broken)
    assert score(broken, [ZOOM_OK]).format == -1.0


# --- accuracy and the anti-hacking answer length ---------------------------------------------

def test_no_answer_scores_zero_accuracy_without_a_format_penalty():
    parts = score("<think>I give up.</think>")
    assert (parts.acc, parts.format, parts.total) == (0.0, 0.0, 0.0)


def test_the_answer_is_read_from_the_last_turn_that_gives_one():
    parts = score(response("<think>guess</think><answer>A</answer>" + CALL, RIGHT), [ZOOM_OK])
    assert parts.acc == 1.0


@pytest.mark.parametrize("length, acc, fmt", [(999, 1.0, 0.0), (1000, 0.0, -1.0), (5000, 0.0, -1.0)])
def test_answers_of_max_answer_chars_or_more_lose_accuracy_and_format(length, acc, fmt):
    answer = "B" + " " * (length - 2) + "."  # still option B to the rules, whatever its length
    parts = score(f"<think>x</think><answer>{answer}</answer>")
    assert (parts.acc, parts.format) == (acc, fmt)
    assert parts.total == pytest.approx(0.8 * acc + 0.2 * fmt)


def test_max_answer_chars_is_configurable():
    cfg = RewardConfig(max_answer_chars=5)
    assert score("<think>x</think><answer>B</answer>", cfg=cfg).acc == 1.0
    assert score("<think>x</think><answer>B.  green</answer>", cfg=cfg).format == -1.0


# --- weights per data source and tool gating -------------------------------------------------

@pytest.mark.parametrize("text, calls, total", [
    (response(ZOOMED, RIGHT), [ZOOM_OK], 0.8 + 1.2),  # right with a crop: 2.0
    (RIGHT, [], 0.8),  # right without tools
    (response(ZOOMED, WRONG), [ZOOM_OK], 0.0),  # wrong: no tool bonus (conditional)
    (response(ZOOMED, RIGHT), [ZOOM_FAILED], 0.8),  # a failed call earns no bonus
    (response(ZOOMED, ZOOMED, RIGHT), [ZOOM_FAILED, ROTATE_OK], 0.8),  # rotate earns no bonus
    (response(ZOOMED, ZOOMED, RIGHT), [ROTATE_OK, ZOOM_OK], 2.0),  # a crop does
    ("<think>x<answer>B</answer>", [], 0.8 - 0.2),  # unclosed think
])
def test_visual_search_weights_are_the_released_ones(text, calls, total):
    assert score(text, calls).total == pytest.approx(total)


def test_unlisted_sources_use_the_default_weights():
    assert score(response(ZOOMED, RIGHT), [ZOOM_OK], data_source="chart").total == pytest.approx(2.0)


def test_math_weights_have_no_tool_bonus():
    """thinklite_eureka: 1.2 acc + 0.4 format, tool weight 0."""
    right = score(response(ZOOMED, RIGHT), [ZOOM_OK], data_source="thinklite_eureka")
    assert right.total == pytest.approx(1.2) and right.tool == 1.0  # earned, weighted 0
    malformed = score("<think><answer>A</answer>", data_source="thinklite_eureka")
    assert malformed.total == pytest.approx(-0.4)


def test_weights_come_from_the_config():
    cfg = RewardConfig(weights={"default": RewardWeights(), "vstar": RewardWeights(1.0, 0.5, 2.0)})
    assert score(response(ZOOMED, RIGHT), [ZOOM_OK], cfg=cfg).total == pytest.approx(3.0)
    assert score("<think>x<answer>B</answer>", cfg=cfg).total == pytest.approx(0.5)


@pytest.mark.parametrize("gating, right, wrong", [
    ("conditional", 2.0, 0.0),  # the paper's 1[R_acc > 0] * R_tool
    ("unconditional", 2.0, 1.2),
    ("none", 0.8, 0.0),
])
def test_tool_bonus_gating(gating, right, wrong):
    cfg = RewardConfig(gating=gating)
    assert score(response(ZOOMED, RIGHT), [ZOOM_OK], cfg=cfg).total == pytest.approx(right)
    assert score(response(ZOOMED, WRONG), [ZOOM_OK], cfg=cfg).total == pytest.approx(wrong)


def test_the_bonus_earning_tools_come_from_the_config():
    calls = [ROTATE_OK]
    assert score(response(ZOOMED, RIGHT), calls).tool_used == 0.0
    both = RewardConfig(bonus_tools=["image_zoom_in_tool", "image_rotate_tool"])
    assert score(response(ZOOMED, RIGHT), calls, cfg=both).total == pytest.approx(2.0)
    nothing = RewardConfig(bonus_tools=[])
    assert score(response(ZOOMED, RIGHT), [ZOOM_OK], cfg=nothing).total == pytest.approx(0.8)


# Through the real tool executor, as the rollout loop records a call (actors/imcot.py): rotate
# offered as at evaluation, scored with the default reward (bonus: zoom-in, conditional gating).
PERCEPTION_TOOLS = ToolsConfig(enabled=["image_zoom_in_tool", "image_rotate_tool"])


@pytest.fixture(scope="module")
def seen_view():
    y, x = np.mgrid[0:392, 0:560]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)
    return initial_view(encode_png(pixels), ModelConfig(), max_decoded_pixels=10**7)


def executed(view, name: str, arguments: dict) -> ToolCallRecord:
    """The record the rollout loop keeps of a call the model wrote, run by the real executor."""
    call = parse_tool_call(f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>")
    outcome = execute_tool(call, [view], PERCEPTION_TOOLS, ModelConfig())
    return ToolCallRecord(call.name, call.arguments, outcome.error, outcome.box_original,
                          None if outcome.view is None else 1)


@pytest.mark.parametrize("name, arguments, right, wrong", [
    ("image_rotate_tool", {"angle": 0}, 0.8, 0.0),  # was 2.0: the same image back, and rotate
    ("image_rotate_tool", {"angle": 360}, 0.8, 0.0),
    ("image_rotate_tool", {"angle": 90}, 0.8, 0.0),  # a real turn, but rotate earns no bonus
    ("image_zoom_in_tool", {"bbox_2d": [0, 0, 560, 392]}, 0.8, 0.0),  # was 2.0: the whole image
    ("image_zoom_in_tool", {"bbox_2d": [-50, -50, 900, 900]}, 0.8, 0.0),  # clipped to the whole
    ("image_zoom_in_tool", {"bbox_2d": [100, 100, 300, 250]}, 0.8 + 1.2, 0.0),  # a real crop
])
def test_only_a_real_crop_earns_the_tool_bonus(seen_view, name, arguments, right, wrong):
    record = executed(seen_view, name, arguments)
    assert score(response(ZOOMED, RIGHT), [record]).total == pytest.approx(right)
    assert score(response(ZOOMED, WRONG), [record]).total == pytest.approx(wrong)  # conditional


def test_unknown_gating_is_refused():
    with pytest.raises(ValueError, match="gating"):
        score(RIGHT, [ZOOM_OK], cfg=RewardConfig(gating="always"))


# --- grounding IoU: reported, never rewarded -------------------------------------------------

def test_box_iou_by_hand():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 20]) == pytest.approx(0.5)
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([5, 5, 5, 5], [5, 5, 5, 5]) == 0.0  # no area


def test_zoom_ious_take_the_best_gt_box_and_skip_failed_and_rotate_calls():
    half = ToolCallRecord("image_zoom_in_tool", {}, "", [100, 100, 200, 150], 2)  # half of GT_BOX
    corner = ToolCallRecord("image_zoom_in_tool", {}, "", [0, 0, 10, 20], 3)  # half of the small one
    calls = [ZOOM_OK, ZOOM_FAILED, ROTATE_OK, half, corner]
    assert zoom_ious(calls, [GT_BOX, [0, 0, 10, 10]]) == pytest.approx([1.0, 0.5, 0.5])
    assert zoom_ious(calls, []) == []


def test_iou_is_a_metric_not_a_reward():
    half = ToolCallRecord("image_zoom_in_tool", {}, "", [100, 100, 200, 150], 2)
    text = response(ZOOMED, ZOOMED, RIGHT)
    parts = score(text, [ZOOM_OK, half])
    assert parts.iou == pytest.approx(0.75) and parts.iou_max == pytest.approx(1.0)
    assert parts.total == pytest.approx(2.0)
    no_zoom = score(RIGHT)
    assert no_zoom.iou is None and no_zoom.iou_max is None


# --- a whole group, rules only ---------------------------------------------------------------

def test_score_group_fills_every_trajectory():
    texts_calls = [
        (response(ZOOMED, RIGHT), [ZOOM_OK]),
        (WRONG, []),
        ("<think>x</think><answer>B. blue</answer>", []),  # undecided: no judge configured
        (response(ZOOMED, "<think>x</think><answer>" + "B" * 1000 + "</answer>"), [ZOOM_FAILED]),
    ]
    group = Group("g0", sample(), [trajectory(t, c) for t, c in texts_calls])
    assert score_group(group, RewardConfig()) is group
    np.testing.assert_allclose(group.rewards, [2.0, 0.0, 0.0, -0.2])
    first = group.trajectories[0].reward_parts
    assert first == reward_parts(acc=1.0, tool=1.0, tool_used=1.0, tool_calls=1.0, iou=1.0, iou_max=1.0)
    assert first.total == first.acc_reward + first.format_reward + first.tool_reward == 2.0
    undecided = group.trajectories[2].reward_parts
    assert undecided.undecided == 1.0 and undecided.acc == 0.0 and undecided.judged == 0.0
    last = group.trajectories[3].reward_parts
    assert last.tool_errors == 1.0 and last.tool_used == 0.0 and last.iou is None
    assert last.format_reward == -0.2 and last.total == group.trajectories[3].reward


def test_scoring_does_not_touch_the_trajectory_it_reads():
    traj = trajectory(response(ZOOMED, RIGHT), [ZOOM_OK])
    before = dataclasses.replace(traj)
    score_trajectory(traj, sample(), RewardConfig())
    assert traj.reward == before.reward == 0.0 and traj.reward_parts is None
