"""Per-step training-dynamics figures on hand-built groups."""

import numpy as np
import pytest

from core.metrics import METRICS_BY_NAME
from core.types import Group, Sample, ToolCallRecord, Trajectory
from tests.helpers.records import reward_parts
from zoomrl.dynamics import step_figures


def traj(version, reward, parts, calls, end, sampled):
    mask = np.array([0] * 4 + [1] * sampled, dtype=np.int8)
    return Trajectory(sample_id="s", group_id="g", input_ids=np.zeros(len(mask), dtype=np.int64),
                      loss_mask=mask, behavior_logprobs=np.zeros(len(mask), dtype=np.float32), images=[],
                      policy_version=version, end_reason=end, tool_calls=calls, reward=reward,
                      reward_parts=parts)


def test_step_figures_average_over_trajectories():
    zoom = ToolCallRecord("image_zoom_in_tool", {}, box_original=[0, 0, 10, 10])
    failed = ToolCallRecord("image_zoom_in_tool", {}, error="too small")
    sample = Sample("s", "synth_vstar", [], [], "q", "A")
    group = Group("g", sample, [
        traj(2, 2.0, reward_parts(acc=1.0, tool=1.0, iou_max=0.5), [zoom, failed], "answer", 10),
        traj(2, -0.2, reward_parts(format=-1.0), [], "max_tokens_per_turn", 20),
    ])
    figures = step_figures([group], learner_version=3)
    assert set(figures) <= set(METRICS_BY_NAME)
    assert figures["accuracy"] == 0.5 and figures["reward_mean"] == pytest.approx(0.9)
    assert figures["reward_acc"] == pytest.approx(0.4) and figures["reward_format"] == pytest.approx(-0.1)
    assert figures["reward_tool"] == pytest.approx(0.6)
    assert figures["tool_calls_per_trajectory"] == 1.0 and figures["tool_errors_per_trajectory"] == 0.5
    assert figures["zoom_share"] == 0.5 and figures["response_tokens"] == 15
    assert figures["grounding_iou"] == 0.5  # only trajectories that zoomed
    assert figures["end_answer_share"] == 0.5 and figures["end_truncated_share"] == 0.5
    assert figures["policy_staleness"] == 1
